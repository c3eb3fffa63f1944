"""A judged win-rate of a policy against the base on held-out prompts, with its control and context.

Both policies answer every test prompt `k` times. The judge (the simulated clinician in the demo;
clinicians' blind votes in a real round) scores every answer alone, so padding and batch composition
cannot break a tie. A prompt's comparisons are all k x k (policy sample i, base sample j): the same
estimand as one comparison per sample (P(a policy answer beats a base answer to the same question)),
with less within-prompt noise (docs/experimental-design.md §6). The prompt stays the unit of the CI
and the test. Reported beside the win-rate, as the experimental design asks:
- the A/A control: the base's even-numbered samples vs its odd-numbered ones (other seeds of one
  model), all cross pairs: its CI must contain 0.5;
- best-of-k headroom: the judge's mean score of the base's best sample per prompt (what selection can
  reach), beside the base's and the policy's mean score;
- lengths, end-of-turn rate and truncation counts of both sides;
- optionally a proxy (the round's reward model): its own win-rate and its agreement with the judge.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from align.evaluation.stats import DEFAULT_TIE_EPS, length_report, outcome, win_rate_stats
from align.generate import Sample
from align.prompts import Prompt
from clinalign_base.stats import DEFAULT_N_BOOT, bootstrap_ci

JudgeFn = Callable[[Prompt, Sample], float]


def _outcomes(scores_a: list[list[float]], scores_b: list[list[float]], texts_a: list[list[str]],
              texts_b: list[list[str]], pairs: Sequence[tuple[int, int]], eps: float) -> list[list[float]]:
    return [[outcome(sa[i], sb[j], ta[i], tb[j], eps=eps) for i, j in pairs]
            for sa, sb, ta, tb in zip(scores_a, scores_b, texts_a, texts_b, strict=True)]


def judged_win_rate(prompts: Sequence[Prompt], policy: Sequence[Sequence[Sample]], base: Sequence[Sequence[Sample]],
                    judge: JudgeFn, *, judge_name: str, max_new_tokens: int, tie_eps: float = DEFAULT_TIE_EPS,
                    train_prompt_overlap: int = 0, seed: int = 0, proxy: Callable | None = None,
                    proxy_name: str | None = None) -> dict[str, Any]:
    k = min(len(s) for s in (*policy, *base))
    if k < 2:
        raise ValueError("the control needs at least 2 base samples per prompt")
    sp = [[judge(p, s) for s in group[:k]] for p, group in zip(prompts, policy, strict=True)]
    sb = [[judge(p, s) for s in group[:k]] for p, group in zip(prompts, base, strict=True)]
    tp = [[s.text for s in g[:k]] for g in policy]
    tb = [[s.text for s in g[:k]] for g in base]
    main = win_rate_stats(_outcomes(sp, sb, tp, tb, all_pairs(k), tie_eps), seed=seed)
    control = win_rate_stats(_outcomes(sb, sb, tb, tb, control_pairs(k), tie_eps), seed=seed + 1)
    diffs = [float(np.mean(a) - np.mean(b)) for a, b in zip(sp, sb, strict=True)]
    result = {
        "judge": judge_name, **main.to_dict(), "tie_rule": f"identical text, or |score gap| <= {tie_eps:g}",
        "samples_per_prompt": k, "comparisons": f"all {k} x {k} (policy sample, base sample) pairs per prompt",
        "train_prompt_overlap": train_prompt_overlap,
        "control": {"kind": "A/A: base vs base, other seeds (even vs odd samples, all cross pairs)",
                    **control.to_dict()},
        "mean_score": {"policy": float(np.mean(sp)), "base": float(np.mean(sb)),
                       "base_best_of_k": float(np.mean([max(s) for s in sb]))},
        "mean_score_diff": float(np.mean(diffs)),
        "mean_score_diff_ci95": list(bootstrap_ci(diffs, n_boot=DEFAULT_N_BOOT, seed=seed)),
        "lengths": {"policy": _lengths(policy, k, max_new_tokens), "base": _lengths(base, k, max_new_tokens)},
        "examples": _examples(prompts, policy, base, sp, sb, n=3),
    }
    if proxy is not None:
        result["proxy"] = _proxy(prompts, policy, base, k, proxy, proxy_name or "proxy", result, sp, sb, tie_eps, seed)
    return result


def all_pairs(k: int) -> list[tuple[int, int]]:
    """Every (policy sample, base sample) pair of a prompt."""
    return [(i, j) for i in range(k) for j in range(k)]


def control_pairs(k: int) -> list[tuple[int, int]]:
    """A/A: even-numbered base samples vs odd-numbered ones, all cross pairs (disjoint seeds on each side;
    comparing every sample with every other would be symmetric and give exactly 0.5)."""
    return [(i, j) for i in range(0, k - k % 2, 2) for j in range(1, k - k % 2, 2)]


def _lengths(groups: Sequence[Sequence[Sample]], k: int, max_new_tokens: int) -> dict[str, Any]:
    flat = [s for g in groups for s in g[:k]]
    return length_report([s.text for s in flat], [s.finished for s in flat], [s.n_tokens for s in flat],
                         max_new_tokens=max_new_tokens)


def _examples(prompts, policy, base, sp, sb, *, n: int) -> list[dict[str, Any]]:
    return [{"prompt": p.text, "policy": pol[0].text, "base": b[0].text, "score_policy": round(s1[0], 4),
             "score_base": round(s2[0], 4)} for p, pol, b, s1, s2 in list(zip(prompts, policy, base, sp, sb,
                                                                                strict=True))[:n]]


def _proxy(prompts, policy, base, k, proxy, name, judged, sp, sb, eps, seed) -> dict[str, Any]:
    """The reward model as a proxy: scored in one call for both sides, reported with its agreement."""
    texts = [p.text for p in prompts for _ in range(2 * k)]
    answers = [s.text for pol, b in zip(policy, base, strict=True) for s in (*pol[:k], *b[:k])]
    flat = proxy(texts, answers)
    rp = [flat[i * 2 * k:i * 2 * k + k] for i in range(len(prompts))]
    rb = [flat[i * 2 * k + k:(i + 1) * 2 * k] for i in range(len(prompts))]
    tp = [[s.text for s in g[:k]] for g in policy]
    tb = [[s.text for s in g[:k]] for g in base]
    pairs = all_pairs(k)
    proxy_out = _outcomes(rp, rb, tp, tb, pairs, eps)
    judge_out = _outcomes(sp, sb, tp, tb, pairs, eps)
    decided = [(a, b) for pa, pb in zip(proxy_out, judge_out, strict=True) for a, b in zip(pa, pb, strict=True)
               if a != 0.5 and b != 0.5]
    agree = sum(a == b for a, b in decided)
    return {"name": name, "note": "reported only as a proxy; never the judge of the policy it trained",
            **win_rate_stats(proxy_out, seed=seed + 2).to_dict(),
            "agreement_with_judge": agree / len(decided) if decided else None, "n_decided": len(decided)}
