"""Clinical multi-objective reward: rating heads on the reward backbone, and the PPO scalar."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from clinalign_base.errors import InputError
from reward_models.multi_objective import MultiObjectiveSpec, combine, parse_ratings

torch.set_num_threads(1)
ATTRS = ["accuracy", "harm", "completeness"]
TOPICS = ["a sore throat", "a mild fever", "back pain", "a headache", "a cough", "heartburn", "a sprained ankle",
          "hay fever", "a rash", "insomnia", "a cold", "constipation", "earache", "acne"]
SAFE = {"accuracy": 5, "harm": 1, "completeness": 4}
HARMFUL = {"accuracy": 1, "harm": 5, "completeness": 2}


def test_parse_ratings_checks_range_and_names():
    where = {"path": "prefs", "record": "row 3"}
    assert parse_ratings('{"accuracy": 4, "harm": 1}', ATTRS, where=where)[:2] == [4.0, 1.0]
    assert math.isnan(parse_ratings('{"accuracy": 4}', ATTRS, where=where)[2])
    assert all(math.isnan(x) for x in parse_ratings("", ATTRS, where=where))
    with pytest.raises(InputError, match=r"prefs, record row 3: rating 'harm' must be a number 1-5, got 7"):
        parse_ratings('{"harm": 7}', ATTRS, where=where)
    with pytest.raises(InputError, match="unknown rating"):
        parse_ratings('{"politeness": 3}', ATTRS, where=where)
    with pytest.raises(InputError, match="not valid JSON"):
        parse_ratings("{harm: 3", ATTRS, where=where)


def test_combine_harm_is_a_hard_floor():
    spec = MultiObjectiveSpec(weights={"accuracy": 0.5, "completeness": 0.25}, harm_threshold=3.5, harm_penalty=-5.0)
    safe = combine(1.0, {"accuracy": 5.0, "harm": 1.0, "completeness": 3.0}, spec)
    assert safe == pytest.approx(1.0 + 0.5 * 1.0 + 0.25 * 0.0)
    # However preferred (reward 100) and accurate, a predicted-harmful answer gets the penalty.
    harmful = combine(100.0, {"accuracy": 5.0, "harm": 4.0, "completeness": 5.0}, spec)
    assert harmful == pytest.approx(-5.0 - 0.5)
    assert combine(0.0, {"accuracy": 1.0, "harm": 3.4, "completeness": 1.0}, spec) > harmful


def _rows(topics):
    return [{"prompt": f"What should I do about {t}?", "chosen": f"For {t}, rest and see your doctor if it gets worse.",
             "rejected": f"For {t}, take ten times the usual dose of whatever pills you have.",
             "ratings_chosen": json.dumps(SAFE), "ratings_rejected": json.dumps(HARMFUL), "margin": 1.0}
            for t in topics]


def _config(tmp_path: Path, data: Path, **extra) -> Path:
    cfg = {"dataset_path": str(data), "model_name_or_path": "builtin:minilm-l6", "output_dir": str(tmp_path / "mo"),
           "multi_objective": True, "max_length": 64, "eos_token": "[SEP]", "per_device_train_batch_size": 8,
           "learning_rate": 2e-4, "max_steps": 15, "bf16": False, "activation_checkpointing": False,
           "report_to": "none", "save_strategy": "no", "logging_steps": 1, "disable_tqdm": True,
           "num_threads": 1, "seed": 0, **extra}
    path = tmp_path / "mo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_rating_heads_learn_and_scorer_combines(tmp_path):
    from reward_models.scoring import RewardScorer
    from reward_models.train import train_from_yaml

    train = _write(tmp_path / "train.jsonl", _rows(TOPICS[:10]) * 3)
    held = _write(tmp_path / "held.jsonl", _rows(TOPICS[10:]))
    out = train_from_yaml(str(_config(tmp_path, train, eval_dataset_path=str(held))))
    assert (out / "rating_head.safetensors").is_file() and (out / "multi_objective.json").is_file()
    m = json.loads((out / "clinalign_manifest.json").read_text())["metrics"]
    assert m["n_rated_pairs"] == 30 and m["eval_accuracy"] == 1.0

    scorer = RewardScorer(str(out))
    prompt = ["What should I do about a burn?"] * 2
    answers = ["For a burn, rest and see your doctor if it gets worse.",
               "For a burn, take ten times the usual dose of whatever pills you have."]
    safe, harmful = scorer.score_detailed(prompt, answers)
    assert harmful["ratings"]["harm"] > safe["ratings"]["harm"]
    assert safe["ratings"]["accuracy"] > harmful["ratings"]["accuracy"]
    assert m["eval_harm_mae"] < 2.0  # an untrained head sits near 3 for both (MAE 2)

    # Put the harm threshold between the two predictions: the combined scalar must floor the harmful one.
    spec = json.loads((out / "multi_objective.json").read_text())
    spec["harm_threshold"] = (safe["ratings"]["harm"] + harmful["ratings"]["harm"]) / 2
    (out / "multi_objective.json").write_text(json.dumps(spec))
    combined = RewardScorer(str(out)).score(prompt, answers)
    assert combined[1] <= spec["harm_penalty"] < combined[0]
    plain = RewardScorer(str(out), combine=False).score(prompt, answers)
    assert plain[1] > spec["harm_penalty"]  # the preference head alone does not floor it


def test_multi_objective_needs_ratings_and_checks_them(tmp_path):
    from reward_models.train import train_from_yaml

    unrated = [{k: v for k, v in r.items() if not k.startswith("ratings")} for r in _rows(TOPICS[:4])]
    with pytest.raises(InputError, match="no pair carries ratings"):
        train_from_yaml(str(_config(tmp_path, _write(tmp_path / "u.jsonl", unrated))))
    bad = _rows(TOPICS[:4])
    bad[2]["ratings_rejected"] = json.dumps({"harm": 9})
    with pytest.raises(InputError, match=r"record row 2.*'harm' must be a number 1-5"):
        train_from_yaml(str(_config(tmp_path, _write(tmp_path / "b.jsonl", bad))))
    assert not (tmp_path / "mo").exists()
