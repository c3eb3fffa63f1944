"""Closing the loop: blind review votes (sides randomized) export as preference rows with source
"review", chosen = the answer the clinician actually preferred on screen."""

from __future__ import annotations

from collections import Counter

from annotation.export import build_preference_rows
from annotation.review.queue import ReviewQueue
from annotation.sqlite_store import SQLiteStore
from tests.review_support import make_pairs


def test_review_votes_become_next_round_preferences(tmp_path):
    store = SQLiteStore(tmp_path / "s.sqlite")
    store.add_pairs(make_pairs(12))
    queue = ReviewQueue(store, seed=5)
    preferred_text: dict[str, str] = {}
    while (ticket := queue.next_ticket("dr_ada")) is not None:
        left, _ = ticket.displayed()
        preferred_text[ticket.pair.id] = left
        result = queue.vote("dr_ada", ticket.id, "A", strength=3)
        assert result.stored
    shown_left = Counter(f.meta["shown_left"] for f in store.iter_feedback())
    assert set(shown_left) == {"a", "b"}  # both orientations occurred: the swap was really exercised
    rows, report = build_preference_rows(list(store.iter_pairs()), list(store.iter_feedback()))
    assert len(rows) == 12 and report.rows_by_source["review"] == 12
    for row in rows:
        assert row["source"] == "review"
        assert row["chosen"] == preferred_text[row["pair_id"]]
        assert row["margin"] == 3.0
    store.close()


def test_correction_in_review_exports_as_correction_pair(tmp_path):
    store = SQLiteStore(tmp_path / "s.sqlite")
    store.add_pairs(make_pairs(1))
    queue = ReviewQueue(store)
    ticket = queue.next_ticket("dr_ben")
    _, right = ticket.displayed()
    queue.vote("dr_ben", ticket.id, "both_unsafe", correction="Seek urgent care if symptoms worsen.",
               correction_side="B", flagged=True)
    (fb,) = list(store.iter_feedback())
    assert fb.flagged and fb.preference == "both_bad"
    rows, _ = build_preference_rows(list(store.iter_pairs()), [fb])
    (row,) = rows  # both unsafe: no A/B row, but the correction becomes a pair
    assert row["chosen"] == "Seek urgent care if symptoms worsen." and row["rejected"] == right
    store.close()


def test_review_pairs_command_loads_jsonl_and_names_bad_lines(tmp_path):
    import json

    from align.cli import main

    good = tmp_path / "pairs.jsonl"
    good.write_text("".join(json.dumps(p.to_dict()) + "\n" for p in make_pairs(3)))
    store_path = tmp_path / "s.sqlite"
    assert main(["review", "pairs", str(good), "--store", str(store_path)]) == 0
    assert main(["review", "pairs", str(good), "--store", str(store_path)]) == 0  # idempotent
    bad = tmp_path / "bad.jsonl"
    row = make_pairs(4)[3].to_dict()
    bad.write_text(json.dumps(row) + "\n" + json.dumps({**row, "model_b": ""}) + "\n")
    assert main(["review", "pairs", str(bad), "--store", str(store_path)]) == 2
    with SQLiteStore(store_path) as store:
        assert store.counts()["pairs"] == 3  # nothing from the bad file was half-written
