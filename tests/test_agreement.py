"""Agreement figures on small examples worked out by hand (no server needed)."""

from __future__ import annotations

import pytest

from annotation.agreement import agreement_report, krippendorff_alpha
from annotation.records import Feedback
from annotation.sqlite_store import SQLiteStore

# Three clinicians, four pairs (u2 judged by two of them only).
PREFS = {
    "u1": {"c1": "a", "c2": "a", "c3": "a"},
    "u2": {"c1": "a", "c2": "b"},
    "u3": {"c1": "b", "c2": "b", "c3": "b"},
    "u4": {"c1": "tie", "c2": "a", "c3": "a"},
}


def _feedback(prefs=PREFS, ratings=None):
    ratings = ratings or {}
    return [Feedback(pair_id=u, annotator_id=c, preference=p, ratings=ratings.get((u, c), {}))
            for u, d in prefs.items() for c, p in d.items()]


def test_preference_alpha_matches_hand_computation():
    # Coincidence matrix: o_aa=4, o_bb=3, o_ab=o_ba=1, o_at=o_ta=1; n=11, n_a=6, n_b=4, n_t=1.
    # D_o = 4/11, D_e = 2*(6*4 + 6*1 + 4*1)/(11*10) = 68/110, alpha = 1 - D_o/D_e = 7/17.
    report = agreement_report(_feedback())
    assert report["preference"]["alpha"] == pytest.approx(7 / 17)
    # 10 annotator pairs over the 4 units, 7 of them agree.
    assert report["preference"]["pairwise_agreement"] == pytest.approx(0.7)


def test_per_annotator_agreement_is_leave_one_out():
    ann = agreement_report(_feedback())["annotators"]
    # c1: agrees on u1, u3; not on u2 (other says b) nor u4 (others say a) -> 2/4.
    assert (ann["c1"]["n_compared"], ann["c1"]["n_agree"]) == (4, 2)
    # c2: u4's others are split (tie vs a) -> left out; disagrees on u2 -> 2/3.
    assert ann["c2"]["agreement_with_consensus"] == pytest.approx(2 / 3)
    assert (ann["c3"]["n_compared"], ann["c3"]["agreement_with_consensus"]) == (2, 1.0)


def test_counts():
    counts = agreement_report(_feedback())["counts"]
    assert counts["feedback"] == 11 and counts["pairs"] == 4 and counts["annotators"] == 3
    assert counts["annotators_per_pair"] == {"2": 1, "3": 3}
    assert counts["preferences"] == {"a": 6, "b": 4, "tie": 1, "both_bad": 0}


def test_ordinal_rating_alpha_matches_hand_computation():
    # Two raters, accuracy of answer A on three pairs: (1,2), (2,2), (3,3).
    # n_1=1, n_2=3, n_3=2, n=6; ordinal d^2: d12=4, d13=20.25, d23=6.25.
    # D_o = (4+4)/6, D_e = 2*(3*4 + 2*20.25 + 6*6.25)/30 = 6, alpha = 1 - (8/6)/6 = 7/9.
    prefs = {"p1": {"x": "a", "y": "a"}, "p2": {"x": "a", "y": "b"}, "p3": {"x": "b", "y": "b"}}
    given = {("p1", "x"): 1, ("p1", "y"): 2, ("p2", "x"): 2, ("p2", "y"): 2, ("p3", "x"): 3, ("p3", "y"): 3}
    ratings = {k: {"a": {"accuracy": v}} for k, v in given.items()}
    report = agreement_report(_feedback(prefs, ratings))
    assert report["ratings"]["accuracy"]["alpha"] == pytest.approx(7 / 9)
    assert report["ratings"]["accuracy"]["n_units_multi"] == 3
    assert report["ratings"]["harm"]["alpha"] is None  # nobody rated harm


def test_undefined_alpha_is_none_not_one():
    assert krippendorff_alpha([{"x": 1, "y": 1}, {"x": 1, "y": 1}], "nominal") is None
    assert krippendorff_alpha([{"x": 1}, {"y": 2}], "nominal") is None  # no unit has two judges
    assert krippendorff_alpha([{"x": 0, "y": 0}, {"x": 1, "y": 1}], "nominal") == pytest.approx(1.0)


def test_repeats_keep_the_latest_and_simulated_can_be_left_out():
    items = _feedback()
    # An earlier, contradicting judgement by c1 on u1 must be superseded by the later "a".
    items.append(Feedback(pair_id="u1", annotator_id="c1", preference="b", submitted_at="2000-01-01T00:00:00+00:00"))
    items.append(Feedback(pair_id="u1", annotator_id="simulated:len", preference="b", origin="simulated"))
    assert agreement_report(items, include_simulated=False)["preference"]["alpha"] == pytest.approx(7 / 17)
    assert agreement_report(items)["counts"]["annotators"] == 4


def test_works_on_the_embedded_store(tmp_path):
    from annotation.records import CandidatePair

    store = SQLiteStore(tmp_path / "fb.sqlite")
    pairs = {u: CandidatePair(prompt=f"question {u}", response_a="x", response_b="y", model_a="m", model_b="n")
             for u in PREFS}
    store.add_pairs(list(pairs.values()))
    store.add_feedback([Feedback(pair_id=pairs[u].id, annotator_id=c, preference=p)
                        for u, d in PREFS.items() for c, p in d.items()])
    assert agreement_report(store.iter_feedback())["preference"]["alpha"] == pytest.approx(7 / 17)
    store.close()
