"""The one percentile bootstrap every package uses (reward-model accuracy, score differences, ...).

Resamples are drawn in chunks of about `CHUNK_CELLS` index cells, so memory stays bounded on large
sets; the draws are the same as one big draw (the generator's stream does not depend on chunking).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

DEFAULT_N_BOOT = 10_000
DEFAULT_ALPHA = 0.05
CHUNK_CELLS = 2_000_000


def chunk_rows(n_cols: int, n_rows: int) -> int:
    """How many resample rows of `n_cols` indices fit in one chunk (at least one)."""
    return max(1, min(n_rows, CHUNK_CELLS // max(1, n_cols)))


def percentile_interval(samples: np.ndarray, alpha: float) -> tuple[float, float]:
    return float(np.quantile(samples, alpha / 2)), float(np.quantile(samples, 1 - alpha / 2))


def check_boot_args(n_boot: int, alpha: float) -> None:
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def bootstrap_ci(values: Sequence[float], *, n_boot: int = DEFAULT_N_BOOT, alpha: float = DEFAULT_ALPHA,
                 seed: int = 0, stat: Callable[[np.ndarray], float] | None = None) -> tuple[float, float]:
    """Percentile bootstrap interval of `stat` (default: the mean) over resampled items.

    (nan, nan) for no values. Callers that want fewer resamples (reward-model evaluation: 1,000)
    pass `n_boot` explicitly.
    """
    check_boot_args(n_boot, alpha)
    x = np.asarray(values, dtype=float).ravel()
    if x.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    draws = np.empty(n_boot)
    step = chunk_rows(x.size, n_boot)
    for start in range(0, n_boot, step):
        idx = rng.integers(0, x.size, size=(min(step, n_boot - start), x.size))
        draws[start:start + len(idx)] = x[idx].mean(axis=1) if stat is None else [stat(x[i]) for i in idx]
    return percentile_interval(draws, alpha)
