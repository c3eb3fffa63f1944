import json

import pytest

from annotation.export import build_preference_rows, majority
from annotation.preferences import load_preference_rows, save_preference_dataset
from annotation.records import Feedback
from clinalign_base.errors import InputError
from tests.conftest import make_pair


def fb(pair, who, pref, strength=2, **kw):
    origin = "simulated" if who.startswith("simulated:") else kw.pop("origin", "annotation")
    return Feedback(pair_id=pair.id, annotator_id=who, preference=pref, strength=strength, origin=origin, **kw)


def test_majority_margin_and_agreement_hand_worked():
    p = make_pair(1)
    votes = [fb(p, "dr-a", "a", 3), fb(p, "dr-b", "a", 1), fb(p, "dr-c", "b", 2)]
    rows, report = build_preference_rows([p], votes)
    assert len(rows) == 1
    row = rows[0]
    assert (row["chosen"], row["rejected"]) == (p.response_a, p.response_b)
    # signed strengths +3, +1, -2 → mean 0.6667; 2 of 3 agree with the winner
    assert row["margin"] == pytest.approx(0.6667, abs=1e-4)
    assert row["agreement"] == pytest.approx(2 / 3, abs=1e-4)
    assert row["n_annotators"] == 3 and row["source"] == "clinician"
    assert row["annotators"] == ["dr-a", "dr-b", "dr-c"]
    assert report.pairs_exported == 1


@pytest.mark.parametrize("prefs, reason", [
    (["tie", "tie", "a"], "tie"),
    (["both_bad", "both_bad"], "both_bad"),
    (["a", "b"], "no_majority"),
])
def test_ties_and_both_bad_are_not_pairs(prefs, reason):
    p = make_pair(2)
    votes = [fb(p, f"dr-{i}", pref) for i, pref in enumerate(prefs)]
    rows, report = build_preference_rows([p], votes)
    assert rows == []
    assert report.excluded[reason] == 1


def test_winner_b_swaps_sides_and_ratings_follow():
    p = make_pair(3)
    votes = [fb(p, "dr-a", "b", ratings={"a": {"harm": 2}, "b": {"harm": 5, "accuracy": 4}}),
             fb(p, "dr-b", "b", ratings={"b": {"harm": 3}})]
    (row,), _ = build_preference_rows([p], votes)
    assert (row["chosen"], row["rejected"]) == (p.response_b, p.response_a)
    assert json.loads(row["ratings_chosen"]) == {"accuracy": 4, "harm": 4}
    assert json.loads(row["ratings_rejected"]) == {"harm": 2}


def test_correction_becomes_its_own_pair():
    p = make_pair(4)
    votes = [fb(p, "dr-a", "both_bad", correction="Take 500 mg every 6 hours; see a doctor if fever persists.",
                correction_of="a")]
    rows, report = build_preference_rows([p], votes)
    assert len(rows) == 1 and report.corrections == 1 and report.excluded["both_bad"] == 1
    assert rows[0]["source"] == "correction"
    assert rows[0]["chosen"].startswith("Take 500 mg") and rows[0]["rejected"] == p.response_a


def test_simulated_feedback_is_never_mixed_silently():
    p, q = make_pair(5), make_pair(6)
    votes = [fb(p, "simulated:overlap", "b"), fb(p, "dr-a", "a"), fb(q, "simulated:overlap", "b")]
    rows, report = build_preference_rows([p, q], votes)
    assert [r["source"] for r in rows] == ["clinician"]  # simulated ignored by default
    assert report.simulated_votes_ignored == 2
    rows, _ = build_preference_rows([p, q], votes, include_simulated=True)
    by_pair = {r["pair_id"]: r for r in rows}
    assert by_pair[p.id]["source"] == "clinician" and by_pair[p.id]["chosen"] == p.response_a
    assert by_pair[q.id]["source"] == "simulated:overlap"


def test_review_votes_are_labelled():
    p = make_pair(7)
    (row,), _ = build_preference_rows([p], [fb(p, "dr-a", "a", origin="review")])
    assert row["source"] == "review"


def test_seed_rows_from_reference_answers():
    p = make_pair(8, reference="The physician's answer.", source="generated:kqa")
    rows, report = build_preference_rows([p], [], include_seeds=True)
    assert report.seed_rows == 1
    assert rows[0]["source"] == "seed:kqa-reference"
    assert (rows[0]["chosen"], rows[0]["rejected"]) == ("The physician's answer.", p.response_a)


def test_saved_dataset_round_trips_and_never_clobbers(tmp_path):
    p = make_pair(9)
    rows, _ = build_preference_rows([p], [fb(p, "dr-a", "a")])
    out = save_preference_dataset(rows, tmp_path / "prefs")
    loaded = load_preference_rows(out)
    assert loaded[0]["chosen"] == p.response_a and loaded[0]["pair_id"] == p.id
    assert (out / "preferences.jsonl").is_file()
    with pytest.raises(InputError, match="already exists"):
        save_preference_dataset(rows, out)
    with pytest.raises(InputError, match="no preference pairs"):
        save_preference_dataset([], tmp_path / "empty")
    assert not (tmp_path / "empty").exists()
    assert [x.name for x in tmp_path.iterdir() if x.name.startswith(".")] == []


def test_majority_helper():
    p = make_pair(10)
    assert majority([fb(p, "x", "a"), fb(p, "y", "a"), fb(p, "z", "b")]) == ("a", "")


def test_rows_do_not_depend_on_the_order_the_store_lists_pairs_in():
    # a store lists pairs by a timestamp to the second: the same pairs can come back in another order
    pairs = [make_pair(i) for i in range(6)]
    votes = [fb(p, "dr-a", "a" if i % 2 else "b") for i, p in enumerate(pairs)]
    forward, _ = build_preference_rows(pairs, votes)
    backward, _ = build_preference_rows(pairs[::-1], votes[::-1])
    assert forward == backward and len(forward) == 6
    assert [r["pair_id"] for r in forward] == sorted(p.id for p in pairs)
