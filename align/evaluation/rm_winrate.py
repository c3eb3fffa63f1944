"""Reward-model win-rate of a policy against a baseline policy on held-out prompts (`clinalign winrate`).

The reward model here is a *proxy*: a round's headline win-rate is judged (align/evaluation/winrate.py),
never by the reward a policy was trained against. Both sides are scored in one call, ties follow the
round's rule (identical text, or a gap <= eps) and the CI is the same bootstrap over prompts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from align.evaluation.stats import DEFAULT_TIE_EPS, outcome, win_rate_stats
from align.generate import Generator, SamplingSetting
from align.prompts import Prompt


def win_rate(candidate: SamplingSetting, baseline: SamplingSetting, prompts: Sequence[Prompt], scorer, *,
             batch_size: int = 64, progress: Callable[[int], None] | None = None,
             tie_eps: float = DEFAULT_TIE_EPS) -> dict[str, Any]:
    """Both policies answer every prompt; the reward model scores both sides in one call."""
    texts = [p.text for p in prompts]
    cand = Generator(candidate, batch_size=batch_size).generate(texts, progress)
    base = Generator(baseline, batch_size=batch_size).generate(texts, progress)
    scores = scorer.score(texts + texts, cand + base)
    r_cand, r_base = scores[:len(texts)], scores[len(texts):]
    outcomes = [[outcome(a, b, ta, tb, eps=tie_eps)] for a, b, ta, tb in zip(r_cand, r_base, cand, base, strict=True)]
    stats = win_rate_stats(outcomes)
    return {"judge": "reward model (proxy)", **stats.to_dict(), "win_rate_ci95": stats.ci95,
            "mean_reward_candidate": float(np.mean(r_cand)), "mean_reward_baseline": float(np.mean(r_base)),
            "candidate": candidate.label, "baseline": baseline.label,
            "examples": [{"prompt": t, "candidate": c, "baseline": b, "reward_candidate": rc, "reward_baseline": rb}
                         for t, c, b, rc, rb in list(zip(texts, cand, base, r_cand, r_base, strict=True))[:5]]}
