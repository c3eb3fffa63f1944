"""Preference datasets: TRL's prompt/chosen/rejected plus clinalign's provenance columns.

Read from a folder written by `save_preference_dataset` (datasets `save_to_disk`) or from a JSONL
file; every row is validated and a bad one is reported with its file and line (or row index).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from clinalign_base.atomic import atomic_dir
from clinalign_base.errors import InputError
from clinalign_base.jsonl import read_jsonl

REQUIRED = ("prompt", "chosen", "rejected")
COLUMNS = ("prompt", "chosen", "rejected", "margin", "source", "pair_id", "n_annotators", "agreement",
           "ratings_chosen", "ratings_rejected")
DEFAULTS: dict[str, Any] = {"margin": 0.0, "source": "file", "pair_id": "", "n_annotators": 0,
                            "agreement": 1.0, "ratings_chosen": "", "ratings_rejected": ""}


def validate_row(row: dict[str, Any], *, path: str, line: int | None = None, index: int | None = None) -> dict:
    """Check one row and return it with every clinalign column present."""
    where = {"path": path, "line": line} if line else {"path": path, "record": f"row {index}"}
    for key in REQUIRED:
        if key not in row:
            raise InputError(f"missing field '{key}'", **where)
        if not isinstance(row[key], str):
            raise InputError(f"field '{key}' must be a string, got {type(row[key]).__name__}", **where)
        if not row[key].strip():
            raise InputError(f"field '{key}' is empty", **where)
    if row["chosen"].strip() == row["rejected"].strip():
        raise InputError("chosen and rejected are identical", **where)
    out = {k: row.get(k, DEFAULTS.get(k)) for k in COLUMNS}
    for key in ("ratings_chosen", "ratings_rejected"):
        if isinstance(out[key], dict):
            out[key] = json.dumps(out[key])
        out[key] = out[key] or ""
    try:
        out["margin"] = float(out["margin"])
        out["n_annotators"] = int(out["n_annotators"])
        out["agreement"] = float(out["agreement"])
    except (TypeError, ValueError) as exc:
        raise InputError(f"margin/n_annotators/agreement must be numbers ({exc})", **where) from None
    if out["margin"] < 0:
        raise InputError(f"margin must be >= 0, got {out['margin']}", **where)
    out["source"], out["pair_id"] = str(out["source"]), str(out["pair_id"])
    return out


def load_preference_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All rows of a preference folder or JSONL file, validated."""
    path = Path(path)
    if path.is_dir():
        from datasets import load_from_disk

        try:
            ds = load_from_disk(str(path))
        except Exception as exc:  # datasets raises several types for a folder that is not a dataset
            raise InputError(f"not a saved preference dataset ({exc})", path=str(path)) from None
        missing = [c for c in REQUIRED if c not in ds.column_names]
        if missing:
            raise InputError(f"dataset lacks columns {missing} (has {ds.column_names})", path=str(path))
        return [validate_row(dict(r), path=str(path), index=i) for i, r in enumerate(ds)]
    rows = [validate_row(obj, path=str(path), line=ln) for ln, obj in read_jsonl(path)]
    if not rows:
        raise InputError("no preference pairs in file", path=str(path))
    return rows


def save_preference_dataset(rows: list[dict[str, Any]], out_dir: str | os.PathLike, *,
                            extra_files: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Write rows as a datasets folder + preferences.jsonl (+ extra JSON files), atomically.

    Written into a temporary sibling folder and renamed into place, so a failure leaves nothing
    half-written, and an existing dataset is only replaced when `overwrite` is set.
    """
    from datasets import Dataset

    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise InputError("output already exists (pass --overwrite to replace it)", path=str(out_dir))
    if not rows:
        raise InputError("no preference pairs to write: every pair was a tie, both-bad or unannotated")
    with atomic_dir(out_dir) as tmp:
        Dataset.from_list([{k: r.get(k, DEFAULTS.get(k)) for k in COLUMNS} for r in rows]).save_to_disk(str(tmp))
        with open(tmp / "preferences.jsonl", "w", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
        for name, obj in (extra_files or {}).items():
            (tmp / name).write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")
    return out_dir
