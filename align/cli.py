"""`clinalign`: the one place that wires annotation, reward models and policy training together.

Each module in `align/commands/` adds its commands to the apps in `align/cli_groups.py`; this file
imports them all and turns clinalign's own errors into one clear line and a non-zero exit.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import clinalign_base  # noqa: F401  (offline defaults first)
from align import commands
from align.cli_groups import app
from clinalign_base.errors import ClinalignError


def _load_commands() -> None:
    for mod in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"align.commands.{mod.name}")


def one_line(text: str) -> str:
    """The message with its line breaks folded, so that an error is always one line."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def main(argv: list[str] | None = None) -> int:
    _load_commands()
    try:
        app(args=argv, standalone_mode=True)
    except ClinalignError as exc:
        # Plain text on one line: a dataset name, a path or a server's reply may hold "[...]",
        # which rich would read as markup (and crash on, or silently drop).
        print(f"error: {one_line(str(exc))}", file=sys.stderr, flush=True)
        return 2
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
