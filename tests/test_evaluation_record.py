"""The one evaluation record: written by the round, `winrate` and `eval`; read by `promote` and the card."""

from __future__ import annotations

import json

import pytest

from align.evaluation.promote import decide, read_eval
from align.evaluation.record import SCHEMA, EvaluationRecord, read_record, record_from_json
from align.evaluation.winrate import judged_win_rate
from align.generate import Sample
from align.prompts import Prompt
from clinalign_base.errors import InputError
from clinalign_base.manifest import build_manifest

# The keys issue 11 fixed for a round's winrate.json (and the win_rate block of evaluation.json).
WINRATE_CONTRACT = {"judge", "win_rate", "ci95", "p_value", "n_prompts", "n_comparisons", "ties",
                    "train_prompt_overlap", "control", "lengths"}
PAIRED = {"n": 50, "accuracy_before": 0.52, "accuracy_after": 0.50, "diff": -0.02, "lower_bound_one_sided": -0.05,
          "margin": 0.02, "alpha": 0.05, "mcnemar_p": 0.5, "non_inferior": False, "items_sha256": "abc"}
TYPED = ("win_rate", "win_rate_ci95", "n_prompts", "accuracy", "accuracy_before", "n", "items_sha256",
         "pubmedqa_non_inferior", "pubmedqa_lower_bound", "pubmedqa_margin")


def _judged() -> dict:
    """A real judged win-rate result (the round's winrate.json), from a transparent judge."""
    prompts = [Prompt(f"q{i}", f"question {i}") for i in range(6)]
    policy = [[Sample(f"{3 + i % 2} answer", True, 2), Sample("2 answer", True, 2)] for i in range(6)]
    base = [[Sample("1 base", True, 2), Sample("2 base", False, 2)] for _ in range(6)]
    return judged_win_rate(prompts, policy, base, lambda p, s: float(s.text.split()[0]), judge_name="judge v1",
                           max_new_tokens=8, tie_eps=0.0, train_prompt_overlap=0, seed=0,
                           proxy=lambda texts, answers: [float(a.split()[0]) for a in answers], proxy_name="rm")


def _round_evaluation() -> dict:
    from align.round import promotion_verdict

    evaluation = {"win_rate": _judged(), "pubmedqa": dict(PAIRED)}
    evaluation["promotion"] = promotion_verdict(evaluation, min_win_rate=0.5)
    return evaluation


def _typed(rec: EvaluationRecord) -> tuple:
    return tuple(getattr(rec, name) for name in TYPED)


def test_the_round_record_keeps_every_block_and_the_winrate_contract():
    evaluation = _round_evaluation()
    written = EvaluationRecord.from_blocks(**evaluation).to_dict()
    assert written == {"schema": SCHEMA, **evaluation}
    assert WINRATE_CONTRACT <= set(written["win_rate"]) and {"win_rate", "ci95"} <= set(written["win_rate"]["control"])


def test_flat_metrics_are_the_round_manifest_keys():
    from align.round import _flat_eval

    evaluation = _round_evaluation()
    flat = EvaluationRecord.from_blocks(**evaluation).metrics()
    assert _flat_eval(evaluation).items() <= flat.items()
    assert flat["pubmedqa_lower_bound"] == -0.05 and flat["pubmedqa_margin"] == 0.02
    # a prior-aligned paired test carries its raw reading: both reach the manifest and the card
    aligned = dict(PAIRED, gate="prior_aligned", raw={"accuracy_after": 0.46, "non_inferior": False})
    evaluation["pubmedqa"] = aligned
    flat = EvaluationRecord.from_blocks(**evaluation).metrics()
    assert _flat_eval(evaluation).items() <= flat.items()
    assert (flat["pubmedqa_gate"], flat["pubmedqa_raw_accuracy_after"], flat["pubmedqa_raw_non_inferior"]) == \
        ("prior_aligned", 0.46, False)


def test_round_trips_through_the_file_and_the_manifest(tmp_path):
    rec = EvaluationRecord.from_blocks(**_round_evaluation())
    (tmp_path / "evaluation.json").write_text(json.dumps(rec.to_dict()))
    again = read_record(tmp_path / "evaluation.json")
    assert _typed(again) == _typed(rec) and again.to_dict() == rec.to_dict()
    assert _typed(EvaluationRecord.from_metrics(rec.metrics())) == _typed(rec)


