"""`clinalign sft | dpo | ppo | grpo | rloo`: policy training recipes (YAML config, trailing --key value overrides)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from align.cli_groups import app

EXTRA = {"allow_extra_args": True, "ignore_unknown_options": True}

stdout = Console(markup=False)  # results on stdout; progress and logs on stderr (align.progress)


Config = Annotated[str, typer.Option(help="YAML whose keys are the config dataclass fields (TRL style).")]


@app.command("sft", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def sft_cmd(ctx: typer.Context,
            config: Annotated[str, typer.Option(help="TRL-native YAML (SFTConfig + ModelConfig keys).")]) -> None:
    """SFT (TRL SFTTrainer, LoRA) on experts' answers and clinicians' corrections. Extra --key value pairs
    override the YAML."""
    from align.recipes.sft import train_from_yaml

    out = train_from_yaml(config, extra_args=list(ctx.args))
    stdout.print(f"SFT adapter written to {out}")


@app.command("dpo", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def dpo_cmd(ctx: typer.Context,
            config: Annotated[str, typer.Option(help="TRL-native YAML (DPOConfig + ModelConfig keys).")]) -> None:
    """DPO fine-tuning (TRL DPOTrainer, LoRA) on a preference dataset. Extra --key value pairs override the YAML."""
    from align.recipes.dpo import train_from_yaml

    out = train_from_yaml(config, extra_args=list(ctx.args))
    stdout.print(f"policy adapter written to {out}")


@app.command("ppo", context_settings=EXTRA)
def ppo_cmd(ctx: typer.Context, config: Config) -> None:
    """PPO against the clinicians' reward model (LoRA policy, reference = adapter off). Resumable."""
    from align.recipes.ppo.ppo_trainer import train_from_yaml

    out = train_from_yaml(config, extra_args=list(ctx.args))
    stdout.print(f"PPO policy, value head, metrics and reward/KL curves written to {out}")


@app.command("grpo", context_settings=EXTRA)
def grpo_cmd(ctx: typer.Context, config: Config) -> None:
    """GRPO (TRL GRPOTrainer) with the same reward model and config conventions as `clinalign ppo`."""
    from align.recipes.online_rl import train_from_yaml

    out = train_from_yaml("grpo", config, extra_args=list(ctx.args))
    stdout.print(f"GRPO policy and metrics written to {out}")


@app.command("rloo", context_settings=EXTRA)
def rloo_cmd(ctx: typer.Context, config: Config) -> None:
    """RLOO (TRL RLOOTrainer) with the same reward model and config conventions as `clinalign ppo`."""
    from align.recipes.online_rl import train_from_yaml

    out = train_from_yaml("rloo", config, extra_args=list(ctx.args))
    stdout.print(f"RLOO policy and metrics written to {out}")
