"""Alias for one release: moved to `clinalign_base.jsonl` (the base layer); import it from there."""

from clinalign_base.jsonl import *  # noqa: F403
from clinalign_base.jsonl import (  # noqa: F401
    read_jsonl,
    require_str,
    write_jsonl_atomic,
)
