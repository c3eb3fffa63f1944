"""Reading a JSON or YAML file that must hold one mapping, with errors that name the file and line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clinalign_base.errors import InputError


def read_json_object(path: str | Path, *, what: str = "file", expected: str = "expected a JSON object") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} not found", path=str(path))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON: {exc.msg}", path=str(path), line=exc.lineno) from None
    if not isinstance(data, dict):
        raise InputError(expected, path=str(path))
    return data


def read_yaml_mapping(path: str | Path, *, what: str = "config file",
                      expected: str = "config must be a YAML mapping") -> dict[str, Any]:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} not found", path=str(path))
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise InputError(f"invalid YAML: {exc}", path=str(path)) from None
    if not isinstance(data, dict):
        raise InputError(expected, path=str(path))
    return data
