"""Core loop commands: generate, annotate import/export/status, sft, dpo, winrate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from align.cli_groups import annotate_app, app
from align.engines import BACKEND_HELP
from align.progress import console, progress_bar
from clinalign_base.errors import ClinalignError

Store = Annotated[str, typer.Option("--store", help="Embedded store (SQLite path) or argilla:<dataset>.")]


@app.command("generate")
def generate_cmd(
    prompts: Annotated[str, typer.Option(help="Prompts: JSONL (prompt|question [, id, reference]) or a saved dataset.")],
    store: Store = "runs/default/feedback.sqlite",
    model: Annotated[str, typer.Option(help="Model A (builtin:*, local path).")] = "builtin:smollm2-135m-instruct",
    model_b: Annotated[str | None, typer.Option(help="Model B; default: model A with a second sampling setting.")] = None,
    adapter_a: Annotated[str | None, typer.Option(help="LoRA adapter folder for model A.")] = None,
    adapter_b: Annotated[str | None, typer.Option(help="LoRA adapter folder for model B.")] = None,
    temperature_a: float = 0.7,
    temperature_b: float = 1.1,
    max_new_tokens: int = 128,
    batch_size: int = 64,
    samples: Annotated[int | None, typer.Option(help="On-policy pairs: sample N answers per prompt from model A at "
                                                "--temperature-a and pair two distinct ones (the round's sampler).")] = None,
    limit: Annotated[int | None, typer.Option(help="Use the first N prompts.")] = None,
    offset: int = 0,
    seed: int = 0,
    source: Annotated[str | None, typer.Option(help="Name of the prompt set (default: file stem).")] = None,
    phi_mode: Annotated[str, typer.Option(help="PHI gate: block (refuse the batch) | redact | withhold "
                                          "(store only the clean pairs).")] = "block",
    out: Annotated[str | None, typer.Option(help="Also write the pairs to this JSONL.")] = None,
    generation_backend: Annotated[str, typer.Option(help=BACKEND_HELP)] = "llamacpp",
) -> None:
    """Generate candidate pairs for prompts (two responses each) into the feedback store."""
    from align.engines import parse_backend
    from align.generate import SamplingSetting, make_pairs
    from align.prompts import load_prompts
    from align.stages import gate_pairs
    from annotation.store import open_store
    from clinalign_base.jsonl import write_jsonl_atomic

    items = load_prompts(prompts, limit=limit, offset=offset)  # validated before any model loads
    parse_backend(generation_backend)
    side_a = SamplingSetting(model, temperature_a, max_new_tokens=max_new_tokens, seed=seed, adapter=adapter_a,
                             backend=generation_backend)
    side_b = SamplingSetting(model_b or model, temperature_b, max_new_tokens=max_new_tokens, seed=seed + 1,
                             adapter=adapter_b, backend=generation_backend)
    if side_a.label == side_b.label and samples is None:
        raise ClinalignError("both sides would be identical: give --model-b or different temperatures")
    name = source or Path(prompts).stem
    if samples is not None:
        pairs, stats = _on_policy_pairs(items, side_a, samples, batch_size, f"generated:{name}", seed)
    else:
        with progress_bar("generating", total=2 * len(items)) as advance:
            pairs, stats = make_pairs(items, side_a, side_b, batch_size=batch_size, source=f"generated:{name}",
                                      progress=advance)
    pairs = gate_pairs(pairs, mode=phi_mode, audit_dir=Path(store).parent)
    s = open_store(store)
    new = s.add_pairs(pairs)
    s.close()
    if out:
        write_jsonl_atomic(out, [p.to_dict() for p in pairs])
    console.print(f"{stats.made} pairs made ({new} new in {store}); skipped {stats.skipped_identical} identical, "
                  f"{stats.skipped_empty} empty; generation backend {side_a.backend}")


def _on_policy_pairs(items, setting, samples: int, batch_size: int, source: str, seed: int):
    from align.generate import Generator, pairs_from_samples

    if samples < 2:
        raise ClinalignError(f"--samples must be at least 2, got {samples}")
    with progress_bar("sampling", total=samples * len(items)) as advance:
        drawn = Generator(setting, batch_size=batch_size).sample([p.text for p in items], samples, advance)
    return pairs_from_samples(items, drawn, setting, source=source, seed=seed)


@annotate_app.command("import")
def import_cmd(file: Annotated[str, typer.Argument(help="Feedback JSONL: pair_id, annotator_id, preference, ...")],
               store: Store = "runs/default/feedback.sqlite") -> None:
    """Import clinicians' feedback from a JSONL file (all lines valid, or nothing is stored)."""
    from annotation.feedback_io import import_feedback
    from annotation.store import open_store

    s = open_store(store)
    try:
        new, dup = import_feedback(s, file)
    finally:
        s.close()
    console.print(f"imported {new} feedback records into {store} ({dup} already stored)")


