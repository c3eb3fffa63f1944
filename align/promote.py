"""The promotion gate: a policy goes forward only if the judge prefers it and it kept its medicine.

Two conditions, both required:
- the judged win-rate of the candidate against the previous policy: its 95% CI lower bound above
  `min_win_rate` (files without a CI fall back to the point estimate, and say so);
- PubMedQA (same items for both): non-inferior by the paired test when the file carries one (a
  round's evaluation), else accuracy dropped by no more than `max_accuracy_drop`.

Evaluation files accepted (one reader for all of them):
- `clinalign eval --out` JSON: `metrics.pubmedqa_accuracy`, `metrics.pubmedqa_items_sha256`,
  and, when `--winrate` was given, `metrics.win_rate`;
- a round's `evaluation/clinalign_manifest.json`: `metrics.win_rate`, `pubmedqa_accuracy_before/after`;
- a round's `evaluation/evaluation.json`: `{"win_rate": {...}, "pubmedqa": {"before": ..., "after": ...}}`;
- `clinalign winrate --out` JSON: `{"win_rate": float, ...}` (win-rate only).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from annotation.errors import ClinalignError, InputError

PROMOTION_NAME = "promotion.json"


@dataclass
class EvalSummary:
    path: str
    win_rate: float | None = None
    win_rate_ci95: list[float] | None = None
    n_prompts: int | None = None
    accuracy: float | None = None
    accuracy_before: float | None = None  # the base policy, when the file carries a before/after pair
    n: int | None = None
    items_sha256: str | None = None
    model: str | None = None
    pubmedqa_non_inferior: bool | None = None  # the paired non-inferiority verdict, when the file has one
    pubmedqa_lower_bound: float | None = None
    pubmedqa_margin: float | None = None


def _num(value: Any, what: str, path: Path) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{what} must be a number, got {value!r}", path=str(path))
    if not 0.0 <= float(value) <= 1.0:
        raise InputError(f"{what} must lie in [0, 1], got {value}", path=str(path))
    return float(value)


def read_eval(path: str | Path) -> EvalSummary:
    path = Path(path)
    if path.is_dir():
        for name in ("clinalign_manifest.json", "evaluation.json"):
            if (path / name).is_file():
                path = path / name
                break
    if not path.is_file():
        raise InputError("evaluation file not found", path=str(path))
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON: {exc.msg} (line {exc.lineno})", path=str(path)) from None
    if not isinstance(data, dict):
        raise InputError("expected a JSON object", path=str(path))
    s = EvalSummary(str(path))
    m = data.get("metrics") if isinstance(data.get("metrics"), dict) else {}
    wr = data.get("win_rate")
    if isinstance(wr, dict):  # evaluation.json
        m = {**m, "win_rate": wr.get("win_rate"), "win_rate_ci95": wr.get("ci95", wr.get("win_rate_ci95")),
             "n_prompts": wr.get("n_prompts")}
    elif wr is not None:  # clinalign winrate output
        m = {**m, "win_rate": wr, "win_rate_ci95": data.get("win_rate_ci95"), "n_prompts": data.get("n_prompts")}
    pq = data.get("pubmedqa") if isinstance(data.get("pubmedqa"), dict) else {}
    if "non_inferior" in pq:  # a round's paired alignment-tax result
        m = {**m, "pubmedqa_accuracy_after": pq.get("accuracy_after"), "pubmedqa_n": pq.get("n"),
             "pubmedqa_accuracy_before": pq.get("accuracy_before"), "pubmedqa_items_sha256": pq.get("items_sha256"),
             "pubmedqa_non_inferior": pq["non_inferior"], "pubmedqa_lower_bound": pq.get("lower_bound_one_sided"),
             "pubmedqa_margin": pq.get("margin")}
    elif "after" in pq:
        m = {**m, "pubmedqa_accuracy_after": pq["after"].get("accuracy"), "pubmedqa_n": pq["after"].get("n"),
             "pubmedqa_accuracy_before": pq.get("before", {}).get("accuracy"),
             "pubmedqa_items_sha256": pq["after"].get("items_sha256")}
    elif "accuracy" in pq:
        m = {**m, "pubmedqa_accuracy": pq["accuracy"], "pubmedqa_n": pq.get("n"),
             "pubmedqa_items_sha256": pq.get("items_sha256")}
    s.win_rate = _num(m.get("win_rate"), "win_rate", path)
    s.win_rate_ci95 = m.get("win_rate_ci95")
    s.n_prompts = m.get("n_prompts")
    s.accuracy = _num(m.get("pubmedqa_accuracy", m.get("pubmedqa_accuracy_after")), "PubMedQA accuracy", path)
    s.accuracy_before = _num(m.get("pubmedqa_accuracy_before"), "PubMedQA accuracy before", path)
    s.n = m.get("pubmedqa_n")
    s.items_sha256 = m.get("pubmedqa_items_sha256")
    if isinstance(m.get("pubmedqa_non_inferior"), bool):
        s.pubmedqa_non_inferior = m["pubmedqa_non_inferior"]
        s.pubmedqa_lower_bound, s.pubmedqa_margin = m.get("pubmedqa_lower_bound"), m.get("pubmedqa_margin")
    s.model = (data.get("config") or {}).get("model") if isinstance(data.get("config"), dict) else None
    if s.win_rate is None and s.accuracy is None:
        raise InputError("no win_rate and no PubMedQA accuracy found (not a clinalign evaluation file?)",
                         path=str(path))
    return s


@dataclass
class Decision:
    promoted: bool
    reasons: list[str]
    win_rate: float | None
    min_win_rate: float
    accuracy_candidate: float | None
    accuracy_baseline: float | None
    accuracy_drop: float | None
    max_accuracy_drop: float
    n_items: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(candidate: EvalSummary, baseline: EvalSummary | None, *, min_win_rate: float = 0.5,
           max_accuracy_drop: float = 0.02) -> Decision:
    """Both gates must pass; a number that is missing fails its gate (never promote on no evidence)."""
    if not 0.0 <= min_win_rate <= 1.0:
        raise InputError(f"--min-win-rate must lie in [0, 1], got {min_win_rate}")
    if not 0.0 <= max_accuracy_drop <= 1.0:
        raise InputError(f"--max-accuracy-drop must lie in [0, 1], got {max_accuracy_drop}")
    base_acc, n = _baseline_accuracy(candidate, baseline)
    reasons = []
    wr = candidate.win_rate
    if wr is None:
        reasons.append(f"no reward-model win-rate in {candidate.path} (run `clinalign winrate` and pass it to "
                       f"`clinalign eval --winrate`)")
    elif candidate.win_rate_ci95:
        lo, hi = candidate.win_rate_ci95
        if lo <= min_win_rate:
            reasons.append(f"win-rate {wr:.3f} (95% CI {lo:.3f}-{hi:.3f}): the CI lower bound is not above "
                           f"the threshold {min_win_rate:.3f}")
    elif wr < min_win_rate:
        reasons.append(f"win-rate {wr:.3f} is below the threshold {min_win_rate:.3f} (no CI in the file: "
                       f"point estimate used)")
    drop = None
    if baseline is None and candidate.pubmedqa_non_inferior is not None:
        if not candidate.pubmedqa_non_inferior:
            reasons.append(f"PubMedQA {base_acc:.3f} -> {candidate.accuracy:.3f} on {n} items is not shown "
                           f"non-inferior (paired lower bound {candidate.pubmedqa_lower_bound:+.3f}, margin "
                           f"-{candidate.pubmedqa_margin})")
        drop = None if candidate.accuracy is None or base_acc is None else base_acc - candidate.accuracy
    elif candidate.accuracy is None or base_acc is None:
        reasons.append("PubMedQA accuracy missing for the " + ("candidate" if candidate.accuracy is None
                                                                else "baseline"))
    else:
        drop = base_acc - candidate.accuracy
        if drop > max_accuracy_drop + 1e-12:
            reasons.append(f"PubMedQA accuracy fell {drop:.3f} ({base_acc:.3f} -> {candidate.accuracy:.3f}), "
                           f"more than the allowed {max_accuracy_drop:.3f}")
    return Decision(not reasons, reasons, wr, min_win_rate, candidate.accuracy, base_acc, drop,
                    max_accuracy_drop, n)


def _baseline_accuracy(candidate: EvalSummary, baseline: EvalSummary | None) -> tuple[float | None, int | None]:
    if baseline is None:
        if candidate.accuracy_before is None:
            raise InputError("no --baseline given and the candidate file has no 'before' accuracy",
                             path=candidate.path)
        return candidate.accuracy_before, candidate.n
    if baseline.accuracy is None:
        return None, candidate.n
    # Accuracies on different item sets are not comparable: refuse rather than guess.
    if candidate.n is not None and baseline.n is not None and candidate.n != baseline.n:
        raise ClinalignError(f"PubMedQA was scored on {candidate.n} items for the candidate but {baseline.n} for "
                             f"the baseline; evaluate both with the same --limit")
    if candidate.items_sha256 and baseline.items_sha256 and candidate.items_sha256 != baseline.items_sha256:
        raise ClinalignError("candidate and baseline were evaluated on different PubMedQA items")
    return baseline.accuracy, candidate.n


def default_promotion_path(candidate: Path) -> Path:
    """Beside the candidate's evaluation file, but never inside an artefact folder: a new file there
    would change the folder's hash and break its lineage (runs/<name>/evaluation → runs/<name>)."""
    from annotation.manifest import MANIFEST_NAME

    folder = candidate.parent
    if (folder / MANIFEST_NAME).is_file():
        folder = folder.parent
    return folder / PROMOTION_NAME


def write_promotion(out: str | Path, decision: Decision, candidate: EvalSummary,
                    baseline: EvalSummary | None) -> Path:
    from annotation.manifest import build_manifest, ref, write_manifest

    inputs = [ref("candidate_eval", candidate.path)] + ([ref("baseline_eval", baseline.path)] if baseline else [])
    manifest = build_manifest("promotion", Path(candidate.path).parent.name or "promotion", inputs=inputs,
                              config={"min_win_rate": decision.min_win_rate,
                                      "max_accuracy_drop": decision.max_accuracy_drop},
                              metrics=decision.to_dict())
    return write_manifest(out, manifest)
