"""Prompt sets: JSONL files or saved Hugging Face datasets, validated before any model loads."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from clinalign_base.errors import InputError
from clinalign_base.jsonl import read_jsonl

PROMPT_KEYS = ("prompt", "question")
GROUP_KEYS = ("group", "focus")
REFERENCE_KEYS = ("reference", "reference_answer", "physician_answer", "long_answer")


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str
    reference: str | None = None
    source: str | None = None  # stratum for splits: MedQuAD's sub-collection (GHR, GARD, ...), "kqa", ...
    group: str | None = None  # near-duplicate key: prompts sharing it never straddle a split (MedQuAD focus)
    origin: str | None = field(default=None, compare=False)  # where it was read, e.g. "data/x.jsonl (id q1)"

    @property
    def where(self) -> str:
        """Where the prompt came from, for error messages."""
        return self.origin or f"id {self.id}"


def _from_obj(obj: dict, *, path: str, line: int | None, index: int) -> Prompt:
    where = {"path": path, "line": line} if line else {"path": path, "record": f"row {index}"}
    key = next((k for k in PROMPT_KEYS if k in obj), None)
    if key is None:
        raise InputError(f"no prompt field (expected one of {', '.join(PROMPT_KEYS)})", **where)
    text = obj[key]
    if not isinstance(text, str):
        raise InputError(f"field '{key}' must be a string, got {type(text).__name__}", **where)
    if not text.strip():
        raise InputError(f"field '{key}' is empty", **where)
    ref = next((obj[k] for k in REFERENCE_KEYS if isinstance(obj.get(k), str) and obj[k].strip()), None)
    pid = obj.get("id")
    pid = str(pid) if pid is not None else "p-" + hashlib.sha256(text.encode()).hexdigest()[:12]
    source = obj.get("source") if isinstance(obj.get("source"), str) else None
    group = next((str(obj[k]) for k in GROUP_KEYS if isinstance(obj.get(k), (str, int)) and str(obj[k]).strip()), None)
    return Prompt(id=pid, text=text.strip(), reference=ref, source=source, group=group)


def load_prompts(path: str, *, limit: int | None = None, offset: int = 0) -> list[Prompt]:
    """Prompts from a JSONL file (`prompt` or `question`, optional `id` and reference answer) or a
    folder saved with `datasets.save_to_disk`."""
    p = Path(path)
    if p.is_dir():
        from datasets import load_from_disk

        try:
            ds = load_from_disk(str(p))
        except Exception as exc:
            raise InputError(f"not a saved dataset ({exc})", path=path) from None
        prompts = [_from_obj(dict(r), path=path, line=None, index=i) for i, r in enumerate(ds)]
    else:
        prompts = [_from_obj(obj, path=path, line=ln, index=ln) for ln, obj in read_jsonl(path)]
    if not prompts:
        raise InputError("no prompts in file", path=path)
    prompts = prompts[offset:]
    return prompts[:limit] if limit else prompts
