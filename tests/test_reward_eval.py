"""Reward-model evaluation metrics on hand-worked cases, and the report end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from clinalign_base.errors import InputError
from reward_models import metrics as M

torch.set_num_threads(1)


def test_pair_outcomes_count_ties_half():
    out = M.pair_outcomes([3, 2, 1, 0], [1, 2, 2, -1])
    assert out.tolist() == [1.0, 0.5, 0.0, 1.0]
    assert M.accuracy_with_ci(out, n_boot=200)["accuracy"] == 0.625


def test_bootstrap_ci_brackets_the_mean_and_shrinks_with_n():
    small = [1, 0, 1, 1, 0, 1, 0, 1]  # mean 0.625
    lo, hi = M.bootstrap_ci(small, n_boot=2000, seed=1)
    assert 0.0 <= lo < 0.625 < hi <= 1.0
    lo_big, hi_big = M.bootstrap_ci(small * 50, n_boot=2000, seed=1)
    assert hi_big - lo_big < (hi - lo) / 4  # ~1/sqrt(50) as wide
    assert M.bootstrap_ci([1.0] * 10) == (1.0, 1.0)
    assert M.bootstrap_ci(small, seed=3) == M.bootstrap_ci(small, seed=3)


def test_ece_by_hand():
    # p=0.9 twice (right, confidence 0.9); p=0.6 (right) and p=0.4 (wrong), both at confidence 0.6.
    cal = M.calibration([0.9, 0.9, 0.6, 0.4], n_bins=10)
    # |1.0 - 0.9| * 2/4 + |0.5 - 0.6| * 2/4 = 0.05 + 0.05
    assert cal["ece"] == pytest.approx(0.1)
    filled = [b for b in cal["bins"] if b["n"]]
    assert [(b["n"], b["accuracy"]) for b in filled] == [(2, 0.5), (2, 1.0)]
    perfect = M.calibration([0.75] * 3 + [0.25])  # 3 of 4 right at confidence 0.75
    assert perfect["ece"] == pytest.approx(0.0)


def test_p_chosen_is_bradley_terry():
    assert M.p_chosen([0.0], [0.0])[0] == 0.5
    assert M.p_chosen([2.0], [0.0])[0] == pytest.approx(1 / (1 + math.exp(-2)))


def test_length_baselines_and_subsets():
    # chosen lengths vs rejected: shorter, longer, longer, equal
    lc, lr = [5, 20, 30, 7], [10, 10, 10, 7]
    outcomes = np.array([1.0, 0.0, 1.0, 0.5])
    lb = M.length_bias(outcomes, lc, lr, [1, 0, 2, 0], [0, 1, 1, 0])
    assert lb["baseline_prefer_longer"] == pytest.approx((0 + 1 + 1 + 0.5) / 4)
    assert lb["baseline_prefer_shorter"] == pytest.approx((1 + 0 + 0 + 0.5) / 4)
    assert lb["accuracy_when_chosen_shorter"] == 1.0 and lb["n_chosen_shorter"] == 1
    assert lb["accuracy_when_chosen_longer"] == 0.5 and lb["n_chosen_longer"] == 2


def test_spearman_and_within_prompt_agreement():
    assert M.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert M.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert M.spearman([1, 1, 1], [1, 2, 3]) is None
    # Within each question the ranking is right, but question B's rewards are all lower.
    scores = [5, 6, 7, 1, 2, 3]
    ratings = [1, 2, 3, 2, 3, 4]
    agree = M.rating_agreement(scores, ratings, ["A"] * 3 + ["B"] * 3, n_boot=200)
    assert agree["mean_within_prompt_spearman"] == pytest.approx(1.0)
    assert agree["n_prompts_used"] == 2
    assert agree["spearman"] < 0.5
    assert agree["mean_reward_by_rating"]["3"] == pytest.approx(4.5)


def test_by_source():
    assert M.by_source([1, 0, 1], ["a", "b", "a"]) == {"a": {"accuracy": 1.0, "n": 2},
                                                        "b": {"accuracy": 0.0, "n": 1}}


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_evaluate_report_end_to_end(tmp_path):
    """Untrained MiniLM head (seeded): the report's numbers match an independent scoring pass."""
    from reward_models.evaluate import evaluate_reward_model
    from reward_models.scoring import RewardScorer

    pairs = [{"prompt": f"Question {i}?", "chosen": "Short answer." if i % 2 else "A much longer answer " * 3,
              "rejected": "A long and wordy reply " * 2 if i % 2 else "Brief.", "source": "s1" if i < 4 else "s2"}
             for i in range(8)]
    data = _write(tmp_path / "pairs.jsonl", pairs)
    rated = _write(tmp_path / "rated.jsonl", [{"question": f"Q{i // 3}?", "answer": f"Answer number {i}.",
                                               "rating": 1 + i % 4, "question_id": f"q{i // 3}"} for i in range(9)])
    torch.manual_seed(0)
    result = evaluate_reward_model("builtin:minilm-l6", data, str(tmp_path / "m.json"), allow_untrained=True,
                                   rated=rated, report_dir=str(tmp_path / "report"), n_boot=100)
    torch.manual_seed(0)
    scorer = RewardScorer("builtin:minilm-l6", allow_untrained=True)
    rc = scorer.score([p["prompt"] for p in pairs], [p["chosen"] for p in pairs])
    rr = scorer.score([p["prompt"] for p in pairs], [p["rejected"] for p in pairs])
    assert result["accuracy"] == pytest.approx(float(np.mean(M.pair_outcomes(rc, rr))))
    assert result["n"] == 8 and set(result["by_source"]) == {"s1", "s2"}
    assert result["length_bias"]["baseline_prefer_shorter"] == 0.5
    assert result["ratings"]["n"] == 9 and result["ratings"]["fields"]["group"] == "question_id"
    assert json.loads((tmp_path / "m.json").read_text())["accuracy"] == result["accuracy"]
    md = (tmp_path / "report" / "report.md").read_text()
    assert "prefer the longer answer" in md and "Spearman(reward, rating)" in md
    png = (tmp_path / "report" / "reliability.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_rated_set_errors_name_the_line(tmp_path):
    from reward_models.evaluate import load_rated

    path = _write(tmp_path / "r.jsonl", [{"question": "q", "answer": "a", "rating": 3},
                                         {"question": "q", "answer": "b", "rating": "high"}])
    with pytest.raises(InputError, match=r"r\.jsonl:2.*must be a number"):
        load_rated(path)
    path = _write(tmp_path / "s.jsonl", [{"question": "q", "text": "a", "rating": 3}])
    with pytest.raises(InputError, match="no response field"):
        load_rated(path)


def test_cli_score_and_bad_line(tmp_path, capsys):
    from align.cli import main

    data = _write(tmp_path / "s.jsonl", [{"prompt": "Is ibuprofen safe with warfarin?", "response": "Ask your doctor."},
                                         {"prompt": "q?", "response": "An answer."}])
    out = tmp_path / "scored.jsonl"
    assert main(["reward", "score", "--model", "builtin:minilm-l6", "--allow-untrained", "--data", data,
                 "--out", str(out)]) == 0
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(scored) == 2 and all(math.isfinite(r["reward"]) for r in scored)
    assert scored[0]["prompt"].startswith("Is ibuprofen")
    bad = _write(tmp_path / "b.jsonl", [{"prompt": "q?", "response": "a"}, {"prompt": "q?"}])
    assert main(["reward", "score", "--model", "builtin:minilm-l6", "--allow-untrained", "--data", bad]) == 2
    assert "missing field 'response'" in capsys.readouterr().err.replace("\n", "")
    assert main(["reward", "score", "--model", "builtin:minilm-l6", "--data", data]) == 2  # not a reward model
