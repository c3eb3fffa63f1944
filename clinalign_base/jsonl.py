"""Strict JSONL reading: every problem is reported with its file and line."""

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from clinalign_base.errors import InputError


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line; raise InputError on the first bad one."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path=str(path))
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(f"not valid UTF-8 (byte {exc.start})", path=str(path), line=lineno) from None
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise InputError(f"invalid JSON: {exc.msg} (column {exc.colno})", path=str(path),
                                 line=lineno) from None
            if not isinstance(obj, dict):
                raise InputError(f"expected a JSON object, got {type(obj).__name__}", path=str(path),
                                 line=lineno)
            yield lineno, obj


def require_str(obj: dict, key: str, *, path: str, line: int, allow_empty: bool = False) -> str:
    if key not in obj:
        raise InputError(f"missing field '{key}'", path=path, line=line)
    value = obj[key]
    if not isinstance(value, str):
        raise InputError(f"field '{key}' must be a string, got {type(value).__name__}", path=path, line=line)
    if not allow_empty and not value.strip():
        raise InputError(f"field '{key}' is empty", path=path, line=line)
    return value


def write_jsonl_atomic(path: str | os.PathLike, rows: list[dict]) -> None:
    """Write rows to path via a temp file + rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