@pytest.mark.parametrize(("data", "expected"), [
    # a round's evaluation.json before the record (no schema), paired PubMedQA
    ({"win_rate": {"win_rate": 0.6, "ci95": [0.53, 0.7], "n_prompts": 64}, "pubmedqa": PAIRED},
     (0.6, [0.53, 0.7], 64, 0.50, 0.52, 50, "abc", False, -0.05, 0.02)),
    # an early round's evaluation.json: ci under win_rate_ci95, PubMedQA as before/after
    ({"win_rate": {"win_rate": 0.3, "win_rate_ci95": [0.1, 0.5], "n_prompts": 16},
      "pubmedqa": {"before": {"accuracy": 0.5, "n": 50}, "after": {"accuracy": 0.49, "n": 50}}},
     (0.3, [0.1, 0.5], 16, 0.49, 0.5, 50, None, None, None, None)),
    # `clinalign winrate --out` before the record: flat
    ({"judge": "reward model (proxy)", "win_rate": 0.625, "win_rate_ci95": [0.4, 0.8], "n_prompts": 8},
     (0.625, [0.4, 0.8], 8, None, None, None, None, None, None, None)),
    # `clinalign eval --out` before the record: a manifest with flat metrics and the full result
    (build_manifest("evaluation", "e", metrics={"pubmedqa_accuracy": 0.61, "pubmedqa_n": 500,
                                                "pubmedqa_items_sha256": "s", "win_rate": 0.58, "n_prompts": 64},
                    config={"model": "m"}) | {"pubmedqa": {"accuracy": 0.61, "n": 500, "items_sha256": "s"}},
     (0.58, None, 64, 0.61, None, 500, "s", None, None, None)),
])
def test_every_shape_clinalign_wrote_is_read(data, expected):
    assert _typed(record_from_json(data)) == expected


def test_an_evaluation_folder_prefers_the_record_and_falls_back_to_its_manifest(tmp_path):
    rec = EvaluationRecord.from_blocks(**_round_evaluation())
    flat = {k: v for k, v in rec.metrics().items() if not k.startswith(("pubmedqa_lower", "pubmedqa_margin"))}
    (tmp_path / "clinalign_manifest.json").write_text(json.dumps(build_manifest("evaluation", "e", metrics=flat)))
    (tmp_path / "evaluation.json").write_text(json.dumps(rec.to_dict()))
    got = read_eval(tmp_path)
    assert got.path.endswith("evaluation.json") and got.pubmedqa_lower_bound == -0.05
    d = decide(got, None)
    assert not d.promoted and any("lower bound -0.050" in r for r in d.reasons)
    (tmp_path / "evaluation.json").unlink()
    got = read_eval(tmp_path)  # an older round: only the manifest, no lower bound recorded
    assert got.path.endswith("clinalign_manifest.json") and got.pubmedqa_lower_bound is None
    assert any("lower bound ?" in r for r in decide(got, None).reasons)


def test_winrate_output_feeds_eval_and_promote(tmp_path):
    from align.commands.evaluate import _read_winrate

    proxy = {"judge": "reward model (proxy)", "win_rate": 0.7, "ci95": [0.6, 0.8], "win_rate_ci95": [0.6, 0.8],
             "p_value": 0.01, "n_prompts": 32, "n_comparisons": 32, "ties": 0}
    path = tmp_path / "winrate.json"
    path.write_text(json.dumps(EvaluationRecord.from_blocks(proxy, model="builtin:x").to_dict()))
    assert _read_winrate(path) == proxy
    assert read_eval(path).win_rate_ci95 == [0.6, 0.8]
    path.write_text(json.dumps({"schema": SCHEMA, "win_rate": {"win_rate": 1.5}}))
    with pytest.raises(InputError, match=r"no win_rate in \[0, 1\]"):
        _read_winrate(path)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        read_eval(path)


def test_the_model_card_reads_the_record(tmp_path):
    from align.evaluation.model_card import render_card
    from tests.test_model_card import make_round

    run = make_round(tmp_path)
    (run / "evaluation" / "evaluation.json").write_text(json.dumps(
        EvaluationRecord.from_blocks(**_round_evaluation()).to_dict()))
    card = render_card(run)
    assert "judged by judge" in card and "A/A control" in card  # only the record has the judged figures
    assert "| 0.520 | 0.500 |" in card
