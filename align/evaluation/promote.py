"""The promotion gate: a policy goes forward only if the judge prefers it and it kept its medicine.

Two conditions, both required:
- the judged win-rate of the candidate against the previous policy: its 95% CI lower bound above
  `min_win_rate` (files without a CI fall back to the point estimate, and say so);
- PubMedQA (same items for both): non-inferior by the paired test when the file carries one (a
  round's evaluation), else accuracy dropped by no more than `max_accuracy_drop`.

Evaluation files are read as the one evaluation record (`align.evaluation.record`): a round's
`evaluation/evaluation.json` (or its folder), `clinalign winrate --out`, `clinalign eval --out`, and
the older shapes those commands wrote before the record.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from align.evaluation.record import EvaluationRecord, read_record, validate
from clinalign_base.errors import ClinalignError, InputError

PROMOTION_NAME = "promotion.json"


# The promotion gate reads the one evaluation record; `EvalSummary` is its old name (alias for one release).
EvalSummary = EvaluationRecord


def read_eval(path: str | Path) -> EvaluationRecord:
    """The evaluation in a file or evaluation folder, in any shape clinalign wrote (align.evaluation.record)."""
    return validate(read_record(path))


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


def decide(candidate: EvaluationRecord, baseline: EvaluationRecord | None, *, min_win_rate: float = 0.5,
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
            bound = candidate.pubmedqa_lower_bound
            reasons.append(f"PubMedQA {base_acc:.3f} -> {candidate.accuracy:.3f} on {n} items is not shown "
                           f"non-inferior (paired lower bound {'?' if bound is None else f'{bound:+.3f}'}, "
                           f"margin -{candidate.pubmedqa_margin})")
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


def _baseline_accuracy(candidate: EvaluationRecord, baseline: EvaluationRecord | None) -> tuple[float | None, int | None]:
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
    from clinalign_base.manifest import MANIFEST_NAME

    folder = candidate.parent
    if (folder / MANIFEST_NAME).is_file():
        folder = folder.parent
    return folder / PROMOTION_NAME


def write_promotion(out: str | Path, decision: Decision, candidate: EvaluationRecord,
                    baseline: EvaluationRecord | None) -> Path:
    from clinalign_base.manifest import build_manifest, ref, write_manifest

    inputs = [ref("candidate_eval", candidate.path)] + ([ref("baseline_eval", baseline.path)] if baseline else [])
    manifest = build_manifest("promotion", Path(candidate.path).parent.name or "promotion", inputs=inputs,
                              config={"min_win_rate": decision.min_win_rate,
                                      "max_accuracy_drop": decision.max_accuracy_drop},
                              metrics=decision.to_dict())
    return write_manifest(out, manifest)
