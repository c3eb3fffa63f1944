"""`clinalign annotate ...`: clinicians' feedback in and out of a store (SQLite or Argilla): import, push,
users, status, agreement, export, and active selection of the pairs to label first."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from align.cli_groups import Store, annotate_app
from clinalign_base.atomic import write_json_atomic
from clinalign_base.errors import ClinalignError, InputError

stdout = Console(markup=False)  # results on stdout (plain text: names come from users and the server)


DataDir = Annotated[str | None, typer.Option("--data-dir", help="Stack data dir (default $CLINALIGN_ARGILLA_HOME "
                                                                "or ~/.cache/clinalign/argilla).")]


DEFAULT_STORE = "runs/default/feedback.sqlite"


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
    stdout.print(f"imported {new} feedback records into {store} ({dup} already stored)")


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
    stdout.print(f"imported {new} new pairs into {store} ({len(pairs) - new} already stored)")


# -- annotate push -----------------------------------------------------------------------------
@annotate_app.command("push")
def push_cmd(
    dataset: Annotated[str, typer.Option(help="Argilla dataset name (created with the clinical rubric if missing).")],
    backend: Annotated[str, typer.Option(help="Where clinicians annotate: argilla.")] = "argilla",
    store: Annotated[str | None, typer.Option(help="Take the pairs from this embedded store (SQLite path).")] = None,
    pairs: Annotated[str | None, typer.Option(help="Take the pairs from this JSONL file.")] = None,
    batch_size: Annotated[int, typer.Option(help="Records per request (max 500).")] = 100,
    min_submitted: Annotated[int, typer.Option(help="Clinicians per pair before it counts as done (new dataset).")] = 2,
    phi_mode: Annotated[str, typer.Option(help="PHI gate for --pairs files: block | redact.")] = "block",
) -> None:
    """Push candidate pairs to Argilla. Re-running (or resuming a killed push) adds only what is missing."""
    from annotation.argilla_store import ArgillaStore

    if backend != "argilla":
        raise ClinalignError(f"--backend {backend!r}: push goes to argilla (the embedded store needs no push)")
    if (store is None) == (pairs is None):
        raise ClinalignError("give exactly one source: --store runs/x/feedback.sqlite or --pairs FILE.jsonl")
    if pairs and not Path(pairs).is_file():
        raise InputError("file not found", path=pairs)
    if store and not store.startswith("argilla:") and not Path(store).is_file():
        raise ClinalignError(f"no feedback store at {store}")
    # Connect next (the dataset name is checked before that): a wrong URL or key fails in a
    # second, before the PHI gate loads its models; nothing is created for a source that is missing.
    target = ArgillaStore.from_env(dataset, min_submitted=min_submitted, batch_size=batch_size)
    try:
        items = _load_pairs(store, pairs, phi_mode)
        new = target.add_pairs(items)
        counts = target.counts()
    finally:
        target.close()
    stdout.print(f"pushed {new} new pairs to '{dataset}' ({len(items) - new} already there); "
              f"the dataset now holds {counts['pairs']} pairs, {counts['records_completed']} completed")


def _load_pairs(store: str | None, pairs_file: str | None, phi_mode: str) -> list:
    from annotation.store import open_store

    if pairs_file:
        from align.stages import gate_pairs
        from annotation.feedback_io import parse_pairs_file

        return gate_pairs(parse_pairs_file(pairs_file), mode=phi_mode, audit_dir=Path(pairs_file).parent)
    if not store.startswith("argilla:") and not Path(store).is_file():
        raise ClinalignError(f"no feedback store at {store}")
    source = open_store(store, create=False)
    try:
        items = list(source.iter_pairs())
    finally:
        source.close()
    if not items:
        raise ClinalignError(f"{store} holds no pairs to push")
    return items


# -- annotate users ----------------------------------------------------------------------------
@annotate_app.command("users")
def users_cmd(
    file: Annotated[str, typer.Argument(help="YAML/JSON with workspaces and users (see docs/argilla.md).")],
    credentials_out: Annotated[str | None, typer.Option(help="Also write generated passwords/keys to this "
                                                              "file (mode 0600).")] = None,
) -> None:
    """Create workspaces and clinician accounts (owner key in ARGILLA_API_KEY). Idempotent."""
    from annotation.argilla_store import _connect
    from annotation.argilla_users import apply_users, load_users_file

    workspaces, specs = load_users_file(file)  # the whole file is checked before anything is created
    url, key = os.environ.get("ARGILLA_API_URL", ""), os.environ.get("ARGILLA_API_KEY", "")
    if not url or not key:
        raise ClinalignError("set ARGILLA_API_URL and ARGILLA_API_KEY (the owner's key)")
    client = _connect(url, key)
    results = apply_users(client, workspaces, specs)
    table = Table(title=f"Argilla users on {url}")
    for col in ("username", "role", "workspaces", "status"):
        table.add_column(col)
    for r in results:
        table.add_row(r.username, r.role, ", ".join(r.workspaces), "created" if r.created else "existed")
    stdout.print(table)
    secrets_rows = [{"username": r.username, "password": r.password, "api_key": r.api_key}
                    for r in results if r.created]
    if secrets_rows:
        stdout.print("Credentials, shown once (give each clinician their own; clinalign keeps no copy):", style="bold")
        for row in secrets_rows:
            pw = row["password"] or "(from the environment)"
            print(f"  {row['username']}: password {pw}  api key {row['api_key']}", flush=True)  # no wrapping
        if credentials_out:
            fd = os.open(credentials_out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(secrets_rows, fh, indent=1)


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
    stdout.print(table)


# -- annotate agreement ------------------------------------------------------------------------
@annotate_app.command("agreement")
def agreement_cmd(
    store: Annotated[str, typer.Option(help="Embedded store (SQLite path) or argilla:<dataset>.")] = DEFAULT_STORE,
    backend: Annotated[str, typer.Option(help="sqlite | argilla")] = "sqlite",
    dataset: Annotated[str | None, typer.Option(help="Argilla dataset (backend argilla).")] = None,
    json_out: Annotated[str | None, typer.Option("--json", help="Also write the report as JSON here.")] = None,
    include_simulated: Annotated[bool, typer.Option(help="Count simulated annotators too.")] = False,
) -> None:
    """Krippendorff's alpha on preference and ratings, per-annotator agreement, counts."""
    from annotation.agreement import agreement_report
    from annotation.store import open_store

    spec = store
    if backend == "argilla":
        if not dataset:
            raise ClinalignError("--backend argilla needs --dataset NAME")
        spec = f"argilla:{dataset}"
    elif not store.startswith("argilla:") and not Path(store).is_file():
        raise ClinalignError(f"no feedback store at {store}")
    source = open_store(spec, create=False)
    try:
        report = agreement_report(source.iter_feedback(), include_simulated=include_simulated)
        report["store"] = spec
        report["progress"] = source.counts()
    finally:
        source.close()
    _print_agreement(report)
    if json_out:
        write_json_atomic(Path(json_out), report, indent=1)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _print_agreement(report: dict) -> None:
    c = report["counts"]
    stdout.print(Text.assemble((report["store"], "bold"), f": {c['feedback']} judgements of {c['pairs']} pairs by "
                            f"{c['annotators']} annotators; {c['pairs_with_2plus']} pairs judged by 2 or more"))
    table = Table(title="Krippendorff's alpha")
    for col in ("measure", "level", "alpha", "units 2+", "pairwise"):
        table.add_column(col)
    pref = report["preference"]
    table.add_row("preference", "nominal", _fmt(pref["alpha"]), str(c["pairs_with_2plus"]),
                  _fmt(pref["pairwise_agreement"]))
    for key, row in report["ratings"].items():
        table.add_row(key, "ordinal", _fmt(row["alpha"]), str(row["n_units_multi"]), "")
    stdout.print(table)
    per = Table(title="Agreement with the other clinicians' majority (leave-one-out)")
    for col in ("annotator", "judgements", "compared", "agree", "agreement"):
        per.add_column(col)
    for name, row in report["annotators"].items():
        per.add_row(name, str(row["n_feedback"]), str(row["n_compared"]), str(row["n_agree"]),
                    _fmt(row["agreement_with_consensus"]))
    stdout.print(per)


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
    stdout.print_json(json.dumps(report))


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
    density_power: Annotated[float, typer.Option(help="Weight the value by the pair's representativeness "
                                                 "(mean squared cosine of its answers' feature difference "
                                                 "to all unlabelled pairs) to this power; 0 turns it off. "
                                                 "1 did best in the simulated study.")] = 1.0,
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
        diffs = _feature_differences(scorer, prompts, pairs) if density_power > 0 else [None] * len(pairs)
        candidates = [Candidate(p.id, p.prompt, tuple(a[i] - b[i] for a, b in zip(members_a, members_b, strict=True)),
                                group=p.prompt_id, features=diffs[i]) for i, p in enumerate(pairs)]
        ranked = rank_candidates(candidates, n, max_per_group=max_per_prompt,
                                 disagreement_weight=disagreement_weight, density_power=density_power)
        if not dry_run:
            s.set_priorities({r.pair_id: r.rank for r in ranked}, values={r.pair_id: r.value for r in ranked},
                             selection=f"{reward_model} at {utc_now()}")
    finally:
        s.close()
    if out:
        write_jsonl_atomic(out, [r.to_dict() for r in ranked])
    _print(ranked, len(pairs), len(members_a), store, dry_run)


def _feature_differences(scorer, prompts: list[str], pairs) -> list[tuple[float, ...]]:
    """Per pair, the reward model's features of answer a minus those of answer b."""
    fa = scorer.features(prompts, [p.response_a for p in pairs])
    fb = scorer.features(prompts, [p.response_b for p in pairs])
    return [tuple(x - y for x, y in zip(a, b, strict=True)) for a, b in zip(fa, fb, strict=True)]


def _print(ranked, n_pool: int, k: int, store: str, dry_run: bool) -> None:
    table = Table(title=f"label first ({len(ranked)} of {n_pool} unlabelled pairs; {k} reward member(s))")
    for col in ("rank", "pair", "value", "P(a)", "margin spread", "typicality"):
        table.add_column(col)
    for r in ranked[:10]:
        table.add_row(str(r.rank), r.pair_id, f"{r.value:.3f}", f"{r.p_a:.3f}", f"{r.margin_std:.3f}",
                      f"{r.density:.2f}")
    stdout.print(table)
    if dry_run:
        stdout.print("dry run: the queue was not changed")
    else:
        stdout.print(f"{len(ranked)} pairs marked first in {store} (review app: served first; Argilla: "
                      "sort by the 'priority' metadata, 1 first); the previous selection was replaced")
