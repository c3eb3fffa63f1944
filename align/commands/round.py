"""`clinalign demo`: one full round of the loop on embedded defaults."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from align.cli_groups import app

out = Console(markup=False)  # the summary is the command's result: stdout (plain text: names, paths, lists)


def _run(config: str | None, overrides: dict) -> None:
    from align.round import Round, summary_table
    from align.round_config import RoundConfig

    cfg = RoundConfig.load(config, overrides)
    manifest = Round(cfg, config).run()
    out.print(summary_table(manifest))
    out.print(Text.assemble("round manifest: ", (str(manifest), "bold")))


@app.command("demo", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def demo_cmd(
    ctx: typer.Context,
    config: Annotated[str, typer.Option(help="Round config YAML.")] = "configs/demo/round.yaml",
    output_dir: Annotated[str | None, typer.Option(help="Where the round's artefacts go.")] = None,
    policy_stage: Annotated[str | None, typer.Option(help="dpo (default) or ppo.")] = None,
    rated: Annotated[str | None, typer.Option(help="Experts' graded answers (JSONL): the round reports its reward "
                                              "model's Spearman against them (read for evaluation only).")] = None,
) -> None:
    """One full round on CPU: MedQuAD/K-QA prompts → pairs → simulated feedback → reward model → DPO → eval.

    Any round.yaml key can be overridden with a trailing --key value (e.g. --test_prompts 48)."""
    from align.recipes.recipe_utils import key_value_args

    overrides = key_value_args(list(ctx.args), typed=True)
    overrides |= {k: v for k, v in {"output_dir": output_dir, "policy_stage": policy_stage,
                                    "reward_rated": rated}.items() if v}
    _run(config, overrides)
