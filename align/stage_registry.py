"""The one list of training stages: what each is called, which recipe runs it, how its YAML parses.

Launch, the DeepSpeed planner and config validation, the round, the all-configs test and the CLI
read this table; nothing else lists stage names. Recipes are named by import path ("module:attr"),
so reading the table imports no torch and no TRL.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from clinalign_base.errors import ClinalignError


@dataclass(frozen=True)
class Stage:
    name: str
    command: tuple[str, ...]   # the `clinalign` sub-command that runs it (what launch puts after the launcher)
    parser: str                # "module:function"(config_path, overrides) -> its parsed dataclasses
    config_class: str          # "module:Class": the TrainingArguments subclass the HF/DeepSpeed glue reads
    online: bool = False       # generates rollouts while training (PPO-style memory and batch accounting)
    sequences_per_example: int = 1  # sequences in one forward per example (preference pairs: 2)
    head: str = "lm"           # "lm" or "score" (a reward model's one-output head)
    resumable: bool = True     # --resume_from_checkpoint continues from the output folder's checkpoints
    distributed: bool = True   # planned, validated and launched on a cluster (`clinalign launch`)
    round_policy: bool = False  # may be a round's policy stage (`policy_stage` in round.yaml)
    algorithm: str | None = None  # for the stages sharing one recipe (align.recipes.online_rl): its algorithm

    def parse(self, config_path: str | None, overrides: dict[str, Any] | None = None) -> Any:
        fn = load(self.parser)
        if self.algorithm:
            return fn(self.algorithm, config_path, overrides)
        return fn(config_path, overrides)

    def training_arguments_class(self) -> type:
        return load(self.config_class)


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("sft", ("sft",), "align.recipes.sft:parse", "trl:SFTConfig", distributed=False),
    Stage("reward", ("reward", "train"), "reward_models.train:parse_config", "trl:RewardConfig",
          sequences_per_example=2, head="score"),
    Stage("dpo", ("dpo",), "align.recipes.dpo:parse", "trl:DPOConfig", sequences_per_example=2, round_policy=True),
    Stage("ppo", ("ppo",), "align.recipes.ppo.ppo_config:parse_ppo_config", "align.recipes.ppo.ppo_config:PPOConfig",
          online=True, round_policy=True),
    Stage("grpo", ("grpo",), "align.recipes.online_rl:parse", "trl:GRPOConfig", online=True, algorithm="grpo"),
    Stage("rloo", ("rloo",), "align.recipes.online_rl:parse", "trl:RLOOConfig", online=True, algorithm="rloo"),
)}


def load(spec: str) -> Any:
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def for_config(stem: str) -> Stage | None:
    """The stage a config file belongs to, by its name: dpo.yaml, reward_medical.yaml (None: not a stage)."""
    return STAGES.get(stem) or next((s for name, s in STAGES.items() if stem.startswith(name + "_")), None)


def names(**where: bool) -> tuple[str, ...]:
    """Stage names whose flags match, in table order: names(distributed=True, online=True)."""
    return tuple(s.name for s in STAGES.values() if all(getattr(s, k) == v for k, v in where.items()))


def get(name: str, **where: bool) -> Stage:
    """The stage called `name` (and matching `where`), or an error listing the ones that would do."""
    stage = STAGES.get(name)
    if stage is None or any(getattr(stage, k) != v for k, v in where.items()):
        raise ClinalignError(f"unknown stage '{name}'; use one of {', '.join(names(**where))}")
    return stage
