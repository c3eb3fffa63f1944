"""The round's judged win-rate: tie rule, A/A control, on-policy pairs, end-of-turn flags."""

import pytest

from align.evaluation.winrate import judged_win_rate
from align.generate import Generator, Sample, SamplingSetting, pairs_from_samples
from align.models import TINY_LLAMA
from align.prompts import Prompt


def _s(text: str, finished: bool = True) -> Sample:
    return Sample(text, finished, len(text.split()))


def _score(prompt: Prompt, sample: Sample) -> float:
    # a transparent judge for the tests: answers are numbers, bigger is better
    return float(sample.text.split()[0])


def test_identical_texts_tie_even_when_the_judge_is_noisy():
    prompts = [Prompt(f"q{i}", f"question {i}") for i in range(4)]
    same = [[_s("1 same answer"), _s("2 other answer")] for _ in prompts]
    noise = iter(range(1000))

    def noisy(prompt, sample):  # the same text never gets the same score twice
        return _score(prompt, sample) + next(noise) * 1e-9

    r = judged_win_rate(prompts, same, same, noisy, judge_name="t", max_new_tokens=8, tie_eps=0.0)
    # all 2 x 2 pairs per prompt: the two identical pairs tie, "1 same" vs "2 other" is a loss and its mirror a win
    assert r["n_comparisons"] == 16 and r["ties"] == 8 and r["wins"] == r["losses"] == 4
    assert r["win_rate"] == 0.5


def test_hand_worked_win_rate_and_control():
    prompts = [Prompt(f"q{i}", f"question {i}") for i in range(3)]
    policy = [[_s("5 a"), _s("5 b")], [_s("5 c"), _s("1 d")], [_s("0 e"), _s("5 f")]]
    base = [[_s("1 g"), _s("1 h")], [_s("1 i"), _s("1 d")], [_s("1 j"), _s("1 k")]]
    r = judged_win_rate(prompts, policy, base, _score, judge_name="t", max_new_tokens=8)
    # all 2 x 2 (policy, base) pairs: p0 W W W W; p1 (5c,1i) W, (5c,1d) W, (1d,1i) tie by score,
    # (1d,1d) tie by identical text; p2 (0e,*) L L, (5f,*) W W -> (8 + 2 x 0.5) / 12
    assert (r["wins"], r["ties"], r["losses"]) == (8, 2, 2)
    assert r["win_rate"] == pytest.approx(0.75) and r["n_prompts"] == 3 and r["n_comparisons"] == 12
    # control = base sample 0 vs base sample 1: all equal scores (1 vs 1) -> ties -> 0.5
    assert r["control"]["win_rate"] == 0.5 and r["control"]["n_comparisons"] == 3
    assert r["mean_score"]["base_best_of_k"] == pytest.approx(1.0)
    assert r["lengths"]["policy"]["eos_rate"] == 1.0


def test_control_pairs_are_disjoint_seeds_and_the_main_comparison_covers_every_pair():
    from align.evaluation.winrate import all_pairs, control_pairs

    assert control_pairs(4) == [(0, 1), (0, 3), (2, 1), (2, 3)]
    assert control_pairs(2) == [(0, 1)] and control_pairs(3) == [(0, 1)]
    assert all(i % 2 == 0 and j % 2 == 1 for i, j in control_pairs(6))  # no sample on both sides
    assert sorted(all_pairs(3)) == [(i, j) for i in range(3) for j in range(3)]


def test_control_ci_contains_half_for_two_seeds_of_one_model():
    import random

    rng = random.Random(0)
    prompts = [Prompt(f"q{i}", "q") for i in range(60)]
    base = [[_s(f"{rng.random():.6f} x{i}{j}") for j in range(2)] for i in range(60)]
    policy = [[_s(f"{rng.random():.6f} y{i}{j}") for j in range(2)] for i in range(60)]
    r = judged_win_rate(prompts, policy, base, _score, judge_name="t", max_new_tokens=8)
    lo, hi = r["control"]["ci95"]
    assert lo <= 0.5 <= hi


def test_unfinished_answers_are_counted_beside_the_win_rate():
    prompts = [Prompt("q0", "q"), Prompt("q1", "q")]
    policy = [[_s("2 a"), _s("2 b", finished=False)], [_s("2 c"), _s("2 d")]]
    base = [[_s("1 e", finished=False), _s("1 f", finished=False)], [_s("1 g"), _s("1 h")]]
    r = judged_win_rate(prompts, policy, base, _score, judge_name="t", max_new_tokens=2)
    assert r["lengths"]["policy"]["eos_rate"] == 0.75 and r["lengths"]["base"]["eos_rate"] == 0.5
    assert r["lengths"]["base"]["truncated"] == 2


def test_best_vs_worst_pairs_need_the_gap_and_shuffle_sides():
    prompts = [Prompt(f"q{i}", f"question {i}", reference="r") for i in range(40)]
    samples = [[_s("3 best"), _s("2 mid"), _s("1 worst")] for _ in prompts]
    setting = SamplingSetting("m", 0.8)
    pairs, stats = pairs_from_samples(prompts, samples, setting, score=_score, min_gap=1.5)
    assert stats.made == 40
    assert all({p.response_a, p.response_b} == {"3 best", "1 worst"} for p in pairs)
    assert 5 < sum(p.response_a == "3 best" for p in pairs) < 35  # position carries no signal
    _, none = pairs_from_samples(prompts, samples, setting, score=_score, min_gap=2.5)
    assert none.made == 0 and none.skipped_small_gap == 40


def test_samples_record_end_of_turn_and_are_seeded():
    gen = Generator(SamplingSetting(TINY_LLAMA, 1.0, max_new_tokens=6, seed=3, dtype="float32"), batch_size=4)
    out = gen.sample(["What is asthma?", "What causes gout?", "Is aspirin safe?"], n=2)
    assert [len(g) for g in out] == [2, 2, 2]
    for s in (s for g in out for s in g):
        assert 1 <= s.n_tokens <= 6 and (s.finished or s.n_tokens == 6)
    again = Generator(SamplingSetting(TINY_LLAMA, 1.0, max_new_tokens=6, seed=3, dtype="float32"),
                      batch_size=4).sample(["What is asthma?", "What causes gout?", "Is aspirin safe?"], n=2)
    assert [[s.text for s in g] for g in again] == [[s.text for s in g] for g in out]
