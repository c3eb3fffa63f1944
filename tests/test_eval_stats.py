"""align.evaluation.stats: hand-worked win-rate, test and non-inferiority figures."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from align.evaluation.stats import (
    DEFAULT_TIE_EPS,
    WinRate,
    distinct_n,
    length_report,
    mcnemar_exact,
    noninferiority_paired,
    outcome,
    win_rate_stats,
)
from clinalign_base.stats import bootstrap_ci

# ---------------------------------------------------------------- outcome


def test_identical_texts_tie_despite_padding_noise():
    assert outcome(0.30000001, 0.3, "Take 500 mg.", "Take 500 mg.") == 0.5
    # identity is judged after strip(); even a large score gap cannot break the tie
    assert outcome(2.0, -1.0, "  Take 500 mg.\n", "Take 500 mg.") == 0.5


def test_different_texts_tie_only_within_eps():
    assert outcome(1.0, 1.0 + DEFAULT_TIE_EPS / 2, "a", "b") == 0.5
    assert outcome(1.0, 1.0 + 1e-3, "a", "b", eps=1e-2) == 0.5
    assert outcome(1.0 + 1e-3, 1.0, "a", "b") == 1.0
    assert outcome(1.0, 1.0 + 1e-3, "a", "b") == 0.0


def test_clear_win_and_loss_without_texts():
    assert outcome(0.9, 0.1) == 1.0
    assert outcome(0.1, 0.9) == 0.0
    # only one text given: the text rule does not apply, scores decide
    assert outcome(0.9, 0.1, "same", None) == 1.0


def test_nan_score_is_an_error_not_a_silent_loss():
    with pytest.raises(ValueError, match="NaN"):
        outcome(float("nan"), 0.1, "a", "b")


# ---------------------------------------------------------------- win_rate_stats


def test_win_rate_hand_worked_example():
    # 3 prompts, 2 comparisons each: outcomes 1,1 | 1,0.5 | 0,1
    # wins = 4, losses = 1, ties = 1, win_rate = (4 + 0.5) / 6 = 0.75
    # per-prompt deviations d = [1.0-0.5, 0.75-0.5, 0.5-0.5] = [0.5, 0.25, 0.0], observed |sum d| = 0.75
    # the 8 sign patterns (s1, s2, s3) give sum = +-0.5 +-0.25 +-0.0:
    #   (+,+,+) 0.75  (+,+,-) 0.75  (+,-,+) 0.25  (+,-,-) 0.25
    #   (-,+,+) -0.25 (-,+,-) -0.25 (-,-,+) -0.75 (-,-,-) -0.75
    # |sum| >= 0.75 in 4 of 8 patterns -> exact p = 4/8 = 0.5
    wr = win_rate_stats([[1, 1], [1, 0.5], [0, 1]], n_boot=2000)
    assert wr.win_rate == pytest.approx(0.75)
    assert (wr.wins, wr.losses, wr.ties) == (4, 1, 1)
    assert (wr.n_prompts, wr.n_comparisons) == (3, 6)
    assert wr.p_value == pytest.approx(0.5, abs=1e-12)
    # every resample's win-rate is a pooled mix of the prompt rates 1.0, 0.75, 0.5
    assert 0.5 <= wr.ci95[0] <= wr.win_rate <= wr.ci95[1] <= 1.0


def test_exact_sign_flip_all_wins_small():
    # 4 prompts, all wins: d = [0.5]*4, |sum| = 2 is reached only by all-plus and all-minus -> 2/16
    wr = win_rate_stats([[1]] * 4, n_boot=500)
    assert wr.p_value == pytest.approx(0.125, abs=1e-12)


def test_unequal_cluster_sizes_pool_over_comparisons():
    # point estimate is the mean over all comparisons, not the mean of prompt means (which would be 0.5)
    wr = win_rate_stats([[1, 1, 1, 1, 1, 1], [0, 0]], n_boot=500)
    assert wr.win_rate == pytest.approx(6 / 8)


def test_each_prompt_gets_one_vote_in_the_sign_flip_test():
    # d uses per-prompt MEANS: [[1,1,1,1],[1],[0]] -> d = [0.5, 0.5, -0.5], |sum d| = 0.5, and every one of
    # the 8 patterns gives |+-0.5 +-0.5 +-0.5| in {0.5, 1.5} >= 0.5 -> p = 1.0
    # (summed deviations would give d = [2, 0.5, -0.5] and p = 6/8: the 4-sample prompt would outvote the others)
    wr = win_rate_stats([[1, 1, 1, 1], [1], [0]], n_boot=500)
    assert wr.p_value == pytest.approx(1.0)


def test_bootstrap_resample_pools_comparisons_of_drawn_prompts():
    # prompts [1]*6 and [0]*2: a resample draws {A,A} -> 1, {A,B}/{B,A} -> 6/8 = 0.75, {B,B} -> 0,
    # with probabilities 1/4, 1/2, 1/4; the middle 40% of that distribution (alpha=0.6) is exactly 0.75
    # (averaging prompt rates instead would put it at 0.5)
    wr = win_rate_stats([[1] * 6, [0] * 2], n_boot=4000, alpha=0.6)
    assert wr.ci95 == pytest.approx([0.75, 0.75])


def test_all_wins_ci_is_degenerate_at_one():
    wr = win_rate_stats([[1, 1, 1]] * 30, n_boot=1000)
    assert wr.ci95 == [1.0, 1.0]
    assert wr.win_rate == 1.0
    # 30 prompts -> Monte Carlo: only 2 of 2^30 sign patterns reach |sum d| = 15, so none of the 1000 random
    # flips does, and p = (1 + 0) / (1 + 1000): never 0, as a Monte Carlo p-value must not be
    assert wr.p_value == pytest.approx(1 / 1001)


def test_symmetric_input_ci_contains_half_and_p_near_one():
    data = [[1, 1]] * 10 + [[0, 0]] * 10 + [[1, 0]] * 5  # 25 prompts: Monte Carlo path
    wr = win_rate_stats(data, n_boot=2000)
    assert wr.win_rate == pytest.approx(0.5)
    assert wr.ci95[0] < 0.5 < wr.ci95[1]
    assert wr.p_value > 0.95


def test_monte_carlo_p_agrees_with_exact_enumeration():
    rng = np.random.default_rng(7)
    data = [list(rng.choice([0.0, 0.5, 1.0], size=3, p=[0.3, 0.1, 0.6])) for _ in range(18)]
    d = np.array([np.mean(o) - 0.5 for o in data])
    bits = (np.arange(2 ** 18)[:, None] >> np.arange(18)) & 1
    exact = np.mean(np.abs((1 - 2 * bits) @ d) >= abs(d.sum()) - 1e-12)
    wr = win_rate_stats(data, n_boot=20000, seed=3)
    assert 0.01 < exact < 0.5  # a case where the test is informative
    assert wr.p_value == pytest.approx(exact, abs=0.015)


def test_seed_makes_results_reproducible():
    data = [[1, 0], [1, 1], [0.5, 0], [1, 0.5]] * 6
    assert win_rate_stats(data, n_boot=800, seed=5) == win_rate_stats(data, n_boot=800, seed=5)
    assert win_rate_stats(data, n_boot=800, seed=5).ci95 != win_rate_stats(data, n_boot=800, seed=6).ci95


def test_cluster_bootstrap_wider_than_naive_when_prompt_outcomes_correlate():
    # each prompt's 4 samples agree perfectly: really 10 independent units, not 40
    data = [[1.0] * 4] * 6 + [[0.0] * 4] * 4
    wr = win_rate_stats(data, n_boot=4000, seed=1)
    flat = np.concatenate([np.asarray(o) for o in data])
    rng = np.random.default_rng(1)
    naive = flat[rng.integers(0, flat.size, size=(4000, flat.size))].mean(axis=1)
    naive_lo, naive_hi = np.quantile(naive, [0.025, 0.975])
    cluster_width = wr.ci95[1] - wr.ci95[0]
    # theory: the width ratio is sqrt(40 / 10) = 2
    assert cluster_width > 1.5 * (naive_hi - naive_lo)


def test_to_dict_is_plain_json():
    wr = win_rate_stats([[1, 0.5], [0]], n_boot=200)
    d = wr.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert set(d) == {"win_rate", "ci95", "p_value", "n_prompts", "n_comparisons", "wins", "losses", "ties"}
    assert isinstance(wr, WinRate) and isinstance(d["ci95"], list)


def test_win_rate_errors_name_the_problem():
    with pytest.raises(ValueError, match="no prompts"):
        win_rate_stats([])
    with pytest.raises(ValueError, match="prompt 1 has zero comparisons"):
        win_rate_stats([[1], [], [0]])
    with pytest.raises(ValueError, match="outside"):
        win_rate_stats([[1, 0.7]])


# ---------------------------------------------------------------- bootstrap_ci (clinalign_base.stats)


def test_bootstrap_ci():
    lo, hi = bootstrap_ci([0.2, 0.4, 0.1, 0.3, 0.5, 0.0, 0.6], n_boot=2000)
    assert 0.0 <= lo < 0.3 < hi <= 0.6
    assert bootstrap_ci([2.0] * 5) == (2.0, 2.0)
    assert all(math.isnan(x) for x in bootstrap_ci([]))
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ci([1.0], n_boot=0)


def test_bootstrap_ci_same_draws_in_chunks_and_any_statistic(monkeypatch):
    import clinalign_base.stats as S

    values = np.random.default_rng(0).normal(size=50)
    whole = bootstrap_ci(values, n_boot=300, seed=4)
    assert bootstrap_ci(values, n_boot=300, seed=4, stat=np.mean) == pytest.approx(whole, abs=1e-12)
    monkeypatch.setattr(S, "CHUNK_CELLS", 50 * 7)  # 7 rows per chunk
    assert bootstrap_ci(values, n_boot=300, seed=4) == whole
    lo, hi = bootstrap_ci(values, n_boot=300, seed=4, stat=np.median)
    assert lo < float(np.median(values)) < hi


# ---------------------------------------------------------------- mcnemar_exact


def test_mcnemar_hand_worked():
    assert mcnemar_exact(0, 5) == pytest.approx(2 * 0.5 ** 5)  # 0.0625
    assert mcnemar_exact(5, 0) == pytest.approx(0.0625)
    assert mcnemar_exact(7, 7) == 1.0  # 2 * CDF(7; 14) > 1, capped
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(3, 12) == pytest.approx(sps.binomtest(3, 15, 0.5).pvalue)


# ---------------------------------------------------------------- noninferiority_paired


def test_noninferiority_identical_before_after():
    correct = [i % 5 != 0 for i in range(500)]
    r = noninferiority_paired(correct, correct)
    assert r["diff"] == 0.0 and r["non_inferior"] is True
    assert r["accuracy_before"] == r["accuracy_after"] == pytest.approx(0.8)
    assert (r["b_right_to_wrong"], r["c_wrong_to_right"], r["mcnemar_p"]) == (0, 0, 1.0)
    assert json.loads(json.dumps(r)) == r


def test_noninferiority_ten_point_drop_fails():
    before = [True] * 400 + [False] * 100
    after = [False] * 50 + [True] * 350 + [False] * 100  # 50 right->wrong: -10 points
    r = noninferiority_paired(before, after)
    assert r["diff"] == pytest.approx(-0.1)
    assert r["non_inferior"] is False
    assert r["diff_ci95"][1] < 0
    assert r["mcnemar_p"] < 1e-10


def test_noninferiority_hand_worked_borderline():
    # n = 500, b = 10 (right->wrong), c = 5 (wrong->right): diff = -5/500 = -0.01
    # se = sqrt(15/500 - 0.01**2) / sqrt(500) = sqrt(0.0299) / 22.3607 = 0.0077331
    # lower = -0.01 - 1.644854 * 0.0077331 = -0.022720 < -0.02 -> not non-inferior at margin 0.02
    before = [True] * 10 + [False] * 5 + [True] * 300 + [False] * 185
    after = [False] * 10 + [True] * 5 + [True] * 300 + [False] * 185
    r = noninferiority_paired(before, after)
    assert (r["n"], r["b_right_to_wrong"], r["c_wrong_to_right"]) == (500, 10, 5)
    assert r["lower_bound_one_sided"] == pytest.approx(-0.022720, abs=2e-6)
    se = math.sqrt(0.0299) / math.sqrt(500)
    assert r["diff_ci95"] == pytest.approx([-0.01 - 1.959964 * se, -0.01 + 1.959964 * se], abs=1e-6)
    assert r["non_inferior"] is False
    assert noninferiority_paired(before, after, margin=0.03)["non_inferior"] is True
    # 2 * CDF(5; 15, 0.5) = 2 * (1 + 15 + 105 + 455 + 1365 + 3003) / 2**15 = 9888 / 32768
    assert r["mcnemar_p"] == pytest.approx(9888 / 32768)


def test_noninferiority_errors():
    with pytest.raises(ValueError, match="length mismatch"):
        noninferiority_paired([True, False], [True])
    with pytest.raises(ValueError, match="empty"):
        noninferiority_paired([], [])


# ---------------------------------------------------------------- distinct_n, length_report


def test_distinct_n_hand_made():
    # bigrams: "the dose", "dose is", "is low" | "The dose", "dose is", "is high" -> 6 total, 4 distinct
    assert distinct_n(["the dose is low", "The dose is high"], 2) == pytest.approx(4 / 6)
    # unigrams: 4 + 4 words, distinct {the, dose, is, low, high} = 5
    assert distinct_n(["the dose is low", "the dose is high"], 1) == pytest.approx(5 / 8)
    # n-grams never span two texts: "a b" alone has one bigram, "c" none
    assert distinct_n(["a b", "c"], 2) == 1.0
    assert distinct_n(["single", ""], 2) == 1.0
    assert distinct_n([], 2) == 1.0


def test_length_report_hand_made():
    texts = ["take two tablets daily", "  ", "rest and fluids", "see a doctor see a doctor"]
    finished = [True, True, False, False]
    n_tokens = [64, 1, 64, 20]  # the first stopped on EOS exactly at the limit: finished, not truncated
    r = length_report(texts, finished, n_tokens, max_new_tokens=64)
    assert r["n"] == 4
    assert r["mean_words"] == pytest.approx((4 + 0 + 3 + 6) / 4)
    assert r["median_words"] == pytest.approx(3.5)
    assert r["mean_tokens"] == pytest.approx(149 / 4)
    assert r["eos_rate"] == pytest.approx(0.5)
    assert r["truncated"] == 1  # only the unfinished text at the token limit
    assert r["empty"] == 1
    # bigrams: 3 + 0 + 2 + 5 = 10, the last text repeats "see a" and "a doctor" -> 8 distinct
    assert r["distinct_2"] == pytest.approx(8 / 10)
    assert json.loads(json.dumps(r)) == r


def test_length_report_errors():
    with pytest.raises(ValueError, match="length mismatch"):
        length_report(["a"], [True, False], [1], max_new_tokens=8)
    with pytest.raises(ValueError, match="empty"):
        length_report([], [], [], max_new_tokens=8)
