"""`clinalign generate`: on-policy candidate pairs from the current policy, through the PHI gate, into a store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from align.cli_groups import Store, app
from align.engines import BACKEND_HELP
from align.progress import progress_bar
from clinalign_base.errors import ClinalignError

stdout = Console(markup=False)  # results on stdout; progress and logs on stderr (align.progress)


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
    stdout.print(f"{stats.made} pairs made ({new} new in {store}); skipped {stats.skipped_identical} identical, "
                  f"{stats.skipped_empty} empty; generation backend {side_a.backend}")


def _on_policy_pairs(items, setting, samples: int, batch_size: int, source: str, seed: int):
    from align.generate import Generator, pairs_from_samples

    if samples < 2:
        raise ClinalignError(f"--samples must be at least 2, got {samples}")
    with progress_bar("sampling", total=samples * len(items)) as advance:
        drawn = Generator(setting, batch_size=batch_size).sample([p.text for p in items], samples, advance)
    return pairs_from_samples(items, drawn, setting, source=source, seed=seed)
