import json

import pytest

from annotation.feedback_io import import_feedback, parse_pairs_file
from annotation.sqlite_store import SQLiteStore
from clinalign_base.errors import InputError
from tests.conftest import make_pair


@pytest.fixture
def store(tmp_path):
    s = SQLiteStore(tmp_path / "fb.sqlite")
    s.add_pairs([make_pair(0), make_pair(1)])
    yield s
    s.close()


def write_lines(path, objs):
    path.write_text("".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objs))
    return path


def test_import_is_idempotent(store, tmp_path):
    p0, p1 = make_pair(0), make_pair(1)
    f = write_lines(tmp_path / "fb.jsonl", [
        {"pair_id": p0.id, "annotator_id": "dr-a", "preference": "a", "strength": 3},
        {"pair_id": p1.id, "annotator_id": "dr-a", "preference": "tie",
         "ratings": {"a": {"accuracy": 4, "harm": 1}}}])
    assert import_feedback(store, f) == (2, 0)
    assert import_feedback(store, f) == (0, 2)
    stored = {x.pair_id: x for x in store.iter_feedback()}
    assert stored[p0.id].strength == 3 and stored[p0.id].origin == "import"
    assert stored[p1.id].ratings == {"a": {"accuracy": 4, "harm": 1}}


@pytest.mark.parametrize("line, message", [
    ('{"pair_id": "PAIR", "annotator_id": "dr-b", "preference": "c"}', r"fb.jsonl:2: preference must be one of"),
    ('{"pair_id": "PAIR", "annotator_id": "dr-b"}', r"fb.jsonl:2: missing field 'preference'"),
    ('{"pair_id": "PAIR", "annotator_id": "dr-b", "preference": "a", "strength": "3"}', r":2: strength must be"),
    ('{"pair_id": "PAIR", "annotator_id": "dr-b", "preference": "a", "colour": 1}', r":2: unknown field"),
    ('{"pair_id": "pair-nope", "annotator_id": "dr-b", "preference": "a"}', r":2: pair 'pair-nope' is not in the store"),
    ('{"pair_id": "PAIR", "annotator_id": "dr-b", "preference": "a"', r":2: invalid JSON"),
])
def test_bad_line_stores_nothing_and_keeps_what_was_there(store, tmp_path, line, message):
    p0 = make_pair(0)
    store.add_feedback([__import__("annotation.records", fromlist=["Feedback"]).Feedback(
        pair_id=p0.id, annotator_id="dr-z", preference="b")])
    f = write_lines(tmp_path / "fb.jsonl", [
        {"pair_id": p0.id, "annotator_id": "dr-a", "preference": "a"}, line.replace("PAIR", p0.id)])
    with pytest.raises(InputError, match=message):
        import_feedback(store, f)
    assert [(x.annotator_id, x.preference) for x in store.iter_feedback()] == [("dr-z", "b")]


def test_pairs_file_errors(tmp_path):
    f = write_lines(tmp_path / "pairs.jsonl", [
        {"prompt": "q", "response_a": "x", "response_b": "y"},
        {"prompt": "q", "response_a": "same", "response_b": "same"}])
    with pytest.raises(InputError, match=r"pairs.jsonl:2: response_a and response_b are identical"):
        parse_pairs_file(f)
