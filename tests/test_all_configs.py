"""Every shipped config parses with its own recipe's parser (torchtune's test of the same name).

A config nobody parses rots silently: a renamed TRL field, a typo, a stage that moved. Each file
under configs/ is matched to exactly one parser here, so a new config without one fails too.
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (REPO / "configs").rglob("*") if p.is_file())


def _parse_round(path: Path, overrides: dict):
    from align.round_config import RoundConfig

    cfg = RoundConfig.load(str(path), overrides)
    for stage_path in (cfg.dpo_config, cfg.ppo_config, cfg.reward_config, cfg.sft_config):
        assert (REPO / stage_path).is_file(), f"{path.name} names {stage_path}, which does not exist"
    # the round's per-stage overrides must parse with the stage's own config, as the round runs them
    # (a key that needs another, e.g. bf16 on CPU without use_cpu, fails here and not after 5 minutes)
    from align.stage_registry import for_config

    for stage_path, stage_overrides in ((cfg.dpo_config, cfg.dpo_overrides), (cfg.ppo_config, cfg.ppo_overrides),
                                        (cfg.reward_config, cfg.reward_overrides), (cfg.sft_config, cfg.sft_overrides)):
        for_config(Path(stage_path).stem).parse(str(REPO / stage_path), dict(stage_overrides))
    return cfg


def _parse_deepspeed(path: Path, overrides: dict):
    from align.distributed.ds_config import validate_json

    return validate_json(path, world_size=8)


def _parse_accelerate(path: Path, overrides: dict):
    from accelerate.commands.config.config_args import ClusterConfig

    return ClusterConfig.from_yaml_file(str(path))


def parser_for(path: Path):
    rel = path.relative_to(REPO / "configs")
    group, stem = rel.parts[0], path.stem
    if group == "deepspeed":
        return _parse_deepspeed
    if group == "accelerate":
        return _parse_accelerate
    if stem.startswith("round"):
        return _parse_round
    from align.stage_registry import for_config

    stage = for_config(stem)  # a stage's configs are named after it: dpo.yaml, reward_medical.yaml
    return None if stage is None else (lambda path, overrides: stage.parse(str(path), overrides))


def overrides_for(path: Path) -> dict:
    """The Me LLaMA configs are GPU configs (bf16); without a GPU they are parsed as if `--use_cpu
    true` were given, which still checks every field name and type."""
    import torch

    if path.parent.name.startswith("me-llama") and path.suffix == ".yaml" and not torch.cuda.is_available():
        return {"use_cpu": True}
    return {}


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(REPO / "configs")) for p in CONFIGS])
def test_every_shipped_config_parses_with_its_recipe(path, monkeypatch):
    monkeypatch.chdir(REPO)
    parser = parser_for(path)
    assert parser is not None, f"configs/{path.relative_to(REPO / 'configs')}: no recipe parses this file"
    if path.suffix in (".yaml", ".yml"):
        assert isinstance(yaml.safe_load(path.read_text()), dict), f"{path}: not a YAML mapping"
    assert parser(path, overrides_for(path)) is not None


def test_the_parsers_refuse_a_misspelt_key(tmp_path, monkeypatch):
    """The all-configs test only means something if a wrong key fails; check it does, per recipe."""
    from clinalign_base.errors import ClinalignError

    monkeypatch.chdir(REPO)
    for name in ("dpo", "sft", "ppo", "grpo", "reward", "round"):
        source = REPO / "configs" / "demo" / f"{name}.yaml"
        bad = tmp_path / f"{name}.yaml"
        bad.write_text(source.read_text() + "\nlearnign_rate: 0.1\n")
        with pytest.raises((ClinalignError, SystemExit, ValueError)):
            parser_for(source)(bad, {})


def _own_dataclasses():
    from align.recipes.dpo import DPOScriptArguments
    from align.recipes.online_rl import TRLOnlineScriptArguments
    from align.recipes.ppo.ppo_config import OnlineRLScriptArguments, PolicyModelArguments, PPOConfig
    from align.recipes.sft import SFTScriptArguments
    from align.round_config import RoundConfig
    from reward_models.train import RewardScriptArguments

    return (DPOScriptArguments, SFTScriptArguments, RewardScriptArguments, OnlineRLScriptArguments,
            TRLOnlineScriptArguments, PolicyModelArguments, PPOConfig, RoundConfig)


def test_every_config_field_of_ours_has_help_text():
    """`--help` is how an ML engineer finds a knob; a field without help is a knob nobody finds.
    Fields inherited from TRL/transformers carry their own help."""
    from transformers import TrainingArguments

    inherited = {f.name for f in fields(TrainingArguments)}
    missing = []
    for cls in _own_dataclasses():
        assert is_dataclass(cls)
        for f in fields(cls):
            if f.name in inherited:
                continue
            if not str(f.metadata.get("help", "")).strip():
                missing.append(f"{cls.__name__}.{f.name}")
    assert not missing, f"config fields without help text: {missing}"
