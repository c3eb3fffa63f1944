"""Reward-model training through the real TRL RewardTrainer on the real MiniLM backbone (tiny runs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from clinalign_base.errors import ClinalignError, InputError
from reward_models.formatting import RewardFormat, encode, prepare_tokenizer
from reward_models.train import train_from_yaml

torch.set_num_threads(1)

TOPICS = ["a sore throat", "a mild fever", "back pain", "a headache", "a cough", "heartburn", "a sprained ankle",
          "hay fever", "a rash", "insomnia", "a cold", "constipation", "earache", "acne", "dry eyes", "a bruise"]


def _pairs(topics: list[str]) -> list[dict]:
    """A trivially learnable preference: the chosen answer advises seeing a clinician, the rejected mocks."""
    return [{"prompt": f"What should I do about {t}?",
             "chosen": f"For {t}, rest and see your doctor if it gets worse.",
             "rejected": f"lol who cares about {t}, whatever"} for t in topics]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _config(tmp_path: Path, data: Path, **extra) -> Path:
    cfg = {"dataset_path": str(data), "model_name_or_path": "builtin:minilm-l6", "output_dir": str(tmp_path / "rm"),
           "max_length": 64, "eos_token": "[SEP]", "per_device_train_batch_size": 8, "learning_rate": 1e-4,
           "max_steps": 12, "bf16": False, "activation_checkpointing": False, "report_to": "none",
           "save_strategy": "no", "logging_steps": 1, "disable_tqdm": True, "num_threads": 1, "seed": 0, **extra}
    path = tmp_path / "reward.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def minilm_tok():
    from transformers import AutoTokenizer

    from reward_models.backbones import resolve_backbone

    return prepare_tokenizer(AutoTokenizer.from_pretrained(resolve_backbone("builtin:minilm-l6")),
                             RewardFormat(eos_token="[SEP]"))


def test_learns_trivial_preference_and_scorer_agrees(tmp_path):
    from reward_models.evaluate import evaluate_reward_model
    from reward_models.scoring import RewardScorer

    train = _write_jsonl(tmp_path / "train.jsonl", _pairs(TOPICS[:12]) * 3)
    held = _write_jsonl(tmp_path / "held.jsonl", _pairs(TOPICS[12:]))
    out = train_from_yaml(str(_config(tmp_path, train, eval_dataset_path=str(held))))

    manifest = json.loads((out / "clinalign_manifest.json").read_text())
    assert manifest["kind"] == "reward_model"
    assert {i["role"] for i in manifest["inputs"]} >= {"config", "train_data", "eval_data"}
    assert manifest["metrics"]["n_used"] == 36 and manifest["metrics"]["global_step"] == 12
    assert manifest["metrics"]["eval_accuracy"] == 1.0  # unseen topics
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".rm.")]  # temp folder renamed away

    scorer = RewardScorer(str(out))
    good = scorer.score(["What should I do about a burn?"], ["Cool it under water and see your doctor if it blisters."])
    bad = scorer.score(["What should I do about a burn?"], ["lol who cares, whatever"])
    assert good[0] > bad[0]
    result = evaluate_reward_model(str(out), str(held), str(tmp_path / "eval.json"))
    assert result["accuracy"] == 1.0 and result["n"] == 4
    assert json.loads((tmp_path / "eval.json").read_text())["accuracy"] == 1.0


def test_margin_column_enters_the_loss(tmp_path):
    rows = [dict(r, margin=3.0) for r in _pairs(TOPICS[:8])]
    data = _write_jsonl(tmp_path / "m.jsonl", rows)
    cfg = _config(tmp_path, data, max_steps=2, learning_rate=1e-6)
    with_margin = json.loads((train_from_yaml(str(cfg)) / "clinalign_manifest.json").read_text())["metrics"]
    without = json.loads((train_from_yaml(str(cfg), {"use_margin": False}) / "clinalign_manifest.json")
                         .read_text())["metrics"]
    # At init r_c - r_r is ~0: -logsigmoid(0 - 3) ~ 3.05 with the margin, -logsigmoid(0) ~ 0.69 without.
    assert with_margin["train_loss"] > 2.5
    assert without["train_loss"] < 1.0


def test_long_prompt_is_cut_from_the_left_not_dropped(tmp_path, minilm_tok):
    fmt = RewardFormat(eos_token="[SEP]", max_length=32, min_prompt_tokens=4)
    prompt = " ".join(f"word{i}" for i in range(200)) + " final question here?"
    enc = encode(minilm_tok, prompt, "short answer", fmt)
    assert len(enc.input_ids) == 32 and enc.prompt_cut and not enc.too_long
    text = minilm_tok.decode(enc.input_ids)
    assert text.startswith("[CLS]") and "final question here?" in text and text.rstrip().endswith("short answer [SEP] [SEP]")
    assert "word0 " not in text

    long_response = " ".join(["very long answer"] * 40)
    too_long = encode(minilm_tok, "q?", long_response, fmt)
    assert too_long.too_long and too_long.response_cut and len(too_long.input_ids) <= 32

    rows = _pairs(TOPICS[:6]) + [{"prompt": prompt, "chosen": "see a doctor", "rejected": "ignore it"},
                                 {"prompt": "q?", "chosen": long_response, "rejected": "no"}]
    out = train_from_yaml(str(_config(tmp_path, _write_jsonl(tmp_path / "t.jsonl", rows), max_length=32,
                                      min_prompt_tokens=4, max_steps=1)))
    m = json.loads((out / "clinalign_manifest.json").read_text())["metrics"]
    assert (m["n_pairs"], m["n_used"], m["n_dropped_too_long"], m["n_prompt_truncated"]) == (8, 7, 1, 1)


def test_encoding_matches_trl_tokenization(minilm_tok):
    """Untruncated pairs: our ids are exactly what TRL's RewardTrainer would build itself."""
    from types import SimpleNamespace

    from datasets import Dataset
    from trl import RewardTrainer

    fmt = RewardFormat(eos_token="[SEP]", max_length=512)
    rows = _pairs(TOPICS[:4])
    ds = Dataset.from_list([{"prompt": r["prompt"] + fmt.separator, "chosen": r["chosen"],
                             "rejected": r["rejected"]} for r in rows])
    args = SimpleNamespace(dataset_num_proc=None, max_length=None)
    trl_ds = RewardTrainer._prepare_dataset(None, ds, minilm_tok, args, "train")
    for row, ref in zip(rows, trl_ds, strict=True):
        assert encode(minilm_tok, row["prompt"], row["chosen"], fmt).input_ids == ref["chosen_ids"]
        assert encode(minilm_tok, row["prompt"], row["rejected"], fmt).input_ids == ref["rejected_ids"]


