"""Statistics behind a round's evidence report: win-rates with cluster-bootstrap CIs, paired tests,
non-inferiority of accuracy (alignment tax), and the length/diversity figures shown beside every win-rate."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

from clinalign_base.stats import (
    DEFAULT_ALPHA,
    DEFAULT_N_BOOT,
    check_boot_args,
    chunk_rows,
    percentile_interval,
)

DEFAULT_TIE_EPS: float = 1e-6

# Exact sign-flip enumeration costs 2^n rows; 16 prompts = 65,536 rows, still instant.
_EXACT_MAX_PROMPTS = 16
_VALID_OUTCOMES = (0.0, 0.5, 1.0)


def outcome(score_a: float, score_b: float, text_a: str | None = None, text_b: str | None = None, *,
            eps: float = DEFAULT_TIE_EPS) -> float:
    """1.0 if a wins, 0.0 if b wins, 0.5 for a tie. Tie = identical text (after .strip()) whenever both
    texts are given, or |score_a - score_b| <= eps."""
    # Identical answers must tie whatever the scorer says: batch padding shifts scores by ~1e-8.
    if text_a is not None and text_b is not None and text_a.strip() == text_b.strip():
        return 0.5
    if math.isnan(score_a) or math.isnan(score_b):
        # A NaN compares False both ways and would silently count as a loss.
        raise ValueError(f"outcome: NaN score (score_a={score_a}, score_b={score_b})")
    if abs(score_a - score_b) <= eps:
        return 0.5
    return 1.0 if score_a > score_b else 0.0


@dataclass
class WinRate:
    win_rate: float
    ci95: list[float]
    p_value: float
    n_prompts: int
    n_comparisons: int
    wins: int
    losses: int
    ties: int

    def to_dict(self) -> dict[str, Any]:
        return {"win_rate": float(self.win_rate), "ci95": [float(x) for x in self.ci95],
                "p_value": float(self.p_value), "n_prompts": int(self.n_prompts),
                "n_comparisons": int(self.n_comparisons), "wins": int(self.wins),
                "losses": int(self.losses), "ties": int(self.ties)}


def _validated_prompts(outcomes_by_prompt: Sequence[Sequence[float]]) -> list[np.ndarray]:
    if len(outcomes_by_prompt) == 0:
        raise ValueError("win_rate_stats: no prompts given (outcomes_by_prompt is empty)")
    prompts = [np.asarray(o, dtype=float).ravel() for o in outcomes_by_prompt]
    for i, arr in enumerate(prompts):
        if arr.size == 0:
            raise ValueError(f"win_rate_stats: prompt {i} has zero comparisons")
        if not np.isin(arr, _VALID_OUTCOMES).all():
            raise ValueError(f"win_rate_stats: prompt {i} has outcomes outside {{0, 0.5, 1}}: {arr.tolist()}")
    return prompts


def _cluster_bootstrap(sums: np.ndarray, counts: np.ndarray, n_boot: int,
                       rng: np.random.Generator) -> np.ndarray:
    """Win-rate of each resample of prompts: pooled over the drawn prompts' comparisons (ratio estimator)."""
    n = sums.size
    out = np.empty(n_boot)
    step = chunk_rows(n, n_boot)
    for start in range(0, n_boot, step):
        idx = rng.integers(0, n, size=(min(step, n_boot - start), n))
        out[start:start + idx.shape[0]] = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    return out


def _sign_flip_p(d: np.ndarray, n_boot: int, rng: np.random.Generator) -> float:
    """Two-sided paired permutation test of H0: per-prompt deviations are symmetric about 0."""
    n = d.size
    observed = abs(float(d.sum())) - 1e-12  # tolerance so float noise never drops the observed pattern
    if n <= _EXACT_MAX_PROMPTS:
        bits = (np.arange(2 ** n)[:, None] >> np.arange(n)) & 1
        flipped = np.abs((1 - 2 * bits) @ d)
        return float(np.count_nonzero(flipped >= observed) / 2 ** n)
    hits = 0
    step = chunk_rows(n, n_boot)
    for start in range(0, n_boot, step):
        signs = rng.choice(np.array([-1.0, 1.0]), size=(min(step, n_boot - start), n))
        hits += int(np.count_nonzero(np.abs(signs @ d) >= observed))
    return (1 + hits) / (1 + n_boot)


