"""Importing clinicians' feedback from a JSONL file: validate every line first, then store all or none."""

from __future__ import annotations

import os

from annotation.records import CandidatePair, Feedback
from annotation.store import FeedbackStore
from clinalign_base.errors import InputError
from clinalign_base.jsonl import read_jsonl


def parse_feedback_file(path: str | os.PathLike) -> list[tuple[int, Feedback]]:
    items: list[tuple[int, Feedback]] = []
    for line, obj in read_jsonl(path):
        unknown = sorted(set(obj) - set(Feedback.__dataclass_fields__))
        if unknown:
            raise InputError(f"unknown field(s) {unknown}", path=str(path), line=line)
        for key in ("pair_id", "annotator_id", "preference"):
            if key not in obj:
                raise InputError(f"missing field '{key}'", path=str(path), line=line)
        obj.setdefault("origin", "simulated" if str(obj["annotator_id"]).startswith("simulated:") else "import")
        try:
            items.append((line, Feedback.from_dict(obj)))
        except (TypeError, ValueError) as exc:
            raise InputError(str(exc), path=str(path), line=line) from None
    if not items:
        raise InputError("no feedback records in file", path=str(path))
    return items


def import_feedback(store: FeedbackStore, path: str | os.PathLike) -> tuple[int, int]:
    """Store the file's feedback; returns (new, already stored). Unknown pairs fail the whole file."""
    items = parse_feedback_file(path)
    for line, fb in items:
        if store.get_pair(fb.pair_id) is None:
            raise InputError(f"pair '{fb.pair_id}' is not in the store (generate or import the pairs first)",
                             path=str(path), line=line)
    new = store.add_feedback([fb for _, fb in items])
    return new, len(items) - new


def parse_pairs_file(path: str | os.PathLike) -> list[CandidatePair]:
    pairs = []
    for line, obj in read_jsonl(path):
        for key in ("prompt", "response_a", "response_b"):
            if not isinstance(obj.get(key), str):
                raise InputError(f"field '{key}' missing or not a string", path=str(path), line=line)
        obj.setdefault("model_a", "unknown")
        obj.setdefault("model_b", "unknown")
        try:
            pairs.append(CandidatePair.from_dict(obj))
        except (TypeError, ValueError) as exc:
            raise InputError(str(exc), path=str(path), line=line) from None
    if not pairs:
        raise InputError("no pairs in file", path=str(path))
    return pairs
