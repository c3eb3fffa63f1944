"""Reward-model win-rate of a policy against a baseline policy on held-out prompts."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from align.generate import Generator, SamplingSetting
from align.prompts import Prompt


def bootstrap_ci(values: Sequence[float], *, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, arr.size, size=(n_boot, arr.size))].mean(axis=1)
    return float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))


def win_rate(candidate: SamplingSetting, baseline: SamplingSetting, prompts: Sequence[Prompt], scorer, *,
             batch_size: int = 8, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Both policies answer every prompt; the reward model scores both; ties count one half."""
    texts = [p.text for p in prompts]
    cand = Generator(candidate, batch_size=batch_size).generate(texts, progress)
    base = Generator(baseline, batch_size=batch_size).generate(texts, progress)
    r_cand = scorer.score(texts, cand)
    r_base = scorer.score(texts, base)
    outcome = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(r_cand, r_base, strict=True)]
    lo, hi = bootstrap_ci(outcome)
    return {"win_rate": float(np.mean(outcome)), "win_rate_ci95": [lo, hi], "n_prompts": len(texts),
            "mean_reward_candidate": float(np.mean(r_cand)), "mean_reward_baseline": float(np.mean(r_base)),
            "candidate": candidate.label, "baseline": baseline.label,
            "examples": [{"prompt": t, "candidate": c, "baseline": b, "reward_candidate": rc, "reward_baseline": rb}
                         for t, c, b, rc, rb in list(zip(texts, cand, base, r_cand, r_base, strict=True))[:5]]}
