"""Lineage: walk from an artefact's manifest back through its inputs to the annotations, re-hashing
every input on the way, and say which ones are missing or no longer what was recorded.

Hash conventions found in manifests (all re-checked the same way they were made):
- `path_sha256` of a file or folder (clinalign_base.manifest.ref): the default;
- a base model by its `config.json` hash (align.recipes.recipe_utils.model_ref), or `config-only:<sha>` over
  its config files (PPO): weights of a 70B model are never re-read;
- the feedback store by a digest of its pairs and feedback (align.stages): a live store that has
  gained feedback since the export reads as "changed" (a warning, not tampering);
- an empty sha256: recorded unhashed; shown, not checked.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clinalign_base.errors import ClinalignError, InputError
from clinalign_base.manifest import MANIFEST_NAME, file_sha256, path_sha256

OK, MISSING, ALTERED, CHANGED, UNHASHED, REMOTE = "ok", "missing", "altered", "changed", "unhashed", "remote"
FAILING = (MISSING, ALTERED)
FULL_HASH_LIMIT = 2 << 30  # folders larger than this are checked by their config files only


@dataclass
class Node:
    role: str
    path: str
    status: str = OK
    detail: str = ""
    manifest: dict[str, Any] | None = None
    manifest_path: str | None = None
    children: list[Node] = field(default_factory=list)

    def walk(self):
        yield self
        for child in self.children:
            yield from child.walk()


def find_manifest(path: Path) -> Path | None:
    """The manifest describing `path`: its own folder's, a manifest file itself, or a round's."""
    if path.is_dir():
        for name in (MANIFEST_NAME, "manifest.json"):
            if (path / name).is_file() and _is_manifest(path / name):
                return path / name
        return None
    if path.is_file() and path.suffix == ".json" and _is_manifest(path):
        return path
    return None


def _is_manifest(path: Path) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and str(data.get("schema", "")).startswith("clinalign.manifest/")


def _resolve(raw: str, base: Path) -> Path | None:
    """Paths are recorded as given (usually relative to where the command ran): try that, then
    relative to the manifest's own folder and its parents (a moved run folder still resolves)."""
    p = Path(raw).expanduser()
    if p.is_absolute() or p.exists():
        return p if p.exists() else None
    for anchor in (base, *base.parents):
        if (anchor / p).exists():
            return anchor / p
    return None


def _config_only(path: Path) -> str:
    h = hashlib.sha256()
    for name in ("config.json", "adapter_config.json", "generation_config.json"):
        if (path / name).exists():
            h.update((path / name).read_bytes())
    return "config-only:" + h.hexdigest()


def _folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def verify(entry: dict[str, Any], base: Path) -> tuple[str, str, Path | None]:
    """(status, detail, resolved path) for one recorded input or output."""
    raw, recorded = str(entry.get("path", "")), str(entry.get("sha256") or "")
    if raw.startswith("argilla:"):
        return REMOTE, "Argilla dataset on a server: not re-hashed here", None
    if raw.startswith("builtin:"):
        from align.models import resolve_model

        raw = resolve_model(raw)
    path = _resolve(raw, base) if raw else None
    if path is None:
        return (UNHASHED, "no path recorded", None) if not raw else (MISSING, "not found", None)
    if not recorded:
        return UNHASHED, "recorded without a hash", path
    if entry.get("role") == "feedback_store":
        return _verify_store(path, recorded)
    if recorded.startswith("config-only:"):
        ok = path.is_dir() and _config_only(path) == recorded
        return (OK, "config files", path) if ok else (ALTERED, "config files differ from the recorded hash", path)
    if path.is_dir() and (path / "config.json").is_file() and file_sha256(path / "config.json") == recorded:
        return OK, "config.json", path
    if path.is_dir() and _folder_size(path) > FULL_HASH_LIMIT:
        return ALTERED, "hash mismatch (folder too large to re-hash in full; its config.json differs)", path
    actual = path_sha256(path)
    if actual == recorded:
        return OK, "", path
    return ALTERED, f"hash mismatch: recorded {recorded[:12]}, now {actual[:12]}", path


def _verify_store(path: Path, recorded: str) -> tuple[str, str, Path | None]:
    from align.stages import _store_digest
    from annotation.store import open_store

    try:
        store = open_store(str(path), create=False)
        try:
            digest = _store_digest(list(store.iter_pairs()), list(store.iter_feedback()))
        finally:
            store.close()
    except Exception as exc:  # a damaged store is reported, not raised mid-walk
        return ALTERED, f"store unreadable: {exc}", path
    if digest == recorded:
        return OK, "pairs + feedback digest", path
    if file_sha256(path) == recorded:
        return OK, "file hash", path
    return CHANGED, "store has changed since the export read it (new or edited feedback)", path


