"""Embedded feedback store: one SQLite file in WAL mode, safe for several processes at once."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from annotation.errors import InputError
from annotation.records import CandidatePair, Feedback

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pairs (
    id TEXT PRIMARY KEY,
    data TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS feedback (
    pair_id TEXT NOT NULL REFERENCES pairs(id),
    annotator_id TEXT NOT NULL,
    origin TEXT NOT NULL,
    data TEXT NOT NULL,
    submitted_at TEXT NOT NULL,
    PRIMARY KEY (pair_id, annotator_id)
);
CREATE INDEX IF NOT EXISTS feedback_annotator ON feedback(annotator_id);
"""


class SQLiteStore:
    """FeedbackStore on SQLite. Each batch is one IMMEDIATE transaction: all of it or none."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.executescript(_SCHEMA)

    # -- pairs ---------------------------------------------------------------------------------
    def add_pairs(self, pairs: Sequence[CandidatePair]) -> int:
        rows = [(p.id, json.dumps(p.to_dict(), ensure_ascii=False), p.created_at) for p in pairs]
        with self._transaction() as cur:
            before = cur.execute("SELECT COUNT(*) FROM pairs").fetchone()[0]
            cur.executemany("INSERT OR IGNORE INTO pairs (id, data, created_at) VALUES (?, ?, ?)", rows)
            return cur.execute("SELECT COUNT(*) FROM pairs").fetchone()[0] - before

    def get_pair(self, pair_id: str) -> CandidatePair | None:
        with self._lock:
            row = self._conn.execute("SELECT data FROM pairs WHERE id = ?", (pair_id,)).fetchone()
        return CandidatePair.from_dict(json.loads(row[0])) if row else None

    def iter_pairs(self) -> Iterator[CandidatePair]:
        with self._lock:
            rows = self._conn.execute("SELECT data FROM pairs ORDER BY created_at, id").fetchall()
        for (data,) in rows:
            yield CandidatePair.from_dict(json.loads(data))

    # -- feedback ------------------------------------------------------------------------------
    def add_feedback(self, items: Sequence[Feedback]) -> int:
        rows = [(f.pair_id, f.annotator_id, f.origin, json.dumps(f.to_dict(), ensure_ascii=False),
                 f.submitted_at) for f in items]
        with self._transaction() as cur:
            known = {r[0] for r in cur.execute("SELECT id FROM pairs")}
            for fb in items:
                if fb.pair_id not in known:
                    raise InputError("feedback refers to a pair that is not in the store",
                                     record=f"{fb.pair_id} by {fb.annotator_id}")
            before = cur.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]
            cur.executemany(
                "INSERT OR IGNORE INTO feedback (pair_id, annotator_id, origin, data, submitted_at) "
                "VALUES (?, ?, ?, ?, ?)", rows)
            return cur.execute("SELECT COUNT(*) FROM feedback").fetchone()[0] - before

    def iter_feedback(self) -> Iterator[Feedback]:
        with self._lock:
            rows = self._conn.execute("SELECT data FROM feedback ORDER BY submitted_at, pair_id, annotator_id").fetchall()
        for (data,) in rows:
            yield Feedback.from_dict(json.loads(data))

    def has_feedback(self, pair_id: str, annotator_id: str) -> bool:
        with self._lock:
            row = self._conn.execute("SELECT 1 FROM feedback WHERE pair_id = ? AND annotator_id = ?",
                                     (pair_id, annotator_id)).fetchone()
        return row is not None

    def counts(self) -> dict[str, int]:
        with self._lock:
            pairs = self._conn.execute("SELECT COUNT(*) FROM pairs").fetchone()[0]
            feedback = self._conn.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]
            annotators = self._conn.execute("SELECT COUNT(DISTINCT annotator_id) FROM feedback").fetchone()[0]
        return {"pairs": pairs, "feedback": feedback, "annotators": annotators}

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- helpers -------------------------------------------------------------------------------
    def _transaction(self):
        store = self

        class _Tx:
            def __enter__(self):
                store._lock.acquire()
                self.cur = store._conn.cursor()
                self.cur.execute("BEGIN IMMEDIATE")
                return self.cur

            def __exit__(self, exc_type, exc, tb):
                try:
                    self.cur.execute("ROLLBACK" if exc_type else "COMMIT")
                finally:
                    store._lock.release()
                return False

        return _Tx()
