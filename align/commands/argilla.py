"""`clinalign argilla up | down | status`: the local Argilla server stack (Redis + search engine + Argilla 2.8)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from align.cli_groups import app
from clinalign_base.errors import ClinalignError

argilla_app = typer.Typer(help="The local Argilla server stack (Redis + search engine + Argilla 2.8).",
                          no_args_is_help=True)


app.add_typer(argilla_app, name="argilla")


out = Console(markup=False)  # results on stdout (plain text: names come from users and the server)


DataDir = Annotated[str | None, typer.Option("--data-dir", help="Stack data dir (default $CLINALIGN_ARGILLA_HOME "
                                                                "or ~/.cache/clinalign/argilla).")]


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
