"""The one evaluation record: what `clinalign winrate`, `clinalign eval` and a round write, and what
`clinalign promote` and the model card read.

A record has two blocks and a verdict, written as one JSON file (a round's
`runs/<round>/evaluation/evaluation.json`, `clinalign winrate --out`):

  {"schema": "clinalign.evaluation/1",
   "win_rate": {...},   # a win-rate result: judge, win_rate, ci95, p_value, n_prompts, n_comparisons,
                        # ties, ... (a round's block is winrate.json, whose keys never change)
   "pubmedqa": {...},   # the paired alignment tax (accuracy_before/after, n, non_inferior,
                        # lower_bound_one_sided, margin, mcnemar_p, ...) or one model's accuracy
                        # (accuracy, accuracy_ci95, n, items_sha256)
   "promotion": {...},  # a round's verdict (promoted, reasons_against, reasons_for, min_win_rate)
   "model": str}        # the evaluated model, when known

and the same numbers as flat `metrics` of a lineage manifest (`EvaluationRecord.metrics()`: what
`clinalign eval --out` and a round's `evaluation/clinalign_manifest.json` carry).

`read_record` reads every shape clinalign has written: this record (with or without `schema`), a
manifest's flat metrics, and the flat JSON `clinalign winrate --out` wrote before the record existed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clinalign_base.errors import InputError
from clinalign_base.mapping_files import read_json_object

SCHEMA = "clinalign.evaluation/1"
RECORD_NAME = "evaluation.json"
# Read in this order from an evaluation folder: the record (complete), then the folder's manifest.
FOLDER_FILES = (RECORD_NAME, "clinalign_manifest.json")

# flat metric key ← path inside the win-rate block (the keys a round's manifest has always carried)
_WIN_RATE_FLAT: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("win_rate", ("win_rate",)), ("win_rate_ci95", ("ci95",)), ("p_value", ("p_value",)),
    ("n_prompts", ("n_prompts",)), ("n_comparisons", ("n_comparisons",)), ("ties", ("ties",)),
    ("control_win_rate", ("control", "win_rate")), ("control_ci95", ("control", "ci95")),
    ("train_prompt_overlap", ("train_prompt_overlap",)),
    ("mean_score_policy", ("mean_score", "policy")), ("mean_score_base", ("mean_score", "base")),
    ("base_best_of_k", ("mean_score", "base_best_of_k")),
    ("eos_rate_policy", ("lengths", "policy", "eos_rate")), ("eos_rate_base", ("lengths", "base", "eos_rate")),
    ("mean_words_policy", ("lengths", "policy", "mean_words")),
    ("mean_words_base", ("lengths", "base", "mean_words")),
    ("proxy_win_rate", ("proxy", "win_rate")), ("proxy_agreement_with_judge", ("proxy", "agreement_with_judge")),
    ("mean_reward_policy", ("mean_reward_candidate",)), ("mean_reward_base", ("mean_reward_baseline",)),
)
_PAIRED_FLAT = (("pubmedqa_accuracy_before", "accuracy_before"), ("pubmedqa_accuracy_after", "accuracy_after"),
                ("pubmedqa_n", "n"), ("pubmedqa_non_inferior", "non_inferior"), ("pubmedqa_mcnemar_p", "mcnemar_p"),
                ("pubmedqa_lower_bound", "lower_bound_one_sided"), ("pubmedqa_margin", "margin"),
                ("pubmedqa_items_sha256", "items_sha256"), ("pubmedqa_gate", "gate"))
_SINGLE_FLAT = (("pubmedqa_accuracy", "accuracy"), ("pubmedqa_accuracy_ci95", "accuracy_ci95"),
                ("pubmedqa_n", "n"), ("pubmedqa_items_sha256", "items_sha256"))


@dataclass
class EvaluationRecord:
    """One evaluation of a policy; the typed fields are what the promotion gate and the card use."""

    path: str = ""  # the file it was read from ("" when built in memory)
    win_rate: float | None = None
    win_rate_ci95: list[float] | None = None
    n_prompts: int | None = None
    accuracy: float | None = None  # PubMedQA accuracy of the evaluated policy
    accuracy_before: float | None = None  # the base policy, when the file carries a paired before/after
    n: int | None = None
    items_sha256: str | None = None
    pubmedqa_non_inferior: bool | None = None  # the paired non-inferiority verdict, when there is one
    pubmedqa_lower_bound: float | None = None
    pubmedqa_margin: float | None = None
    model: str | None = None
    win_rate_block: dict[str, Any] | None = None  # the blocks as written (nothing lost on a round trip)
    pubmedqa_block: dict[str, Any] | None = None
    promotion: dict[str, Any] | None = None
    recorded_metrics: dict[str, Any] = field(default_factory=dict)  # a manifest's flat metrics, as read

    # -- building ------------------------------------------------------------------------------------
    @classmethod
    def from_blocks(cls, win_rate: dict[str, Any] | None = None, pubmedqa: dict[str, Any] | None = None,
                    promotion: dict[str, Any] | None = None, *, model: str | None = None,
                    path: str = "") -> EvaluationRecord:
        """A record from a win-rate result, a PubMedQA result (paired or one model's) and a verdict."""
        rec = cls(path=path, model=model, win_rate_block=win_rate, pubmedqa_block=pubmedqa, promotion=promotion)
        metrics = _flat_win_rate(win_rate) | _flat_pubmedqa(pubmedqa)
        return _fill(rec, metrics)

    @classmethod
    def from_metrics(cls, metrics: dict[str, Any], *, model: str | None = None,
                     path: str = "") -> EvaluationRecord:
        """A record from a manifest's flat metrics (`clinalign eval --out`, a round's evaluation manifest)."""
        return _fill(cls(path=path, model=model, recorded_metrics=dict(metrics)), metrics)

    # -- writing -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The record file's JSON: the blocks as given (or rebuilt from the typed fields)."""
        out: dict[str, Any] = {"schema": SCHEMA}
        win_rate = self.win_rate_block or _strip({"win_rate": self.win_rate, "ci95": self.win_rate_ci95,
                                                   "n_prompts": self.n_prompts})
        if win_rate.get("win_rate") is not None:
            out["win_rate"] = win_rate
        pubmedqa = self.pubmedqa_block or _pubmedqa_from_fields(self)
        if pubmedqa:
            out["pubmedqa"] = pubmedqa
        if self.promotion is not None:
            out["promotion"] = self.promotion
        if self.model is not None:
            out["model"] = self.model
        return out

    def metrics(self) -> dict[str, Any]:
        """The flat metrics a lineage manifest carries (a round's keys, plus whatever was recorded)."""
        flat = dict(self.recorded_metrics) | _flat_win_rate(self.win_rate_block) | _flat_pubmedqa(self.pubmedqa_block)
        typed = {"win_rate": self.win_rate, "win_rate_ci95": self.win_rate_ci95, "n_prompts": self.n_prompts,
                 "pubmedqa_n": self.n, "pubmedqa_items_sha256": self.items_sha256}
        flat |= {k: v for k, v in typed.items() if v is not None and k not in flat}
        if self.promotion is not None:
            flat["promoted"] = self.promotion.get("promoted")
        return flat

    def has_numbers(self) -> bool:
        return self.win_rate is not None or self.accuracy is not None


# -- reading ---------------------------------------------------------------------------------------------
def read_record(path: str | Path) -> EvaluationRecord:
    """The evaluation in a file (any shape clinalign wrote) or an evaluation folder (the record first)."""
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in FOLDER_FILES if (path / name).is_file()]
        records = [_read_file(p) for p in found]
        usable = [r for r in records if r.has_numbers()]
        if usable or records:
            return (usable or records)[0]
    return _read_file(path)


