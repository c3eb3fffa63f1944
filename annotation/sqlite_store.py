"""Embedded feedback store: one SQLite file in WAL mode, safe for several processes at once."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from annotation.errors import InputError
from annotation.records import CandidatePair, Feedback
from clinalign_base.clock import utc_now

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
# Schema versions (PRAGMA user_version): 0/1 = pairs + feedback; 2 adds `priorities`, the label-first
# order `clinalign annotate select` writes (rank 1 first). Migrations only add tables, so a file
# migrated here still opens with older clinalign, and an old file opens here unchanged until then.
SCHEMA_VERSION = 2
_MIGRATIONS = {
    2: """
CREATE TABLE IF NOT EXISTS priorities (
    pair_id TEXT PRIMARY KEY REFERENCES pairs(id),
    rank INTEGER NOT NULL,
    value REAL,
    selection TEXT NOT NULL,
    set_at TEXT NOT NULL
);
""",
}
_TABLES = {"pairs": {"id", "data", "created_at"},
           "feedback": {"pair_id", "annotator_id", "origin", "data", "submitted_at"}}
_MAGIC = b"SQLite format 3\x00"
T = TypeVar("T", CandidatePair, Feedback)
_PRIVATE = 0o600  # votes, comments and clinician names: owner only


class SQLiteStore:
    """FeedbackStore on SQLite. Each batch is one IMMEDIATE transaction: all of it or none."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            _prepare_file(self.path)
        except OSError as exc:
            raise InputError(f"cannot open feedback store: {exc.strerror or exc}", path=str(self.path)) from None
        self._conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        try:
            self._setup()
        except sqlite3.OperationalError as exc:  # busy, locked, unreadable: not a damaged file
            self._conn.close()
            raise InputError(f"cannot open feedback store: {exc}", path=str(self.path)) from None
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise _not_a_store(self.path, str(exc)) from None
        except BaseException:
            self._conn.close()
            raise
        _tighten(self.path)  # the WAL and SHM exist now

    def _setup(self) -> None:
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        _check_schema(self._conn, self.path)
        self._conn.executescript(_SCHEMA)
        _migrate(self._conn)

    # -- pairs ---------------------------------------------------------------------------------
    def add_pairs(self, pairs: Sequence[CandidatePair]) -> int:
        rows = [(p.id, json.dumps(p.to_dict(), ensure_ascii=False), p.created_at) for p in pairs]
        with self._transaction() as cur:
            before = cur.execute("SELECT COUNT(*) FROM pairs").fetchone()[0]
            cur.executemany("INSERT OR IGNORE INTO pairs (id, data, created_at) VALUES (?, ?, ?)", rows)
            return cur.execute("SELECT COUNT(*) FROM pairs").fetchone()[0] - before

    def get_pair(self, pair_id: str) -> CandidatePair | None:
        rows = self._read("SELECT data FROM pairs WHERE id = ?", (pair_id,))
        return self._load(CandidatePair, rows[0][0]) if rows else None

    def iter_pairs(self) -> Iterator[CandidatePair]:
        for (data,) in self._read("SELECT data FROM pairs ORDER BY created_at, id"):
            yield self._load(CandidatePair, data)

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
        for (data,) in self._read("SELECT data FROM feedback ORDER BY submitted_at, pair_id, annotator_id"):
            yield self._load(Feedback, data)

    # -- label-first order (active selection) ----------------------------------------------------
    def set_priorities(self, ranks: Mapping[str, int], *, values: Mapping[str, float] | None = None,
                       selection: str = "") -> int:
        """Replace the label-first order with `ranks` (pair id -> rank, 1 first) in one transaction:
        a new selection supersedes the last one. Unknown pair ids are an error naming them."""
        values = values or {}
        stamp = utc_now()
        rows = [(pid, int(rank), values.get(pid), selection, stamp) for pid, rank in ranks.items()]
        with self._transaction() as cur:
            known = {r[0] for r in cur.execute("SELECT id FROM pairs")}
            unknown = sorted(set(ranks) - known)
            if unknown:
                raise InputError(f"{len(unknown)} prioritised pair(s) are not in the store",
                                 path=str(self.path), record=unknown[0])
            cur.execute("DELETE FROM priorities")
            cur.executemany("INSERT INTO priorities (pair_id, rank, value, selection, set_at) "
                            "VALUES (?, ?, ?, ?, ?)", rows)
        return len(rows)

    def priorities(self) -> dict[str, int]:
        """pair id -> rank (1 = label first) of the current selection; empty when there is none."""
        return {pid: rank for pid, rank in self._read("SELECT pair_id, rank FROM priorities ORDER BY rank")}

    def counts(self) -> dict[str, int]:
        pairs = self._read("SELECT COUNT(*) FROM pairs")[0][0]
        feedback = self._read("SELECT COUNT(*) FROM feedback")[0][0]
        annotators = self._read("SELECT COUNT(DISTINCT annotator_id) FROM feedback")[0][0]
        return {"pairs": pairs, "feedback": feedback, "annotators": annotators}

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- helpers -------------------------------------------------------------------------------
    def _read(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Run a query; a damaged file (not a busy one) is a clear error rather than sqlite's."""
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.OperationalError:
                raise
            except sqlite3.DatabaseError as exc:
                raise _not_a_store(self.path, f"damaged: {exc}") from None

    def _load(self, cls: type[T], data: object) -> T:
        """Decode one stored record; a damaged one names the store instead of a raw JSON error."""
        try:
            return cls.from_dict(json.loads(data))
        except (TypeError, ValueError, KeyError, AttributeError):
            raise _not_a_store(self.path, "a stored record is damaged") from None

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


def _not_a_store(path: Path, why: str) -> InputError:
    return InputError(f"not a clinalign feedback store: {path} ({why})")


def _prepare_file(path: Path) -> None:
    """Create a new store file 0600 (SQLite gives the WAL and SHM the database file's mode), or check
    that an existing one is a SQLite database and tighten its mode."""
    if path.is_dir():
        raise _not_a_store(path, "it is a directory")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _PRIVATE)
    except FileExistsError:
        if not path.is_file():
            raise _not_a_store(path, "not a regular file") from None
        with open(path, "rb") as fh:
            head = fh.read(len(_MAGIC))
        if head and head != _MAGIC:  # an empty file is a fresh database to SQLite
            raise _not_a_store(path, "file is not a SQLite database") from None
        _tighten(path)
    else:
        os.close(fd)


def _tighten(path: Path) -> None:
    """Owner-only mode for the database and its -wal / -shm files (fixes stores made before)."""
    for f in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            mode = stat.S_IMODE(f.stat().st_mode)
            if mode & 0o077:
                f.chmod(mode & _PRIVATE)
        except FileNotFoundError:
            continue


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring an older store up to SCHEMA_VERSION; each step is idempotent, so two processes opening
    the same old file at once both succeed."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version >= SCHEMA_VERSION:
        return
    for target in sorted(_MIGRATIONS):
        if target > version:
            conn.executescript(_MIGRATIONS[target])
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _check_schema(conn: sqlite3.Connection, path: Path) -> None:
    """A database with tables of its own must hold ours with our columns; an empty one gets them."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables:
        return
    for table, columns in _TABLES.items():
        if table not in tables:
            raise _not_a_store(path, f"has no {table} table; tables: {', '.join(sorted(tables))}")
        have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
        if not columns <= have:
            missing = ", ".join(sorted(columns - have))
            raise _not_a_store(path, f"wrong schema: {table} table lacks {missing}")
