"""Issue 12: a vote's inputs are checked for type and size (queue and the real app over HTTP), the
store files are owner-only, and a corrupt or foreign store is one clear error (CLI exit 2)."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from annotation.review.queue import ReviewError, ReviewQueue
from annotation.sqlite_store import SQLiteStore
from clinalign_base.errors import InputError
from tests.review_support import PASSWORD, make_pairs, running_app

ROOT = Path(__file__).resolve().parent.parent

# (keyword overrides for one vote, words the refusal must contain)
BAD_VOTES = [
    ({"comment": "x" * 8001}, "comment is longer than 8000 characters"),
    ({"correction": "y" * 8001, "correction_side": "A"}, "correction is longer than 8000 characters"),
    ({"strength": 2.7}, "strength must be 1"),
    ({"strength": "2"}, "strength must be 1"),
    ({"strength": True}, "strength must be 1"),
    ({"strength": 4}, "strength must be 1"),
    ({"flagged": "no"}, "safety flag must be true or false"),
    ({"flagged": 1}, "safety flag must be true or false"),
    ({"comment": {"a": 1}}, "comment must be text"),
    ({"correction": ["x"]}, "correction must be text"),
    ({"correction_side": {"x": 1}}, "corrected answer must be A or B"),
    ({"choice": "C"}, "choice must be one of"),
    ({"choice": ["A"]}, "choice must be one of"),
]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _queue(tmp_path: Path) -> tuple[SQLiteStore, ReviewQueue]:
    store = SQLiteStore(tmp_path / "store.sqlite")
    store.add_pairs(make_pairs(2))
    return store, ReviewQueue(store, seed=1)


@pytest.mark.parametrize(("override", "message"), BAD_VOTES)
def test_queue_refuses_bad_inputs(tmp_path, override, message):
    store, queue = _queue(tmp_path)
    ticket = queue.next_ticket("dr_ada")
    args = {"choice": "A", **override}
    choice = args.pop("choice")
    with pytest.raises(ReviewError, match=message):
        queue.vote("dr_ada", ticket.id, choice, **args)
    assert list(store.iter_feedback()) == []
    store.close()


def test_queue_limit_is_configurable_and_edges_pass(tmp_path):
    store = SQLiteStore(tmp_path / "store.sqlite")
    store.add_pairs(make_pairs(2))
    queue = ReviewQueue(store, seed=1, max_text_chars=10)
    ticket = queue.next_ticket("dr_ada")
    with pytest.raises(ReviewError, match="comment is longer than 10 characters"):
        queue.vote("dr_ada", ticket.id, "A", comment="x" * 11)
    result = queue.vote("dr_ada", ticket.id, "A", strength=3, comment="x" * 10, flagged=True)
    (fb,) = list(store.iter_feedback())
    assert result.stored and fb.strength == 3 and fb.flagged is True and fb.rationale == "x" * 10
    store.close()


def test_app_vote_endpoint_refuses_bad_inputs_over_http(tmp_path):
    from gradio_client import Client

    with running_app(tmp_path, n_pairs=2) as app:
        ada = Client(app.url, auth=("dr_ada", PASSWORD), verbose=False)
        ticket = ada.predict(api_name="/next_pair")["ticket"]
        for override, message in BAD_VOTES:
            args = {"choice": "A", "strength": 2, "comment": "", "correction": "", "correction_of": "",
                    "flagged": False, **override}
            if "correction_side" in args:
                args["correction_of"] = args.pop("correction_side")
            with pytest.raises(Exception) as info:
                ada.predict(ticket, api_name="/vote", **args)
            text = str(info.value)
            assert message in text, (override, text)
            for leak in ("TypeError", "AttributeError", "Traceback", "dict", "object has no"):
                assert leak not in text, (override, text)
            assert list(app.store.iter_feedback()) == [], override
        ok = ada.predict(ticket, "B", 3, "why", "", "", True, api_name="/vote")
        (fb,) = list(app.store.iter_feedback())
        assert ok["stored"] and fb.strength == 3 and fb.flagged is True


def test_store_files_are_owner_only(tmp_path):
    path = tmp_path / "store.sqlite"
    old = os.umask(0o022)
    try:
        store = SQLiteStore(path)
        store.add_pairs(make_pairs(2))  # a write: the WAL and SHM exist while the store is open
        files = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
        assert all(f.exists() for f in files)
        assert [_mode(f) for f in files] == [0o600] * 3
        store.close()
    finally:
        os.umask(old)


def test_existing_loose_store_is_tightened_on_open(tmp_path):
    path = tmp_path / "store.sqlite"
    path.write_bytes(b"")  # an empty file is a fresh store
    path.chmod(0o644)
    with SQLiteStore(path) as store:
        store.add_pairs(make_pairs(1))
        assert _mode(path) == 0o600
    path.chmod(0o666)
    with SQLiteStore(path) as store:
        assert _mode(path) == 0o600 and store.counts()["pairs"] == 1


def _bad_stores(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = tmp_path / "good.sqlite"
    with SQLiteStore(good) as store:
        store.add_pairs(make_pairs(30))
    data = good.read_bytes()
    kinds: dict[str, tuple[Path, str]] = {}

    def put(name: str, content: bytes, why: str) -> None:
        p = tmp_path / f"{name}.sqlite"
        p.write_bytes(content)
        kinds[name] = (p, why)

    put("random", os.urandom(4096), "file is not a SQLite database")
    put("text", b"question,answer\n" * 50, "file is not a SQLite database")
    put("truncated", data[: len(data) // 2], "malformed")
    folder = tmp_path / "folder.sqlite"
    folder.mkdir()
    kinds["directory"] = (folder, "is a directory")
    other = tmp_path / "other.sqlite"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE patients (id INTEGER, name TEXT)")
    conn.commit()
    conn.close()
    kinds["foreign"] = (other, "has no pairs table")
    wrong = tmp_path / "wrong.sqlite"
    conn = sqlite3.connect(wrong)
    conn.execute("CREATE TABLE pairs (x)")
    conn.execute("CREATE TABLE feedback (y)")
    conn.commit()
    conn.close()
    kinds["wrong_schema"] = (wrong, "wrong schema")
    return kinds


def test_corrupt_or_foreign_store_is_a_clear_error(tmp_path):
    for name, (path, why) in _bad_stores(tmp_path).items():
        with pytest.raises(InputError) as info:
            SQLiteStore(path)
        text = str(info.value)
        assert f"not a clinalign feedback store: {path}" in text and why in text, (name, text)
    good = tmp_path / "good.sqlite"
    (tmp_path / "good.sqlite-wal").write_bytes(b"")  # a zero-length WAL is normal after a crash
    with SQLiteStore(good) as store:
        assert store.counts()["pairs"] == 30
    fresh = tmp_path / "new" / "feedback.sqlite"
    with SQLiteStore(fresh) as store:  # a new path still makes a fresh store
        assert store.counts() == {"pairs": 0, "feedback": 0, "annotators": 0}


def test_cli_exits_2_on_a_bad_store(tmp_path):
    kinds = _bad_stores(tmp_path)
    for name in ("random", "directory", "foreign", "truncated"):
        path, why = kinds[name]
        proc = subprocess.run([sys.executable, "-m", "align.cli", "annotate", "status", "--store", str(path)],
                              capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert proc.returncode == 2, (name, proc.stdout, proc.stderr)
        err = " ".join(proc.stderr.split())  # rich may wrap the line
        assert "not a clinalign feedback store" in err and why in err, (name, proc.stderr)
        assert "Traceback" not in proc.stderr + proc.stdout, name


def test_damaged_records_are_a_clear_error_on_read(tmp_path):
    """A file cut inside its last page opens (the schema pages are intact) but its data is gone."""
    good = tmp_path / "good.sqlite"
    with SQLiteStore(good) as store:
        store.add_pairs(make_pairs(30))
    cut = tmp_path / "cut.sqlite"
    cut.write_bytes(good.read_bytes()[:-2048])
    with pytest.raises(InputError, match=r"not a clinalign feedback store: .*cut\.sqlite .*damaged"):
        with SQLiteStore(cut) as store:
            list(store.iter_pairs())