def record_from_json(data: dict[str, Any], *, path: str = "") -> EvaluationRecord:
    """A record from any JSON shape clinalign has written for an evaluation."""
    model = data.get("model") if isinstance(data.get("model"), str) else None
    config = data.get("config")
    if model is None and isinstance(config, dict):
        model = config.get("model") if isinstance(config.get("model"), str) else None
    wr = data.get("win_rate")
    pq = data.get("pubmedqa") if isinstance(data.get("pubmedqa"), dict) else None
    if isinstance(wr, dict) or pq is not None:  # the record (a round's evaluation.json, winrate --out)
        rec = EvaluationRecord.from_blocks(wr if isinstance(wr, dict) else None, pq,
                                           data.get("promotion") if isinstance(data.get("promotion"), dict)
                                           else None, model=model, path=path)
        return _with_metrics(rec, data)
    if wr is not None:  # the flat JSON `clinalign winrate --out` wrote before the record
        block = {"win_rate": wr, "ci95": data.get("win_rate_ci95", data.get("ci95")),
                 "n_prompts": data.get("n_prompts")}
        return EvaluationRecord.from_blocks(block, model=model, path=path)
    metrics = data.get("metrics") if isinstance(data.get("metrics"), dict) else {}
    return EvaluationRecord.from_metrics(metrics, model=model, path=path)


