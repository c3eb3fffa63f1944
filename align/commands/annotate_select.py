"""`clinalign annotate select`: put the pairs whose label teaches the reward model most first in the
clinicians' queue (review app and Argilla), by the rule of `annotation.active_selection`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from align.cli_groups import annotate_app
from align.progress import console
from clinalign_base.errors import ClinalignError


@annotate_app.command("select")
def select_cmd(
    store: Annotated[str, typer.Option("--store", help="Embedded store (SQLite path) or argilla:<dataset>.")],
    reward_model: Annotated[str, typer.Option(help="Reward model folder or ensemble folder (`reward train --members k`).")],
    n: Annotated[int, typer.Option("--n", help="How many pairs to put first.")] = 50,
    max_per_prompt: Annotated[int, typer.Option(help="At most this many selected pairs per prompt (near-duplicates "
                                                "count as one prompt).")] = 1,
    disagreement_weight: Annotated[float, typer.Option(help="Weight of the members' disagreement (mutual "
                                                       "information) added to the entropy of the members' mean "
                                                       "P(a); 0 did best in the simulated study.")] = 0.0,
    out: Annotated[str | None, typer.Option(help="Also write the selection (rank, value, P(a), spread) as JSONL.")] = None,
    batch_size: int = 32,
    allow_untrained: Annotated[bool, typer.Option(help="Accept a bare backbone (random head).")] = False,
    dry_run: Annotated[bool, typer.Option(help="Rank and print, but leave the store's queue as it is.")] = False,
) -> None:
    """Rank the store's unlabelled pairs by the expected value of a label and mark the top N first."""
    from annotation.active_selection import Candidate, rank_candidates
    from annotation.jsonl import write_jsonl_atomic
    from annotation.store import PrioritisedStore, open_store
    from clinalign_base.clock import utc_now
    from reward_models.scoring import load_scorer

    if n < 1 or max_per_prompt < 1:
        raise ClinalignError("--n and --max-per-prompt must be at least 1")
    s = open_store(store, create=False)
    try:
        if not isinstance(s, PrioritisedStore):
            raise ClinalignError(f"store {store} cannot keep a label-first order")
        labelled = {fb.pair_id for fb in s.iter_feedback()}
        pairs = [p for p in s.iter_pairs() if p.id not in labelled]
        if not pairs:
            raise ClinalignError(f"store {store} has no unlabelled pairs to select from")
        scorer = load_scorer(reward_model, batch_size=batch_size, allow_untrained=allow_untrained)
        prompts = [p.prompt for p in pairs]
        rewards_a = scorer.score(prompts, [p.response_a for p in pairs])
        rewards_b = scorer.score(prompts, [p.response_b for p in pairs])
        members_a = getattr(rewards_a, "members", [list(rewards_a)])
        members_b = getattr(rewards_b, "members", [list(rewards_b)])
        candidates = [Candidate(p.id, p.prompt, tuple(a[i] - b[i] for a, b in zip(members_a, members_b, strict=True)),
                                group=p.prompt_id) for i, p in enumerate(pairs)]
        ranked = rank_candidates(candidates, n, max_per_group=max_per_prompt,
                                 disagreement_weight=disagreement_weight)
        if not dry_run:
            s.set_priorities({r.pair_id: r.rank for r in ranked}, values={r.pair_id: r.value for r in ranked},
                             selection=f"{reward_model} at {utc_now()}")
    finally:
        s.close()
    if out:
        write_jsonl_atomic(out, [r.to_dict() for r in ranked])
    _print(ranked, len(pairs), len(members_a), store, dry_run)


def _print(ranked, n_pool: int, k: int, store: str, dry_run: bool) -> None:
    table = Table(title=f"label first ({len(ranked)} of {n_pool} unlabelled pairs; {k} reward member(s))")
    for col in ("rank", "pair", "value (bits)", "P(a)", "margin spread"):
        table.add_column(col)
    for r in ranked[:10]:
        table.add_row(str(r.rank), r.pair_id, f"{r.value:.3f}", f"{r.p_a:.3f}", f"{r.margin_std:.3f}")
    console.print(table)
    if dry_run:
        console.print("dry run: the queue was not changed")
    else:
        console.print(f"{len(ranked)} pairs marked first in {store} (review app: served first; Argilla: "
                      "sort by the 'priority' metadata, 1 first); the previous selection was replaced")
