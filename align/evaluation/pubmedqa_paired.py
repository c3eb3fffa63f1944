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


def paired_alignment_tax(before: dict, after: dict, *, margin: float = 0.02, alpha: float = 0.05) -> dict[str, Any]:
    """Paired non-inferiority of `after` vs `before` (two evaluate_pubmedqa results on the same items)."""
    pb, pa = _predictions(before, "before"), _predictions(after, "after")
    ids = _check_same_items(pb, pa)
    out = noninferiority_paired([p["pred"] == p["gold"] for p in pb], [p["pred"] == p["gold"] for p in pa],
                                margin=margin, alpha=alpha)
    out.update({
        "n": len(ids), "items_sha256": hashlib.sha256(",".join(ids).encode()).hexdigest(),
        "before": _summary(before, pb), "after": _summary(after, pa),
        "verdict": "non-inferior" if out["non_inferior"] else "inferior or inconclusive"})
    differ = {k: [before.get(k), after.get(k)] for k in _SETTINGS if before.get(k) != after.get(k)}
    if differ:
        out["settings_differ"] = differ
    return out


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
                      show_progress: bool = True, **eval_kwargs: Any) -> dict[str, Any]:
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
            "paired": paired_alignment_tax(before, after, margin=margin, alpha=alpha)}
