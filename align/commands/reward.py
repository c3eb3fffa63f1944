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
    """Trailing --key value pairs (every recipe's syntax); `--set key=value` is kept for one release."""
    import sys

    import yaml

    from align.recipes.recipe_utils import key_value_args

    out: dict = {}
    for item in sets or []:
        if "=" not in item:
            raise InputError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value) if value.strip() else value
    if sets:
        print("clinalign: --set key=value is deprecated (removed in the next release); use --key value",
              file=sys.stderr)
    return out | key_value_args(extra)


@reward_app.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train_cmd(
    ctx: typer.Context,
    config: Annotated[str, typer.Option(help="TRL-native YAML (RewardScriptArguments + RewardConfig + ModelConfig).")],
    set_: Annotated[list[str] | None, typer.Option("--set", hidden=True,
                                                   help="Deprecated: --set key=value (use --key value).")] = None,
    members: Annotated[int, typer.Option(help="Train an ensemble of this many members (seeds seed, seed+1, ...) "
                                         "into output_dir/member-<i>, with output_dir/ensemble.json.")] = 1,
) -> None:
    """Train a Bradley–Terry reward model (TRL RewardTrainer, or a probe head fitted in closed form on a frozen
    model: reward_architecture probe). Extra --key value pairs override the YAML."""
    from annotation.manifest import read_manifest
    from reward_models.train import train_from_yaml

    overrides = _parse_sets(set_, list(ctx.args))
    if members < 1:
        raise InputError(f"--members must be at least 1, got {members}")
    if members > 1:
        _train_ensemble(config, overrides, members)
        return
    out = train_from_yaml(config, overrides)
    m = read_manifest(out)["metrics"]
    how = (f"probe on layer {m['probe_layer']} (L2 {m['probe_penalty']:g}, cross-validated accuracy "
           f"{m['probe_cv_accuracy']:.3f}), {m['seconds_per_pair']} s/pair" if "probe_layer" in m
           else f"{m['global_step']} steps, {m['seconds_per_step']} s/step")
    console.print(Text.assemble("reward model written to ", (str(out), "bold"), f": {m['n_used']} pairs trained "
                  f"({m['n_prompt_truncated']} with the prompt cut from the left, {m['n_dropped_too_long']} "
                  f"dropped as too long), {how}"
                  + (f", held-out accuracy {m['eval_accuracy']:.3f} on {m['eval_n']} pairs" if "eval_accuracy" in m else "")))


def _train_ensemble(config: str, overrides: dict, members: int) -> None:
    from clinalign_base.manifest import read_manifest
    from reward_models.ensemble import train_ensemble

    out = train_ensemble(config, overrides, members)
    m = read_manifest(out)["metrics"]
    held = m.get("member_eval_accuracy")
    console.print(Text.assemble(f"reward ensemble of {members} members written to ", (str(out), "bold"),
                                f": s/step per member {m.get('member_seconds_per_step')}"
                                + (f", members' held-out accuracy {[round(a, 3) for a in held]}" if held else "")
                                + f"; score it with `clinalign reward score --model {out}` (mean and spread)"))


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
    zero_shot_cosine: Annotated[bool, typer.Option(help="Score with the untrained backbone's cosine(question, "
                                                        "answer) instead (--model builtin:minilm-l6): the "
                                                        "zero-shot baseline, measured the same way.")] = False,
) -> None:
    """Held-out pairwise accuracy (bootstrap CI), calibration, length bias, per-source, rating agreement."""
    from reward_models.evaluate import evaluate_reward_model

    r = evaluate_reward_model(model, data, out, limit=limit, rated=rated, rated_limit=rated_limit,
                              report_dir=report, batch_size=batch_size, allow_untrained=allow_untrained,
                              zero_shot_cosine=zero_shot_cosine)
    lb = r["length_bias"]
    title = "zero-shot cosine of" if zero_shot_cosine else "reward model"
    table = Table(title=f"{title} {model} on {data}")
    for col in ("metric", "value"):
        table.add_column(col)
    table.add_row("pairwise accuracy", f"{r['accuracy']:.3f} (95% CI {r['ci95'][0]:.3f}-{r['ci95'][1]:.3f}, n={r['n']})")
    table.add_row("prefer-longer / prefer-shorter", f"{lb['baseline_prefer_longer']:.3f} / {lb['baseline_prefer_shorter']:.3f}")
    table.add_row("ECE", f"{r['calibration']['ece']:.3f}")
    if r.get("ratings"):
        g = r["ratings"]
        ci = g.get("spearman_ci95") or [float("nan")] * 2
        rho = "n/a" if g["spearman"] is None else f"{g['spearman']:.3f}"
        table.add_row("Spearman vs ratings", f"{rho} (95% CI {ci[0]:.3f}-{ci[1]:.3f}, n={g['n']})")
    console.print(table)
    for path in (out, report):
        if path:
            console.print(f"written: {path}")


@reward_app.command("score")
def score_cmd(
    model: Annotated[str, typer.Option(help="Reward model folder.")],
    data: Annotated[str, typer.Option(help="JSONL with prompt and response fields.")],
    out: Annotated[str | None, typer.Option(help="Write the rows with a 'reward' field (JSONL; an ensemble adds "
                                              "'reward_spread', the std over members); default stdout.")] = None,
    batch_size: int = 32,
    allow_untrained: bool = False,
) -> None:
    """Score (prompt, response) pairs with the reward model's own tokenizer and text format.
    An ensemble folder gives the members' mean reward and their spread."""
    from annotation.jsonl import read_jsonl, require_str, write_jsonl_atomic
    from reward_models.scoring import load_scorer

    rows = []
    for line, obj in read_jsonl(data):
        require_str(obj, "prompt", path=data, line=line)
        require_str(obj, "response", path=data, line=line)
        rows.append(obj)
    if not rows:
        raise InputError("no rows to score", path=data)
    scorer = load_scorer(model, batch_size=batch_size, allow_untrained=allow_untrained)
    rewards = scorer.score([r["prompt"] for r in rows], [r["response"] for r in rows])
    spread = getattr(rewards, "spread", None)
    scored = [{**r, "reward": v} for r, v in zip(rows, rewards, strict=True)]
    if spread is not None:
        scored = [{**r, "reward_spread": s} for r, s in zip(scored, spread, strict=True)]
    if out:
        write_jsonl_atomic(out, scored)
        console.print(f"{len(scored)} rewards written to {Path(out)}")
    else:
        for row in scored:
            typer.echo(json.dumps(row, ensure_ascii=False))


@reward_app.command("exclusions")
def exclusions_cmd(
    against: Annotated[list[str], typer.Option(help="Evaluation JSONL whose answers training must not contain "
                                                     "(read here only, never copied).")],
    out: Annotated[str, typer.Option(help="The exclusion list to write (shipped in data/).")] = "data/reward_eval_overlap.json",
    data_dir: Annotated[str, typer.Option(help="Folder with medquad/, kqa/, pubmedqa/.")] = "data",
    threshold: Annotated[float, typer.Option(help="Share of an answer's 8-word shingles that makes it overlap.")] = 0.3,
) -> None:
    """Which of data/'s answers overlap evaluation answers: a list of their sha256 the medical reward
    recipe leaves out (`dedupe_against`), so training needs no evaluation file on the machine."""
    from reward_models.medical_pairs import write_exclusions

    record = write_exclusions(data_dir, against, out, threshold=threshold)
    console.print(f"{record['n']} answers of {data_dir} overlap {', '.join(Path(p).name for p in against)}: "
                  f"listed in {out}")
