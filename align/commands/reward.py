"""`clinalign reward train | eval | score`: reward-model training, evaluation report and scoring."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from align.cli_groups import reward_app
from annotation.errors import InputError

console = Console(markup=False)  # plain text: paths and names come from users


def _parse_sets(sets: list[str] | None, extra: list[str]) -> dict:
    """--set key=value pairs and trailing --key value pairs, as train_from_yaml overrides."""
    import yaml

    out: dict = {}
    for item in sets or []:
        if "=" not in item:
            raise InputError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value) if value.strip() else value
    i = 0
    while i < len(extra):
        key = extra[i]
        if not key.startswith("--"):
            raise InputError(f"unexpected argument {key!r} (overrides are --key value)")
        if i + 1 >= len(extra) or extra[i + 1].startswith("--"):
            raise InputError(f"override {key} has no value")
        out[key[2:]] = extra[i + 1]
        i += 2
    return out


@reward_app.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train_cmd(
    ctx: typer.Context,
    config: Annotated[str, typer.Option(help="TRL-native YAML (RewardScriptArguments + RewardConfig + ModelConfig).")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a config key: --set learning_rate=1e-4.")] = None,
) -> None:
    """Train a Bradley–Terry reward model (TRL RewardTrainer). Extra --key value pairs override the YAML."""
    from annotation.manifest import read_manifest
    from reward_models.train import train_from_yaml

    out = train_from_yaml(config, _parse_sets(set_, list(ctx.args)))
    m = read_manifest(out)["metrics"]
    console.print(Text.assemble("reward model written to ", (str(out), "bold"), f": {m['n_used']} pairs trained "
                  f"({m['n_prompt_truncated']} with the prompt cut from the left, {m['n_dropped_too_long']} "
                  f"dropped as too long), {m['global_step']} steps, {m['seconds_per_step']} s/step"
                  + (f", held-out accuracy {m['eval_accuracy']:.3f} on {m['eval_n']} pairs" if "eval_accuracy" in m else "")))


@reward_app.command("eval")
def eval_cmd(
    model: Annotated[str, typer.Option(help="Reward model folder written by `clinalign reward train`.")],
    data: Annotated[str, typer.Option(help="Held-out preference pairs: dataset folder or JSONL.")],
    out: Annotated[str | None, typer.Option(help="Write the metrics as JSON here.")] = None,
    report: Annotated[str | None, typer.Option(help="Folder for report.json + report.md + reliability.png.")] = None,
    rated: Annotated[str | None, typer.Option(help="JSONL of graded answers (prompt/question, answer, rating) "
                                                   "for Spearman agreement.")] = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate only the first N pairs.")] = None,
    rated_limit: Annotated[int | None, typer.Option(help="Use only the first N rated answers.")] = None,
    batch_size: int = 32,
    allow_untrained: Annotated[bool, typer.Option(help="Accept a bare backbone (random head), e.g. as a baseline.")] = False,
) -> None:
    """Held-out pairwise accuracy (bootstrap CI), calibration, length bias, per-source, rating agreement."""
    from reward_models.evaluate import evaluate_reward_model

    r = evaluate_reward_model(model, data, out, limit=limit, rated=rated, rated_limit=rated_limit,
                              report_dir=report, batch_size=batch_size, allow_untrained=allow_untrained)
    lb = r["length_bias"]
    table = Table(title=f"reward model {model} on {data}")
    for col in ("metric", "value"):
        table.add_column(col)
    table.add_row("pairwise accuracy", f"{r['accuracy']:.3f} (95% CI {r['ci95'][0]:.3f}-{r['ci95'][1]:.3f}, n={r['n']})")
    table.add_row("prefer-longer / prefer-shorter", f"{lb['baseline_prefer_longer']:.3f} / {lb['baseline_prefer_shorter']:.3f}")
    table.add_row("ECE", f"{r['calibration']['ece']:.3f}")
    if r.get("ratings"):
        table.add_row("Spearman vs ratings", f"{r['ratings']['spearman']:.3f} (n={r['ratings']['n']})")
    console.print(table)
    for path in (out, report):
        if path:
            console.print(f"written: {path}")


@reward_app.command("score")
def score_cmd(
    model: Annotated[str, typer.Option(help="Reward model folder.")],
    data: Annotated[str, typer.Option(help="JSONL with prompt and response fields.")],
    out: Annotated[str | None, typer.Option(help="Write the rows with a 'reward' field (JSONL); default stdout.")] = None,
    batch_size: int = 32,
    allow_untrained: bool = False,
) -> None:
    """Score (prompt, response) pairs with the reward model's own tokenizer and text format."""
    from annotation.jsonl import read_jsonl, require_str, write_jsonl_atomic
    from reward_models.scoring import RewardScorer

    rows = []
    for line, obj in read_jsonl(data):
        require_str(obj, "prompt", path=data, line=line)
        require_str(obj, "response", path=data, line=line)
        rows.append(obj)
    if not rows:
        raise InputError("no rows to score", path=data)
    scorer = RewardScorer(model, batch_size=batch_size, allow_untrained=allow_untrained)
    rewards = scorer.score([r["prompt"] for r in rows], [r["response"] for r in rows])
    scored = [{**r, "reward": v} for r, v in zip(rows, rewards, strict=True)]
    if out:
        write_jsonl_atomic(out, scored)
        console.print(f"{len(scored)} rewards written to {Path(out)}")
    else:
        for row in scored:
            typer.echo(json.dumps(row, ensure_ascii=False))
