"""Pure metrics for reward-model evaluation: numbers in, numbers out (no models, no files).

Conventions: a pair is (reward of chosen, reward of rejected). A tie counts half right. The model's
probability that the chosen answer wins is the Bradley–Terry one, sigmoid(r_chosen - r_rejected).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from clinalign_base.stats import bootstrap_ci  # the one bootstrap (also imported from here)


def pair_outcomes(chosen: Sequence[float], rejected: Sequence[float]) -> np.ndarray:
    """1 where the chosen answer scored higher, 0.5 on a tie, 0 otherwise."""
    c, r = np.asarray(chosen, dtype=float), np.asarray(rejected, dtype=float)
    return np.where(c > r, 1.0, np.where(c == r, 0.5, 0.0))


def accuracy_with_ci(outcomes: Sequence[float], *, n_boot: int = 1000, seed: int = 0) -> dict:
    x = np.asarray(outcomes, dtype=float)
    lo, hi = bootstrap_ci(x, n_boot=n_boot, seed=seed)
    return {"accuracy": float(x.mean()) if len(x) else math.nan, "ci95": [lo, hi], "n": int(len(x))}


def p_chosen(chosen: Sequence[float], rejected: Sequence[float]) -> np.ndarray:
    d = np.asarray(chosen, dtype=float) - np.asarray(rejected, dtype=float)
    return 1.0 / (1.0 + np.exp(-d))


def calibration(p: Sequence[float], *, n_bins: int = 10) -> dict:
    """Reliability of P(chosen) against the human label, binned by the model's confidence.

    Every pair's label is "chosen wins", so calibration is judged on the confidence the model puts on
    its own pick, max(p, 1-p) in [0.5, 1], against how often that pick was the human's (a tie at
    p = 0.5 counts half). ECE is the count-weighted mean |accuracy - confidence| over the bins.
    """
    p = np.asarray(p, dtype=float)
    conf = np.maximum(p, 1 - p)
    correct = np.where(p > 0.5, 1.0, np.where(p == 0.5, 0.5, 0.0))
    edges = np.linspace(0.5, 1.0, n_bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    bins, ece = [], 0.0
    for b in range(n_bins):
        mask = which == b
        n = int(mask.sum())
        if n == 0:
            bins.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "n": 0,
                         "confidence": None, "accuracy": None})
            continue
        c, a = float(conf[mask].mean()), float(correct[mask].mean())
        ece += n / len(p) * abs(a - c)
        bins.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "n": n, "confidence": c, "accuracy": a})
    return {"ece": float(ece) if len(p) else math.nan, "bins": bins, "n_bins": n_bins,
            "mean_confidence": float(conf.mean()) if len(p) else math.nan}


def length_bias(outcomes: Sequence[float], len_chosen: Sequence[int], len_rejected: Sequence[int],
                r_chosen: Sequence[float], r_rejected: Sequence[float]) -> dict:
    """How far the model's wins could be explained by answer length alone."""
    o = np.asarray(outcomes, dtype=float)
    lc, lr = np.asarray(len_chosen), np.asarray(len_rejected)
    shorter, longer = lc < lr, lc > lr
    prefer_longer = np.where(longer, 1.0, np.where(lc == lr, 0.5, 0.0))
    lengths = np.concatenate([lc, lr]).astype(float)
    rewards = np.concatenate([np.asarray(r_chosen, float), np.asarray(r_rejected, float)])
    return {
        "baseline_prefer_longer": float(prefer_longer.mean()),
        "baseline_prefer_shorter": float((1 - prefer_longer).mean()),
        "accuracy_when_chosen_shorter": float(o[shorter].mean()) if shorter.any() else None,
        "n_chosen_shorter": int(shorter.sum()),
        "accuracy_when_chosen_longer": float(o[longer].mean()) if longer.any() else None,
        "n_chosen_longer": int(longer.sum()),
        "spearman_reward_vs_length": spearman(rewards, lengths),
    }


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    from scipy.stats import spearmanr

    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    return float(spearmanr(x, y).statistic)


def rating_agreement(scores: Sequence[float], ratings: Sequence[float], groups: Sequence[str], *,
                     n_boot: int = 1000, seed: int = 0) -> dict:
    """Spearman of reward against graded human ratings: over all items, and within each question.

    Within-question agreement is what a reward model is used for (ranking answers to one prompt);
    the global figure also rewards getting the difficulty of questions right.
    """
    s, g = np.asarray(scores, float), np.asarray(ratings, float)
    rho = spearman(s, g)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        i = rng.integers(0, len(s), len(s))
        v = spearman(s[i], g[i])
        if v is not None:
            boots.append(v)
    by_group: dict[str, list[int]] = defaultdict(list)
    for i, key in enumerate(groups):
        by_group[key].append(i)
    per = [spearman(s[idx], g[idx]) for idx in by_group.values() if len(idx) >= 3]
    per = [v for v in per if v is not None]
    return {
        "spearman": rho,
        "spearman_ci95": [float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))] if boots else None,
        "n": int(len(s)),
        "mean_within_prompt_spearman": float(np.mean(per)) if per else None,
        "n_prompts_used": len(per),
        "mean_reward_by_rating": {str(int(k) if float(k).is_integer() else k): float(s[g == k].mean())
                                  for k in sorted(set(g.tolist()))},
    }


def by_source(outcomes: Sequence[float], sources: Sequence[str]) -> dict[str, dict]:
    groups: dict[str, list[float]] = defaultdict(list)
    for o, src in zip(outcomes, sources, strict=True):
        groups[src].append(float(o))
    return {src: {"accuracy": float(np.mean(v)), "n": len(v)} for src, v in sorted(groups.items())}
