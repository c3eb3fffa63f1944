"""The feedback-store interface every backend implements (embedded SQLite, Argilla server)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from annotation.errors import InputError
from annotation.records import CandidatePair, Feedback


@runtime_checkable
class FeedbackStore(Protocol):
    """Candidate pairs and clinicians' feedback on them.

    Contract shared by all backends (and their shared tests):
    - `add_pairs` is idempotent: pair ids are content hashes, a pair already stored is skipped.
    - `add_feedback` stores at most one feedback per (pair_id, annotator_id); a repeat (a retried
      request, a re-imported file) is skipped, never duplicated. Feedback for an unknown pair is an
      error naming it. A batch is all-or-nothing where the backend allows it.
    Both return how many records were new.
    """

    def add_pairs(self, pairs: Sequence[CandidatePair]) -> int: ...

    def get_pair(self, pair_id: str) -> CandidatePair | None: ...

    def iter_pairs(self) -> Iterator[CandidatePair]: ...

    def add_feedback(self, items: Sequence[Feedback]) -> int: ...

    def iter_feedback(self) -> Iterator[Feedback]: ...

    def counts(self) -> dict[str, int]: ...

    def close(self) -> None: ...


@runtime_checkable
class PrioritisedStore(Protocol):
    """A store that keeps a label-first order (`clinalign annotate select`): both backends do.

    `set_priorities` replaces the previous order (pair id -> rank, 1 = label first); pairs not in
    it have no priority. The review app serves prioritised pairs first; Argilla shows the rank as
    the `priority` metadata clinicians sort by."""

    def set_priorities(self, ranks: Mapping[str, int], *, values: Mapping[str, float] | None = None,
                       selection: str = "") -> int: ...

    def priorities(self) -> dict[str, int]: ...


def store_priorities(store: FeedbackStore) -> dict[str, int]:
    """The store's label-first ranks, or {} for a backend without them."""
    return store.priorities() if isinstance(store, PrioritisedStore) else {}


def open_store(spec: str, *, create: bool = True) -> FeedbackStore:
    """Open a store from a spec: a path to a SQLite file (embedded) or `argilla:<dataset>`.
    `create=False` for commands that only read (export, agreement, status): a mistyped name is then
    an error instead of a new, empty store that clinicians would see."""
    if spec.startswith("argilla:"):
        from annotation.argilla_store import ArgillaStore  # optional backend, needs a server

        return ArgillaStore.from_env(dataset=spec.split(":", 1)[1], create=create)
    from annotation.sqlite_store import SQLiteStore

    if not create and not Path(spec).exists():  # an existing non-store gets SQLiteStore's own reason
        raise InputError("feedback store not found (a path to a SQLite store, or argilla:<dataset>)", path=spec)
    return SQLiteStore(spec)
