import pytest

from annotation.records import Feedback, make_pair_id
from tests.conftest import make_pair


def test_pair_id_is_a_content_hash():
    p = make_pair(1)
    assert p.id == make_pair(1).id == make_pair_id(p.prompt, p.response_a, p.response_b)
    assert p.id != make_pair(2).id
    assert p.id != make_pair(1, response_a="other").id
    # provenance does not change identity: the same texts are the same pair
    assert p.id == make_pair(1, model_a="another-model").id


@pytest.mark.parametrize("kw, message", [
    ({"prompt": "  "}, "prompt is empty"),
    ({"response_a": ""}, "response_a is empty"),
    ({"response_a": "same", "response_b": "same "}, "identical"),
])
def test_bad_pairs_are_refused(kw, message):
    with pytest.raises(ValueError, match=message):
        make_pair(0, **kw)


def test_round_trip_dict():
    p = make_pair(3, reference="ref", generation={"seed": 1})
    from annotation.records import CandidatePair

    assert CandidatePair.from_dict(p.to_dict()) == p


@pytest.mark.parametrize("kw, message", [
    ({"preference": "maybe"}, "preference must be one of"),
    ({"strength": 4}, "strength must be an integer 1-3"),
    ({"strength": True}, "strength"),
    ({"ratings": {"a": {"accuracy": 6}}}, r"rating a.accuracy must be an integer 1-5"),
    ({"ratings": {"a": {"kindness": 3}}}, "unknown rating"),
    ({"ratings": {"c": {"accuracy": 3}}}, "ratings keys"),
    ({"correction": "better text"}, "correction_of must be"),
    ({"annotator_id": "simulated:x"}, "reserved for simulated"),
    ({"origin": "simulated"}, "needs an annotator_id starting with"),
])
def test_bad_feedback_is_refused(kw, message):
    base = dict(pair_id="pair-1", annotator_id="dr-a", preference="a")
    base.update(kw)
    with pytest.raises(ValueError, match=message):
        Feedback(**base)


def test_simulated_feedback_is_marked():
    fb = Feedback(pair_id="p", annotator_id="simulated:overlap", preference="a", origin="simulated")
    assert fb.simulated
    assert not Feedback(pair_id="p", annotator_id="dr-a", preference="b").simulated