def win_rate_stats(outcomes_by_prompt: Sequence[Sequence[float]], *, n_boot: int = DEFAULT_N_BOOT, seed: int = 0,
                   alpha: float = DEFAULT_ALPHA) -> WinRate:
    """Win-rate over all comparisons, with a prompt-clustered bootstrap CI and a sign-flip p-value.

    outcomes_by_prompt[i] holds the outcomes (1/0.5/0) of every comparison made on prompt i. Samples of one
    prompt are correlated, so both the CI and the test treat the prompt, not the comparison, as the unit.
    The test is exact (all 2^n sign patterns) for n_prompts <= 16, Monte Carlo with n_boot flips otherwise.
    """
    check_boot_args(n_boot, alpha)
    prompts = _validated_prompts(outcomes_by_prompt)
    flat = np.concatenate(prompts)
    sums = np.array([p.sum() for p in prompts])
    counts = np.array([p.size for p in prompts], dtype=float)
    boot_rng, flip_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    lo, hi = percentile_interval(_cluster_bootstrap(sums, counts, n_boot, boot_rng), alpha)
    d = sums / counts - 0.5
    return WinRate(win_rate=float(flat.mean()), ci95=[lo, hi], p_value=_sign_flip_p(d, n_boot, flip_rng),
                   n_prompts=len(prompts), n_comparisons=int(flat.size),
                   wins=int(np.count_nonzero(flat == 1.0)), losses=int(np.count_nonzero(flat == 0.0)),
                   ties=int(np.count_nonzero(flat == 0.5)))


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (b: right->wrong, c: wrong->right)."""
    if b < 0 or c < 0:
        raise ValueError(f"mcnemar_exact: counts must be non-negative, got b={b}, c={c}")
    if b + c == 0:
        return 1.0
    return float(min(1.0, 2 * sps.binom.cdf(min(b, c), b + c, 0.5)))


def noninferiority_paired(correct_before: Sequence[bool], correct_after: Sequence[bool], *,
                          margin: float = 0.02, alpha: float = 0.05) -> dict[str, Any]:
    """Paired non-inferiority of accuracy after vs before on the same items (the alignment tax).

    The SE of the paired difference comes from the discordant proportions, so items both models get right
    (or wrong) add no noise; non_inferior iff the one-sided (1 - alpha) lower bound exceeds -margin.
    """
    if len(correct_before) != len(correct_after):
        raise ValueError(f"noninferiority_paired: length mismatch, {len(correct_before)} items before "
                         f"vs {len(correct_after)} after (the items must be paired)")
    if len(correct_before) == 0:
        raise ValueError("noninferiority_paired: no items given (empty input)")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    before = np.asarray(correct_before, dtype=bool)
    after = np.asarray(correct_after, dtype=bool)
    n = before.size
    b = int(np.count_nonzero(before & ~after))
    c = int(np.count_nonzero(~before & after))
    diff = (c - b) / n
    # max(0, .) guards against a tiny negative from float rounding when b + c is all of n.
    se = math.sqrt(max(0.0, (b + c) / n - diff ** 2)) / math.sqrt(n)
    z_two = float(sps.norm.ppf(0.975))
    lower = diff - float(sps.norm.ppf(1 - alpha)) * se
    return {"n": n, "accuracy_before": float(before.mean()), "accuracy_after": float(after.mean()),
            "diff": diff, "diff_ci95": [diff - z_two * se, diff + z_two * se],
            "lower_bound_one_sided": lower, "margin": margin, "alpha": alpha,
            "b_right_to_wrong": b, "c_wrong_to_right": c, "mcnemar_p": mcnemar_exact(b, c),
            "non_inferior": bool(lower > -margin)}


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Share of distinct word n-grams among all word n-grams across texts; 1.0 if there are none.
    N-grams do not span two texts."""
    if n < 1:
        raise ValueError(f"distinct_n: n must be >= 1, got {n}")
    grams: list[tuple[str, ...]] = []
    for text in texts:
        words = text.lower().split()
        grams.extend(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    if not grams:
        return 1.0
    return len(set(grams)) / len(grams)


def length_report(texts: Sequence[str], finished: Sequence[bool], n_tokens: Sequence[int], *,
                  max_new_tokens: int) -> dict[str, Any]:
    """Length, termination and diversity figures reported beside every win-rate: a reward model that likes
    long answers shows up here as a mean-length jump or a truncation spike."""
    if not len(texts) == len(finished) == len(n_tokens):
        raise ValueError(f"length_report: length mismatch, {len(texts)} texts, {len(finished)} finished "
                         f"flags, {len(n_tokens)} token counts")
    if len(texts) == 0:
        raise ValueError("length_report: no texts given (empty input)")
    words = np.array([len(t.split()) for t in texts], dtype=float)
    done = np.asarray(finished, dtype=bool)
    tokens = np.asarray(n_tokens, dtype=int)
    return {"n": len(texts), "mean_words": float(words.mean()), "median_words": float(np.median(words)),
            "mean_tokens": float(tokens.mean()), "eos_rate": float(done.mean()),
            "truncated": int(np.count_nonzero((tokens >= max_new_tokens) & ~done)),
            "empty": sum(1 for t in texts if not t.strip()), "distinct_2": distinct_n(texts, 2)}
