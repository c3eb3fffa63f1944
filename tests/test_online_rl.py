"""GRPO and RLOO through TRL's trainers on the tiny Llama, rewarded by a tiny random BERT reward model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from clinalign_base.errors import ClinalignError, InputError

TINY = "builtin:tiny-llama"
QUESTIONS = ["What is asthma?", "How is type 2 diabetes treated?", "What causes gout?", "Is aspirin safe?",
             "What is a stroke?", "How do statins work?"]


def tiny_bert_rm(out: Path, *, nan: bool = False) -> Path:
    """A random-init 2-layer BERT sequence classifier (1 label) with MiniLM's tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from align.models import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("builtin:minilm-l6"))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=512, num_labels=1)
    model = BertForSequenceClassification(cfg)
    if nan:
        model.classifier.bias.data.fill_(float("nan"))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory) -> Path:
    return tiny_bert_rm(tmp_path_factory.mktemp("rm") / "tiny-bert-rm")


def write_config(tmp_path: Path, algorithm: str, rm: Path, **extra) -> Path:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "question": q}) + "\n" for i, q in enumerate(QUESTIONS)))
    body = {
        "model_name_or_path": TINY, "reward_model_path": str(rm), "allow_untrained_reward": True,
        "prompts_path": str(prompts), "output_dir": str(tmp_path / algorithm), "use_peft": True, "lora_r": 4,
        "lora_alpha": 8, "per_device_train_batch_size": 4, "num_generations": 2, "max_completion_length": 6,
        "max_steps": 2, "beta": 0.05, "learning_rate": 1e-3, "bf16": False, "report_to": "none",
        "logging_steps": 1, "save_strategy": "no", "seed": 0, "gradient_checkpointing": False, **extra}
    cfg = tmp_path / f"{algorithm}.yaml"
    cfg.write_text(f"# clinalign {algorithm} --config {cfg}\n" + "".join(
        f"{k}: {json.dumps(v)}\n" for k, v in body.items()))
    return cfg


@pytest.mark.parametrize("algorithm,reward_via", [("grpo", "scorer"), ("rloo", "scorer"), ("grpo", "model")])
def test_trl_online_rl_trains_with_the_reward_model(tmp_path, rm_dir, algorithm, reward_via):
    from safetensors.torch import load_file

    from align.recipes.online_rl import train_from_yaml
    from clinalign_base.manifest import read_manifest

    cfg = write_config(tmp_path, algorithm, rm_dir, reward_via=reward_via)
    out = train_from_yaml(algorithm, str(cfg))
    assert out == tmp_path / algorithm
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["reward"]) for r in rows)
    name = "clinician_reward" if reward_via == "scorer" else rm_dir.name
    assert f"rewards/{name}/mean" in rows[0]  # the reward came from the route we asked for
    assert (out / "reward_kl_curves.png").is_file()
    adapter = load_file(str(out / "adapter_model.safetensors"))
    assert any(v.abs().max() > 0 for k, v in adapter.items() if "lora_B" in k)  # the policy moved
    manifest = read_manifest(out)
    assert manifest["kind"] == "policy_adapter"
    assert manifest["annotations"]["reward_via"] == reward_via
    assert {i["role"] for i in manifest["inputs"]} >= {"prompts", "base_model", "reward_model", "config"}


def test_scorer_route_gives_the_same_scores_as_ppo(rm_dir):
    """GRPO/RLOO's reward function is the PPO reward source: identical numbers for identical text."""
    from types import SimpleNamespace

    from align.recipes.online_rl import scorer_reward_func
    from align.recipes.ppo.rollout import make_reward_source

    args = SimpleNamespace(reward_function=None, reward_model_path=str(rm_dir), reward_max_length=None,
                           allow_untrained_reward=True, local_rollout_forward_batch_size=4)
    source = make_reward_source(args)
    fn = scorer_reward_func(source)
    completions = [[{"role": "assistant", "content": "Asthma is a chronic airway disease."}],
                   [{"role": "assistant", "content": "Gout comes from uric acid crystals."}]]
    prompts = [[{"role": "user", "content": QUESTIONS[0]}], [{"role": "user", "content": QUESTIONS[2]}]]
    got = fn(prompts, completions, question=[QUESTIONS[0], QUESTIONS[2]])
    assert got == source([QUESTIONS[0], QUESTIONS[2]], ["Asthma is a chronic airway disease.",
                                                        "Gout comes from uric acid crystals."])


def test_batch_not_divisible_by_generations_is_refused(tmp_path, rm_dir):
    from align.recipes.online_rl import train_from_yaml

    cfg = write_config(tmp_path, "grpo", rm_dir, per_device_train_batch_size=3, num_generations=2)
    with pytest.raises(ClinalignError, match="num_generations"):
        train_from_yaml("grpo", str(cfg))
    assert not (tmp_path / "grpo").exists()


def test_empty_prompts_long_prompts_and_nan_reward_are_refused(tmp_path, rm_dir):
    from align.recipes.online_rl import train_from_yaml

    cfg = write_config(tmp_path, "rloo", rm_dir)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(InputError, match="no prompts"):
        train_from_yaml("rloo", str(cfg), {"prompts_path": str(empty)})
    with pytest.raises(InputError, match="longer than 4 tokens"):
        train_from_yaml("rloo", str(cfg), {"max_prompt_length": 4})
    nan_rm = tiny_bert_rm(tmp_path / "nan-rm", nan=True)
    for via in ("scorer", "model"):
        with pytest.raises(ClinalignError, match="non-finite"):
            train_from_yaml("rloo", str(cfg), {"reward_model_path": str(nan_rm), "reward_via": via})
    assert not (tmp_path / "rloo").exists()


def test_cli_runs_grpo_with_overrides(tmp_path, rm_dir):
    from align.cli import main

    cfg = write_config(tmp_path, "grpo", rm_dir, max_steps=5)
    rc = main(["grpo", "--config", str(cfg), "--max_steps", "1", "--output_dir", str(tmp_path / "cli")])
    assert rc == 0
    rows = (tmp_path / "cli" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 1
    assert main(["rloo", "--config", str(tmp_path / "missing.yaml")]) == 2