def trace(start: str | Path) -> Node:
    """The lineage tree rooted at an artefact folder or a manifest file."""
    start = Path(start)
    if not start.exists():
        raise InputError("not found", path=str(start))
    mpath = find_manifest(start)
    if mpath is None:
        raise InputError(f"no {MANIFEST_NAME} (or round manifest.json) here", path=str(start))
    root = Node("artefact", str(start))
    _expand(root, mpath, seen=set())
    # The artefact's own recorded outputs are checked too: a checkpoint edited after training is altered.
    outputs = root.manifest.get("outputs", []) if root.manifest else []
    if root.manifest and root.manifest.get("kind") == "round":
        outputs = []  # a round's outputs are its stages, already walked as children
    for out in outputs:
        status, detail, resolved = verify(out, mpath.resolve().parent)
        if status != OK or resolved is None or resolved.resolve() != start.resolve():
            root.children.insert(0, Node(f"output:{out.get('role', '?')}", str(out.get("path")), status, detail))
        elif status == OK:
            root.detail = "contents match the recorded hash"
    return root


def _expand(node: Node, mpath: Path, seen: set[Path]) -> None:
    key = mpath.resolve()
    if key in seen:  # a manifest reached twice (shared input) is shown once in full
        node.detail = (node.detail + "; " if node.detail else "") + "already shown above"
        return
    seen.add(key)
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, ValueError) as exc:
        node.status, node.detail = ALTERED, f"manifest unreadable: {exc}"
        return
    node.manifest, node.manifest_path = manifest, str(mpath)
    inputs = list(manifest.get("inputs", []))
    if manifest.get("kind") == "round":  # a round lists its stages' artefacts as outputs
        inputs += [dict(o, role=f"stage:{o.get('role')}") for o in manifest.get("outputs", [])]
    for entry in inputs:
        status, detail, path = verify(entry, mpath.resolve().parent)
        child = Node(str(entry.get("role", "?")), str(entry.get("path", "")), status, detail)
        node.children.append(child)
        if path is not None and status not in FAILING:
            sub = find_manifest(path)
            if sub is not None and sub.resolve() != key:
                _expand(child, sub, seen)


def problems(root: Node) -> list[Node]:
    return [n for n in root.walk() if n.status in FAILING]


_STYLE = {OK: "green", MISSING: "bold red", ALTERED: "bold red", CHANGED: "yellow", UNHASHED: "dim",
          REMOTE: "cyan"}


def _label(node: Node) -> str:
    from rich.markup import escape

    m = node.manifest or {}
    kind = f" [bold]{escape(m.get('kind', ''))}[/]" if m else ""
    mark = {OK: "✓", MISSING: "✗ MISSING", ALTERED: "✗ ALTERED", CHANGED: "! changed", UNHASHED: "·",
            REMOTE: "~"}[node.status]
    text = f"[{_STYLE[node.status]}]{mark}[/] {escape(node.role)}{kind}: {escape(node.path)}"
    if node.detail:
        text += f" [dim]({escape(node.detail)})[/]"
    ann = m.get("annotations") or {}
    counts = ann.get("feedback_by_annotator")
    if isinstance(counts, dict) and counts:
        text += "\n  annotations: " + ", ".join(f"{escape(str(k))}={v}" for k, v in counts.items())
    agreement = ann.get("agreement")
    if isinstance(agreement, dict):
        alpha = agreement.get("krippendorff_alpha", agreement.get("alpha"))
        if alpha is not None:
            text += f"; agreement alpha={alpha}"
    if m.get("created_at"):
        commit = (m.get("environment") or {}).get("git_commit")
        text += f"\n  [dim]{escape(m['created_at'])}" + (f", commit {escape(str(commit)[:12])}" if commit else "") + "[/]"
    return text


def render(root: Node):
    from rich.text import Text
    from rich.tree import Tree

    # labels are markup we escaped ourselves: render it even on the CLI's markup=False consoles
    tree = Tree(Text.from_markup(_label(root)))

    def add(parent, node: Node) -> None:
        for child in node.children:
            add(parent.add(Text.from_markup(_label(child))), child)

    add(tree, root)
    return tree


def check(start: str | Path, console=None) -> Node:
    """Print the tree; raise ClinalignError naming every missing or altered link."""
    from rich.console import Console
    from rich.text import Text

    console = console or Console()
    root = trace(start)
    console.print(render(root))
    bad = problems(root)
    changed = [n for n in root.walk() if n.status == CHANGED]
    for n in changed:
        console.print(Text.assemble(("warning:", "yellow"), f" {n.role} {n.path}: {n.detail}"))
    if bad:
        listed = "; ".join(f"{n.role} {n.path}: {n.status} ({n.detail})" for n in bad)
        raise ClinalignError(f"lineage of {start} is broken: {len(bad)} input(s) missing or altered: {listed}")
    return root