def validate(rec: EvaluationRecord) -> EvaluationRecord:
    """Refuse numbers outside [0, 1] and a file that holds neither a win-rate nor an accuracy."""
    for what, value in (("win_rate", rec.win_rate), ("PubMedQA accuracy", rec.accuracy),
                        ("PubMedQA accuracy before", rec.accuracy_before)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{what} must be a number, got {value!r}", path=rec.path)
        if not 0.0 <= float(value) <= 1.0:
            raise InputError(f"{what} must lie in [0, 1], got {value}", path=rec.path)
    if not rec.has_numbers():
        raise InputError("no win_rate and no PubMedQA accuracy found (not a clinalign evaluation file?)",
                         path=rec.path)
    return rec


def _read_file(path: Path) -> EvaluationRecord:
    return record_from_json(read_json_object(path, what="evaluation file"), path=str(path))


def _with_metrics(rec: EvaluationRecord, data: dict[str, Any]) -> EvaluationRecord:
    """A record file that also carries flat metrics: fill what the blocks left out."""
    metrics = data.get("metrics") if isinstance(data.get("metrics"), dict) else {}
    if not metrics:
        return rec
    flat = EvaluationRecord.from_metrics(metrics)
    for name in ("win_rate", "win_rate_ci95", "n_prompts", "accuracy", "accuracy_before", "n", "items_sha256"):
        if getattr(rec, name) is None:
            setattr(rec, name, getattr(flat, name))
    rec.recorded_metrics = dict(metrics)
    return rec


# -- flat <-> blocks -------------------------------------------------------------------------------------
def _get(block: dict[str, Any], keys: tuple[str, ...]) -> Any:
    value: Any = block
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _flat_win_rate(block: dict[str, Any] | None) -> dict[str, Any]:
    if not block:
        return {}
    flat: dict[str, Any] = {}
    if isinstance(block.get("judge"), str):
        flat["judge"] = block["judge"].split(" ")[0]
    for key, keys in _WIN_RATE_FLAT:
        value = _get(block, keys)
        if key == "win_rate_ci95" and value is None:
            value = block.get("win_rate_ci95")
        if value is not None:
            flat[key] = value
    return flat


def _flat_pubmedqa(block: dict[str, Any] | None) -> dict[str, Any]:
    if not block:
        return {}
    if "after" in block:  # an early round's {"before": {...}, "after": {...}}
        after, before = block.get("after") or {}, block.get("before") or {}
        flat = {"pubmedqa_accuracy_after": after.get("accuracy"), "pubmedqa_n": after.get("n"),
                "pubmedqa_accuracy_before": before.get("accuracy"), "pubmedqa_items_sha256": after.get("items_sha256")}
        return _strip(flat)
    pairs = _PAIRED_FLAT if "accuracy_after" in block or "non_inferior" in block else _SINGLE_FLAT
    flat = {key: block.get(src) for key, src in pairs}
    raw = block.get("raw")  # the ungated reading of a prior-aligned paired test
    if isinstance(raw, dict):
        flat |= {"pubmedqa_raw_accuracy_after": raw.get("accuracy_after"),
                 "pubmedqa_raw_non_inferior": raw.get("non_inferior")}
    return _strip(flat)


def _fill(rec: EvaluationRecord, m: dict[str, Any]) -> EvaluationRecord:
    """The typed fields from flat metrics."""
    rec.win_rate = m.get("win_rate")
    rec.win_rate_ci95 = m.get("win_rate_ci95")
    rec.n_prompts = m.get("n_prompts")
    rec.accuracy = m.get("pubmedqa_accuracy", m.get("pubmedqa_accuracy_after"))
    rec.accuracy_before = m.get("pubmedqa_accuracy_before")
    rec.n = m.get("pubmedqa_n")
    rec.items_sha256 = m.get("pubmedqa_items_sha256")
    if isinstance(m.get("pubmedqa_non_inferior"), bool):
        rec.pubmedqa_non_inferior = m["pubmedqa_non_inferior"]
        rec.pubmedqa_lower_bound, rec.pubmedqa_margin = m.get("pubmedqa_lower_bound"), m.get("pubmedqa_margin")
    return rec


def _pubmedqa_from_fields(rec: EvaluationRecord) -> dict[str, Any]:
    if rec.accuracy is None:
        return {}
    if rec.accuracy_before is None:
        return _strip({"accuracy": rec.accuracy, "n": rec.n, "items_sha256": rec.items_sha256})
    return _strip({"accuracy_before": rec.accuracy_before, "accuracy_after": rec.accuracy, "n": rec.n,
                   "items_sha256": rec.items_sha256, "non_inferior": rec.pubmedqa_non_inferior,
                   "lower_bound_one_sided": rec.pubmedqa_lower_bound, "margin": rec.pubmedqa_margin})


def _strip(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}
