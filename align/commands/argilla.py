"""Argilla commands: `clinalign argilla up|down|status` (the local server stack) and
`clinalign annotate push|users|agreement` (pairs to clinicians, their accounts, their agreement)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from align.cli_groups import annotate_app, app
from clinalign_base.atomic import write_json_atomic
from clinalign_base.errors import ClinalignError, InputError

argilla_app = typer.Typer(help="The local Argilla server stack (Redis + search engine + Argilla 2.8).",
                          no_args_is_help=True)
app.add_typer(argilla_app, name="argilla")
out = Console(markup=False)  # results on stdout (plain text: names come from users and the server)

DataDir = Annotated[str | None, typer.Option("--data-dir", help="Stack data dir (default $CLINALIGN_ARGILLA_HOME "
                                                                "or ~/.cache/clinalign/argilla).")]
DEFAULT_STORE = "runs/default/feedback.sqlite"


def _stack_script() -> Path:
    script = Path(__file__).resolve().parents[2] / "scripts" / "argilla-up"
    if not script.is_file():
        raise ClinalignError(f"{script} is missing: run clinalign from a source checkout (pip install -e .)")
    return script


def _run_stack(action: str, data_dir: str | None, extra: list[str] | None = None) -> int:
    argv = [sys.executable, str(_stack_script()), action, *(["--data-dir", data_dir] if data_dir else []),
            *(extra or [])]
    return subprocess.run(argv).returncode


@argilla_app.command("up")
def up_cmd(data_dir: DataDir = None,
           port: Annotated[int | None, typer.Option(help="Argilla HTTP port (default 6900).")] = None,
           search_port: Annotated[int | None, typer.Option(help="Search engine port (default 9200).")] = None,
           redis_port: Annotated[int | None, typer.Option(help="Redis port (default 6379).")] = None,
           timeout: Annotated[float, typer.Option(help="Seconds to wait until the server answers.")] = 300) -> None:
    """Start Redis, the search engine and Argilla on 127.0.0.1 (installs what is missing)."""
    extra = ["--timeout", str(timeout)]
    for flag, value in (("--port", port), ("--search-port", search_port), ("--redis-port", redis_port)):
        if value is not None:
            extra += [flag, str(value)]
    if _run_stack("up", data_dir, extra) != 0:
        raise ClinalignError("the Argilla stack did not start (see the messages above)")


@argilla_app.command("down")
def down_cmd(data_dir: DataDir = None) -> None:
    """Stop the stack that `up` started (exactly its recorded processes; data is kept)."""
    if _run_stack("down", data_dir) != 0:
        raise ClinalignError("could not stop the Argilla stack")


@argilla_app.command("status")
def status_cmd(data_dir: DataDir = None,
               as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Which services run, their PIDs and the URL. Exit 0 running, 1 partial, 3 stopped."""
    code = _run_stack("status", data_dir, ["--json"] if as_json else [])
    if code:
        raise typer.Exit(code)


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
    out.print(f"pushed {new} new pairs to '{dataset}' ({len(items) - new} already there); "
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
    out.print(table)
    secrets_rows = [{"username": r.username, "password": r.password, "api_key": r.api_key}
                    for r in results if r.created]
    if secrets_rows:
        out.print("Credentials, shown once (give each clinician their own; clinalign keeps no copy):", style="bold")
        for row in secrets_rows:
            pw = row["password"] or "(from the environment)"
            print(f"  {row['username']}: password {pw}  api key {row['api_key']}", flush=True)  # no wrapping
        if credentials_out:
            fd = os.open(credentials_out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(secrets_rows, fh, indent=1)


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
    out.print(Text.assemble((report["store"], "bold"), f": {c['feedback']} judgements of {c['pairs']} pairs by "
                            f"{c['annotators']} annotators; {c['pairs_with_2plus']} pairs judged by 2 or more"))
    table = Table(title="Krippendorff's alpha")
    for col in ("measure", "level", "alpha", "units 2+", "pairwise"):
        table.add_column(col)
    pref = report["preference"]
    table.add_row("preference", "nominal", _fmt(pref["alpha"]), str(c["pairs_with_2plus"]),
                  _fmt(pref["pairwise_agreement"]))
    for key, row in report["ratings"].items():
        table.add_row(key, "ordinal", _fmt(row["alpha"]), str(row["n_units_multi"]), "")
    out.print(table)
    per = Table(title="Agreement with the other clinicians' majority (leave-one-out)")
    for col in ("annotator", "judgements", "compared", "agree", "agreement"):
        per.add_column(col)
    for name, row in report["annotators"].items():
        per.add_row(name, str(row["n_feedback"]), str(row["n_compared"]), str(row["n_agree"]),
                    _fmt(row["agreement_with_consensus"]))
    out.print(per)