@annotate_app.command("import-pairs")
def import_pairs_cmd(file: Annotated[str, typer.Argument(help="Pairs JSONL: prompt, response_a, response_b, ...")],
                     store: Store = "runs/default/feedback.sqlite", phi_mode: str = "block") -> None:
    """Import candidate pairs made elsewhere (e.g. another team's generations)."""
    from align.stages import gate_pairs
    from annotation.feedback_io import parse_pairs_file
    from annotation.store import open_store

    pairs = gate_pairs(parse_pairs_file(file), mode=phi_mode, audit_dir=Path(store).parent)
    s = open_store(store)
    try:
        new = s.add_pairs(pairs)
    finally:
        s.close()
    console.print(f"imported {new} new pairs into {store} ({len(pairs) - new} already stored)")


@annotate_app.command("export")
def export_cmd(
    out: Annotated[str, typer.Option(help="Output folder for the preference dataset.")],
    store: Store = "runs/default/feedback.sqlite",
    backend: Annotated[str, typer.Option(help="sqlite | argilla")] = "sqlite",
    dataset: Annotated[str | None, typer.Option(help="Argilla dataset name (backend argilla).")] = None,
    include_simulated: Annotated[bool, typer.Option(help="Use simulated annotators' feedback (demo only).")] = False,
    seeds: Annotated[bool, typer.Option(help="Add expert-reference seed pairs (reference = chosen).")] = False,
    phi_mode: str = "block",
    overwrite: bool = False,
) -> None:
    """Export submitted feedback as a TRL preference dataset (+ agreement report and manifest)."""
    from align.stages import export_preferences

    spec = f"argilla:{dataset}" if backend == "argilla" else store
    if backend == "argilla" and not dataset:
        raise ClinalignError("--backend argilla needs --dataset NAME")
    report = export_preferences(spec, out, include_simulated=include_simulated, include_seeds=seeds,
                                phi_mode=phi_mode, overwrite=overwrite)
    console.print_json(json.dumps(report))


@annotate_app.command("status")
def status_cmd(store: Store = "runs/default/feedback.sqlite") -> None:
    """Counts of pairs, feedback and annotators in a store."""
    from annotation.store import open_store

    s = open_store(store, create=False)
    counts = s.counts()
    s.close()
    table = Table(title=f"feedback store {store}")
    for key in counts:
        table.add_column(key)
    table.add_row(*map(str, counts.values()))
    console.print(table)


@app.command("dpo", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def dpo_cmd(ctx: typer.Context,
            config: Annotated[str, typer.Option(help="TRL-native YAML (DPOConfig + ModelConfig keys).")]) -> None:
    """DPO fine-tuning (TRL DPOTrainer, LoRA) on a preference dataset. Extra --key value pairs override the YAML."""
    from align.dpo import train_from_yaml

    out = train_from_yaml(config, extra_args=list(ctx.args))
    console.print(f"policy adapter written to {out}")


@app.command("sft", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def sft_cmd(ctx: typer.Context,
            config: Annotated[str, typer.Option(help="TRL-native YAML (SFTConfig + ModelConfig keys).")]) -> None:
    """SFT (TRL SFTTrainer, LoRA) on experts' answers and clinicians' corrections. Extra --key value pairs
    override the YAML."""
    from align.sft import train_from_yaml

    out = train_from_yaml(config, extra_args=list(ctx.args))
    console.print(f"SFT adapter written to {out}")


@app.command("winrate")
def winrate_cmd(
    prompts: Annotated[str, typer.Option(help="Held-out prompts JSONL.")],
    reward_model: Annotated[str, typer.Option(help="Reward model folder.")],
    model: str = "builtin:smollm2-135m-instruct",
    adapter: Annotated[str | None, typer.Option(help="Candidate policy's LoRA adapter.")] = None,
    baseline_adapter: Annotated[str | None, typer.Option(help="Baseline's adapter (default: base model).")] = None,
    limit: int = 32,
    offset: int = 0,
    max_new_tokens: int = 128,
    out: str | None = None,
) -> None:
    """Reward-model win-rate of a policy (base + adapter) against a baseline on held-out prompts."""
    from align.evaluate import win_rate
    from align.generate import SamplingSetting
    from align.prompts import load_prompts
    from reward_models.scoring import RewardScorer

    items = load_prompts(prompts, limit=limit, offset=offset)
    cand = SamplingSetting(model, 0.0, max_new_tokens=max_new_tokens, adapter=adapter)
    base = SamplingSetting(model, 0.0, max_new_tokens=max_new_tokens, adapter=baseline_adapter)
    with progress_bar("answering", total=2 * len(items)) as advance:
        result = win_rate(cand, base, items, RewardScorer(reward_model), progress=advance)
    if out:  # the one evaluation record (align/evaluation/record.py): `eval --winrate` and `promote` read it
        from align.evaluation.record import EvaluationRecord
        from clinalign_base.atomic import write_json_atomic

        write_json_atomic(out, EvaluationRecord.from_blocks(result, model=cand.label).to_dict())
    console.print(f"win-rate {result['win_rate']:.3f} (95% CI {result['win_rate_ci95'][0]:.3f}-"
                  f"{result['win_rate_ci95'][1]:.3f}) over {result['n_prompts']} prompts")