@pytest.mark.parametrize("content, problem", [
    ('{"prompt": "q", "chosen": "a"}\n', "missing field 'rejected'"),
    ('{"prompt": "q", "chosen": "same", "rejected": "same"}\n', "identical"),
    ('{"prompt": "q", "chosen": "", "rejected": "b"}\n', "empty"),
    ('{"prompt": "q", "chosen": "a", "rejected": "b"}\n{"prompt": "q", "chosen": "a", \n', "invalid JSON"),
    (b'{"prompt": "q", "chosen": "\xff", "rejected": "b"}\n', "UTF-8"),
])
def test_bad_input_names_file_and_line_and_writes_nothing(tmp_path, content, problem):
    data = tmp_path / "bad.jsonl"
    (data.write_bytes if isinstance(content, bytes) else data.write_text)(content)
    with pytest.raises(InputError, match=problem) as err:
        train_from_yaml(str(_config(tmp_path, data)))
    assert str(data) in str(err.value)
    if problem in ("invalid JSON",):
        assert f"{data}:2" in str(err.value)
    assert not (tmp_path / "rm").exists()


def test_dataset_folder_without_needed_columns(tmp_path):
    from datasets import Dataset

    folder = tmp_path / "prefs"
    Dataset.from_list([{"prompt": "q", "answer": "a"}]).save_to_disk(str(folder))
    with pytest.raises(InputError, match="lacks columns"):
        train_from_yaml(str(_config(tmp_path, folder)))


def test_bad_config_keys_and_overrides(tmp_path):
    data = _write_jsonl(tmp_path / "ok.jsonl", _pairs(TOPICS[:4]))
    with pytest.raises(InputError, match="unknown keys.*not_a_key"):
        train_from_yaml(str(_config(tmp_path, data, not_a_key=1)))
    with pytest.raises(InputError, match="invalid override"):
        train_from_yaml(str(_config(tmp_path, data)), {"learning_rate": "fast"})
    with pytest.raises(InputError, match="config file not found"):
        train_from_yaml(str(tmp_path / "nope.yaml"))


def test_failure_mid_training_keeps_previous_model_and_leaves_no_temp(tmp_path, monkeypatch):
    from trl import RewardTrainer

    data = _write_jsonl(tmp_path / "ok.jsonl", _pairs(TOPICS[:4]))
    previous = tmp_path / "rm"
    previous.mkdir()
    (previous / "marker").write_text("old model")

    def boom(self, *a, **k):  # fault injection: the trainer dies after the temp folder exists
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(RewardTrainer, "train", boom)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_from_yaml(str(_config(tmp_path, data)))
    assert (previous / "marker").read_text() == "old model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.jsonl", "reward.yaml", "rm"]


def test_scorer_refuses_non_reward_model_and_nan(tmp_path):
    from reward_models.scoring import RewardScorer

    with pytest.raises(ClinalignError, match="not a reward model"):
        RewardScorer("builtin:minilm-l6")
    scorer = RewardScorer("builtin:minilm-l6", allow_untrained=True)
    with torch.no_grad():
        scorer.model.classifier.weight.fill_(float("nan"))
    with pytest.raises(ValueError, match="non-finite"):
        scorer.score(["q"], ["a"])


def test_cli_bad_input_exits_nonzero(tmp_path, capsys):
    from align.cli import main

    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\nnot json\n')
    assert main(["reward", "train", "--config", str(_config(tmp_path, data))]) == 2
    assert f"{data}:2" in capsys.readouterr().err.replace("\n", "")
    assert not (tmp_path / "rm").exists()


@pytest.mark.parametrize("merge", [True, False])
def test_lora_option_trains_and_scores(tmp_path, merge):
    """The LoRA path used for large backbones (Me LLaMA), exercised on MiniLM: merged or as an adapter."""
    from reward_models.scoring import RewardScorer

    train = _write_jsonl(tmp_path / "train.jsonl", _pairs(TOPICS[:12]) * 2)
    out = train_from_yaml(str(_config(tmp_path, train, use_peft=True, lora_r=8, lora_alpha=16,
                                      lora_target_modules=["query", "value"], merge_lora=merge,
                                      learning_rate=1e-3, max_steps=6)))
    assert (out / "adapter_config.json").is_file() != merge
    scorer = RewardScorer(str(out))
    rewards = scorer.score(["What should I do about a burn?"] * 2,
                           ["For a burn, rest and see your doctor if it gets worse.", "lol who cares about a burn, whatever"])
    assert rewards[0] > rewards[1]
