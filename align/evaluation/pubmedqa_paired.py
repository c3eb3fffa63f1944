"""The PubMedQA alignment tax as a paired test: the same items scored before and after a round.

Both models answer the same 500 questions, so the comparison is paired (McNemar / discordant-pair SE),
far tighter than comparing two independent accuracies with their own CIs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from align.evaluation.stats import noninferiority_paired
from clinalign_base.errors import InputError

# Settings that should match for a fair comparison; a difference is reported, not fatal.
_SETTINGS = ("scoring_version", "max_length", "chat_prompt", "dtype", "limit", "with_abstract")


GATES = ("prior_aligned", "raw")


def paired_alignment_tax(before: dict, after: dict, *, margin: float = 0.02, alpha: float = 0.05,
                         gate: str = "prior_aligned") -> dict[str, Any]:
    """Paired non-inferiority of `after` vs `before` (two evaluate_pubmedqa results on the same items).

    Two readings of the same answers. `raw`: each model's own argmax. `prior_aligned`: the policy's
    per-label log-odds (vs "yes") shifted by a constant so that their mean over the items equals the
    base's. The shift uses the models' scores only, never the gold labels; it removes a uniform change
    of the model's default answer (a small model's yes/no prior moves with any fine-tune) and keeps
    every item-level change of knowledge. In the demo's round the raw tax (36 items right->wrong, 24
    back) was entirely such a shift (-0.14 nats; item margins before/after correlated 0.988): aligned,
    14 and 12. `gate` picks the reading the verdict uses; the other is reported beside it.
    """
    if gate not in GATES:
        raise InputError(f"gate must be one of {GATES}, got {gate!r}")
    pb, pa = _predictions(before, "before"), _predictions(after, "after")
    ids = _check_same_items(pb, pa)
    right_before = [p["pred"] == p["gold"] for p in pb]
    raw = noninferiority_paired(right_before, [p["pred"] == p["gold"] for p in pa], margin=margin, alpha=alpha)
    aligned = _prior_aligned(pb, pa)
    if aligned is not None:
        aligned |= noninferiority_paired(right_before, aligned.pop("correct"), margin=margin, alpha=alpha)
    used = gate if aligned is not None else "raw"  # older results without per-item scores: raw only
    out = dict(aligned if used == "prior_aligned" else raw)
    out.update({
        "gate": used, "raw": _brief(raw), **({"prior_aligned": _brief(aligned)} if aligned else {}),
        "n": len(ids), "items_sha256": hashlib.sha256(",".join(ids).encode()).hexdigest(),
        "before": _summary(before, pb), "after": _summary(after, pa),
        "verdict": "non-inferior" if out["non_inferior"] else "inferior or inconclusive"})
    differ = {k: [before.get(k), after.get(k)] for k in _SETTINGS if before.get(k) != after.get(k)}
    if differ:
        out["settings_differ"] = differ
    return out


def _prior_aligned(before: Sequence[dict], after: Sequence[dict]) -> dict[str, Any] | None:
    """The policy's predictions after aligning its mean per-label log-odds with the base's (label-free)."""
    import numpy as np

    from align.evaluation.pubmedqa import LABELS

    try:
        sb = np.array([p["logprobs"] for p in before], dtype=float)
        sa = np.array([p["logprobs"] for p in after], dtype=float)
    except (KeyError, TypeError, ValueError):
        return None
    if sb.shape != sa.shape or sb.ndim != 2 or sb.shape[1] != len(LABELS):
        return None
    shift = (sb - sb[:, :1]).mean(0) - (sa - sa[:, :1]).mean(0)  # per label, relative to "yes"
    preds = [LABELS[j] for j in (sa + shift).argmax(1)]
    return {"correct": [pr == p["gold"] for pr, p in zip(preds, after, strict=True)],
            "prior_shift_nats": {lab: round(float(-x), 4) for lab, x in zip(LABELS, shift, strict=True)
                                 if lab != LABELS[0]},
            "predicted_aligned": {lab: preds.count(lab) for lab in LABELS}}


def _brief(block: dict[str, Any]) -> dict[str, Any]:
    keep = ("accuracy_after", "diff", "diff_ci95", "lower_bound_one_sided", "b_right_to_wrong", "c_wrong_to_right",
            "mcnemar_p", "non_inferior", "prior_shift_nats", "predicted_aligned")
    return {k: block[k] for k in keep if k in block}


def _predictions(result: dict, name: str) -> list[dict]:
    preds = result.get("predictions") if isinstance(result, dict) else None
    if not isinstance(preds, list) or not preds:
        raise InputError(f"{name}: no per-item 'predictions' (an evaluate_pubmedqa result is needed)")
    for i, p in enumerate(preds):
        if not isinstance(p, dict) or not all(k in p for k in ("id", "gold", "pred")):
            raise InputError(f"{name}: prediction {i} lacks id/gold/pred")
    return preds


def _check_same_items(before: Sequence[dict], after: Sequence[dict]) -> list[str]:
    """The item ids, once both lists are shown to hold the same items, in the same order, with one gold."""
    ib, ia = [str(p["id"]) for p in before], [str(p["id"]) for p in after]
    if len(ib) != len(ia):
        raise InputError(f"item mismatch: before has {len(ib)} items, after has {len(ia)}")
    for i, (b, a) in enumerate(zip(ib, ia, strict=True)):
        if b != a:
            order = " (same items, different order)" if sorted(ib) == sorted(ia) else ""
            raise InputError(f"item mismatch at position {i}: before {b!r}, after {a!r}{order}")
    for b, a in zip(before, after, strict=True):
        if b["gold"] != a["gold"]:
            raise InputError(f"item {b['id']!r}: gold label {b['gold']!r} before, {a['gold']!r} after "
                             f"(different data files?)")
    return ib


def _summary(result: dict, preds: Sequence[dict]) -> dict[str, Any]:
    from align.evaluation.pubmedqa import LABELS

    acc = sum(p["pred"] == p["gold"] for p in preds) / len(preds)
    return {"accuracy": acc, "accuracy_ci95": result.get("accuracy_ci95"),
            "predicted": {lab: sum(p["pred"] == lab for p in preds) for lab in LABELS},
            "model": result.get("model"), "adapter": result.get("adapter"), "cached": result.get("cached", False)}


def run_alignment_tax(base_spec: str, *, policy_spec: str | None = None, adapter: str | None = None,
                      limit: int | None = None, margin: float = 0.02, alpha: float = 0.05,
                      gate: str = "prior_aligned", show_progress: bool = True, **eval_kwargs: Any) -> dict[str, Any]:
    """Score the base (cached by weight hash) and the policy = policy_spec (default base_spec) + adapter
    (optional, merged), then the paired test. The policy's own base may be another folder than base_spec
    (an SFT-merged model under a DPO LoRA), so the two are named separately."""
    from align.evaluation.pubmedqa import evaluate_pubmedqa_cached

    if adapter is None and (policy_spec is None or policy_spec == base_spec):
        raise InputError("nothing to compare: give an adapter and/or a policy_spec other than the base")
    common = dict(limit=limit, show_progress=show_progress, **eval_kwargs)
    before = evaluate_pubmedqa_cached(base_spec, **common)
    after = evaluate_pubmedqa_cached(policy_spec or base_spec, adapter=adapter, **common)
    return {"before": before, "after": after,
            "paired": paired_alignment_tax(before, after, margin=margin, alpha=alpha, gate=gate)}
