"""Lineage: every artefact records which inputs (by sha256), configs, versions and commit made it.

Lives in the base layer so that every package can write one.
Two kinds of manifest, one schema:
- an artefact manifest, `<artefact dir>/clinalign_manifest.json`, written by whatever made the
  artefact (preference dataset, reward model, policy adapter, evaluation);
- the round manifest, `runs/<name>/manifest.json`, listing every stage's artefacts and metrics.

Schema (all keys always present):
  {"schema": "clinalign.manifest/1", "kind": str, "name": str, "created_at": iso8601,
   "inputs":  [{"role": str, "path": str, "sha256": str}],
   "outputs": [{"role": str, "path": str, "sha256": str}],
   "config": {...}, "metrics": {...}, "annotations": {...},
   "environment": {"git_commit": str|None, "python": str, "packages": {name: version}}}
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from clinalign_base.clock import utc_now

SCHEMA = "clinalign.manifest/1"
MANIFEST_NAME = "clinalign_manifest.json"
TRACKED_PACKAGES = ("clinalign", "torch", "transformers", "trl", "peft", "accelerate", "datasets",
                    "deepspeed", "gradio", "argilla")


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def path_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, or of a folder's relative paths and contents (manifests excluded)."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    h = hashlib.sha256()
    for child in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = child.relative_to(path).as_posix()
        if child.name == MANIFEST_NAME or "/checkpoint-" in f"/{rel}" or rel.startswith("runs/"):
            continue
        h.update(rel.encode() + b"\0" + file_sha256(child).encode() + b"\n")
    return h.hexdigest()


def ref(role: str, path: str | os.PathLike) -> dict[str, str]:
    return {"role": role, "path": str(path), "sha256": path_sha256(path)}


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        commit = out.stdout.strip() if out.returncode == 0 else None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5, cwd=Path(__file__).resolve().parent).stdout.strip()
        return f"{commit}+dirty" if commit and dirty else commit
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict[str, Any]:
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {"git_commit": git_commit(), "python": platform.python_version(), "packages": versions}


def build_manifest(kind: str, name: str, *, inputs: list[dict] | None = None, outputs: list[dict] | None = None,
                   config: dict | None = None, metrics: dict | None = None,
                   annotations: dict | None = None) -> dict[str, Any]:
    return {"schema": SCHEMA, "kind": kind, "name": name, "created_at": utc_now(),
            "inputs": inputs or [], "outputs": outputs or [], "config": config or {},
            "metrics": metrics or {}, "annotations": annotations or {}, "environment": environment()}


def write_manifest(path: str | os.PathLike, manifest: dict[str, Any]) -> Path:
    """Write atomically; `path` is a file or an artefact folder (then MANIFEST_NAME inside it)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False, default=str) + "\n")
    os.replace(tmp, path)
    return path


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    return json.loads(path.read_text())
