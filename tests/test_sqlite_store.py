import sqlite3
import threading

import pytest

from annotation.records import Feedback
from annotation.sqlite_store import SQLiteStore
from clinalign_base.errors import InputError
from tests.conftest import make_pair


@pytest.fixture
def store(tmp_path):
    s = SQLiteStore(tmp_path / "fb.sqlite")
    yield s
    s.close()


def test_wal_mode_and_idempotent_pairs(store, tmp_path):
    pairs = [make_pair(i) for i in range(5)]
    assert store.add_pairs(pairs) == 5
    assert store.add_pairs(pairs + [make_pair(9)]) == 1
    assert store.counts()["pairs"] == 6
    mode = sqlite3.connect(tmp_path / "fb.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    assert store.get_pair(pairs[2].id) == pairs[2]
    assert store.get_pair("pair-missing") is None


def test_one_feedback_per_annotator_and_pair(store):
    p = make_pair()
    store.add_pairs([p])
    fb = Feedback(pair_id=p.id, annotator_id="dr-a", preference="a")
    assert store.add_feedback([fb]) == 1
    assert store.add_feedback([fb, Feedback(pair_id=p.id, annotator_id="dr-a", preference="b")]) == 0
    assert store.add_feedback([Feedback(pair_id=p.id, annotator_id="dr-b", preference="b")]) == 1
    stored = sorted(store.iter_feedback(), key=lambda f: f.annotator_id)
    assert [(f.annotator_id, f.preference) for f in stored] == [("dr-a", "a"), ("dr-b", "b")]


def test_batch_with_unknown_pair_stores_nothing(store):
    p = make_pair()
    store.add_pairs([p])
    good = Feedback(pair_id=p.id, annotator_id="dr-a", preference="a")
    bad = Feedback(pair_id="pair-unknown", annotator_id="dr-a", preference="a")
    with pytest.raises(InputError, match="pair-unknown"):
        store.add_feedback([good, bad])
    assert store.counts()["feedback"] == 0


def test_concurrent_writers_store_each_vote_once(tmp_path):
    path = tmp_path / "fb.sqlite"
    pairs = [make_pair(i) for i in range(20)]
    SQLiteStore(path).add_pairs(pairs)

    def vote(name):
        s = SQLiteStore(path)  # its own connection, as another process would have
        for p in pairs:
            for _ in range(2):  # each vote retried once
                s.add_feedback([Feedback(pair_id=p.id, annotator_id=name, preference="a")])
        s.close()

    threads = [threading.Thread(target=vote, args=(f"dr-{i}",)) for i in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert SQLiteStore(path).counts() == {"pairs": 20, "feedback": 120, "annotators": 6}
