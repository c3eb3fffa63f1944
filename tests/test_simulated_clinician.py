"""The simulated clinician: deterministic, sensible on real MedQuAD rows, and not fooled by verbosity,
repetition, word salad or unfinished answers; its feedback is valid, clearly simulated feedback."""

from __future__ import annotations

import ast
import json
import random
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from annotation import simulated
from annotation.records import SIMULATED_PREFIX, CandidatePair, Feedback, validate_feedback_fields
from annotation.simulated import ANNOTATOR_ID, clinician_score, content_terms, judge, score_batch

MEDQUAD = Path(__file__).resolve().parents[1] / "data" / "medquad" / "medquad_prompts_500.jsonl"

# Plain, relevant answers to rows 2 and 7, written the way a model would answer (paraphrased).
PLAIN = {
    2: ("Yes. Abetalipoproteinemia is passed down in an autosomal recessive way. A child must inherit a "
        "mutated copy of the gene from each parent to have the disease. Parents who each carry one changed "
        "copy are carriers and usually have no symptoms themselves."),
    7: ("The main risk factor for anal cancer is infection with human papillomavirus (HPV). Other risks "
        "include having many sexual partners, receptive anal sex, being over 50, smoking, and long-lasting "
        "redness, swelling or soreness around the anus, as well as anal fistulas."),
}
OFF_TOPIC = ("Sunscreen should be applied generously to exposed skin before going outdoors, and reapplied "
             "every two hours while swimming. Wide-brimmed hats and sunglasses give extra protection.")
FILLER = ("The weather in the mountains changes quickly, so hikers should pack layers, a map, snacks and "
          "plenty of water before setting out on the trail. ")


def _rows() -> dict[int, dict]:
    lines = MEDQUAD.read_text(encoding="utf-8").splitlines()
    return {i: json.loads(lines[i]) for i in PLAIN}


@pytest.fixture(scope="module")
def rows() -> dict[int, dict]:
    return _rows()


def _score(row: dict, answer: str, **kw) -> float:
    return clinician_score(answer, row["reference_answer"], question=row["question"], **kw).score


def _pair(row: dict, a: str, b: str, **kw) -> CandidatePair:
    return CandidatePair(prompt=row["question"], response_a=a, response_b=b, model_a="m-a", model_b="m-b",
                         reference=kw.pop("reference", row["reference_answer"]), **kw)


# --- terms and scoring basics ----------------------------------------------------------------------

def test_content_terms_stems_and_drops_stop_words():
    assert content_terms("Symptoms") == content_terms("symptom") == {"symptom"}
    assert content_terms("caused") == content_terms("causes") == content_terms("causing")
    assert content_terms("The disease is in the blood of an ox") == content_terms("disease blood")
    assert "42" in content_terms("dose of 42 mg") and "mg" not in content_terms("dose of 42 mg")


def test_scoring_is_deterministic(rows):
    row = rows[2]
    first = clinician_score(PLAIN[2], row["reference_answer"], question=row["question"])
    again = clinician_score(PLAIN[2], row["reference_answer"], question=row["question"])
    assert first == again and first.to_dict() == again.to_dict()
    batch = score_batch([row["question"]] * 2, [PLAIN[2], OFF_TOPIC], [row["reference_answer"]] * 2)
    assert batch == score_batch([row["question"]] * 2, [PLAIN[2], OFF_TOPIC], [row["reference_answer"]] * 2)
    assert batch[0] == first.score


@pytest.mark.parametrize("i", sorted(PLAIN))
def test_reference_beats_plain_answer_beats_off_topic(rows, i):
    row = rows[i]
    reference, plain, off = (_score(row, t) for t in (row["reference_answer"], PLAIN[i], OFF_TOPIC))
    assert reference > 0.8
    assert reference > plain > off
    assert plain > 0.3 and off < 0.05


def test_empty_answer_and_parroted_question_score_zero(rows):
    row = rows[2]
    empty = clinician_score("   \n", row["reference_answer"], question=row["question"])
    assert empty.score == 0.0 and empty.penalties["empty"] == 0.0
    assert _score(row, "Is abetalipoproteinemia inherited? Abetalipoproteinemia is inherited.") == 0.0


def test_score_batch_checks_lengths_and_uses_finished(rows):
    row = rows[7]
    with pytest.raises(ValueError):
        score_batch(["q"], ["a", "b"], ["r"])
    done, cut = score_batch([row["question"]] * 2, [PLAIN[7]] * 2, [row["reference_answer"]] * 2,
                            finished=[True, False])
    assert cut < done


# --- not fooled ------------------------------------------------------------------------------------

@pytest.mark.parametrize("i", sorted(PLAIN))
def test_repeating_an_answer_lowers_its_score(rows, i):
    once = clinician_score(PLAIN[i], rows[i]["reference_answer"], question=rows[i]["question"])
    thrice = clinician_score(" ".join([PLAIN[i]] * 3), rows[i]["reference_answer"],
                             question=rows[i]["question"])
    assert thrice.coverage == once.coverage  # repeating earns no coverage...
    assert thrice.score < 0.5 * once.score  # ...and costs
    assert thrice.penalties["repetition"] < 1.0


@pytest.mark.parametrize("i", sorted(PLAIN))
def test_off_topic_padding_lowers_the_score(rows, i):
    padded = PLAIN[i] + " " + " ".join(FILLER.split() * 10)[:1400].rsplit(" ", 1)[0] + "."
    assert len(padded.split()) - len(PLAIN[i].split()) >= 200
    assert _score(rows[i], padded) < 0.7 * _score(rows[i], PLAIN[i])


def test_long_answers_pay_a_verbosity_penalty(rows):
    row = rows[2]
    long_answer = " ".join([row["reference_answer"]] + [PLAIN[2]] * 1 + [PLAIN[7]] * 3)
    long_answer += " " + " ".join(f"Point {n} is that the gene copy matters." for n in range(30))
    s = clinician_score(long_answer, row["reference_answer"], question=row["question"])
    assert s.penalties["verbosity"] < 1.0


@pytest.mark.parametrize("i", sorted(PLAIN))
def test_word_salad_scores_far_below_a_fluent_answer(rows, i):
    reference = rows[i]["reference_answer"]
    rng = random.Random(1234)
    content_words = [w for w in reference.replace(".", " ").split() if w.lower() not in simulated.STOP_WORDS]
    rng.shuffle(content_words)
    all_words = reference.rstrip(".").split()
    rng.shuffle(all_words)
    fluent = _score(rows[i], PLAIN[i])
    for salad in (" ".join(content_words) + ".", " ".join(all_words) + "."):
        s = clinician_score(salad, reference, question=rows[i]["question"])
        assert s.coverage > 0.9  # the salad holds every reference term...
        assert s.score < 0.4 * fluent  # ...and still loses
        assert s.penalties["word_salad"] < 0.3


def test_fluent_answers_are_not_word_salad(rows):
    reference = rows[7]["reference_answer"]
    sentences = reference.split(". ")
    reordered = ". ".join(sentences[1:] + sentences[:1]).rstrip(".") + "."
    independent = ("Infection with human papillomavirus (HPV) is the biggest risk factor for anal cancer. "
                   "The risk is also higher in people who have many sexual partners, who have receptive "
                   "anal intercourse, who smoke, or whose immune system is weakened, for example by HIV. "
                   "Being older than 50 and having long-lasting redness or fistulas around the anus also "
                   "increase the risk.")
    for text in (reordered, independent, PLAIN[7]):
        assert clinician_score(text, reference).penalties["word_salad"] == 1.0


@pytest.mark.parametrize("i", sorted(PLAIN))
def test_unfinished_answers_lose(rows, i):
    text = PLAIN[i]
    assert _score(rows[i], text, finished=False) < _score(rows[i], text, finished=True)
    cut = text.rstrip(".").rsplit(" ", 1)[0]  # mid-sentence, one word short
    assert _score(rows[i], cut) < _score(rows[i], cut + ".")
    assert _score(rows[i], text + " This is caused by the") < _score(rows[i], text)


# --- judge -----------------------------------------------------------------------------------------

def test_judge_ties_on_identical_responses(rows):
    row = rows[2]
    same = SimpleNamespace(id="pair-same", prompt=row["question"], response_a=PLAIN[2],
                           response_b=PLAIN[2] + "  ", reference=row["reference_answer"])
    assert judge(same).preference == "tie"
    # CandidatePair refuses identical texts; a case-only difference scores identically: a tie too.
    assert judge(_pair(row, PLAIN[2], PLAIN[2].upper())).preference == "tie"


@pytest.mark.parametrize("better_side", ["a", "b"])
def test_judge_prefers_the_better_response(rows, better_side):
    row = rows[7]
    a, b = (PLAIN[7], OFF_TOPIC) if better_side == "a" else (OFF_TOPIC, PLAIN[7])
    fb = judge(_pair(row, a, b))
    assert fb.preference == better_side and fb.strength == 3
    assert fb.meta["a"]["score"] != fb.meta["b"]["score"]
    for side in ("a", "b"):
        assert f"{side}={fb.meta[side]['score']:.3f}" in fb.rationale


def test_judge_uses_finished_flags(rows):
    row = rows[2]
    fb = judge(_pair(row, PLAIN[2], PLAIN[2] + " Ask a doctor."), finished=(False, True))
    assert fb.preference == "b"


def test_judge_needs_a_reference(rows):
    assert judge(_pair(rows[2], PLAIN[2], OFF_TOPIC, reference=None)) is None
    assert judge(_pair(rows[2], PLAIN[2], OFF_TOPIC, reference="")) is None


def test_judge_feedback_is_valid_simulated_feedback(rows):
    fb = judge(_pair(rows[2], PLAIN[2], OFF_TOPIC))
    assert validate_feedback_fields(fb) == []
    assert Feedback.from_dict(fb.to_dict()) == fb  # survives storage
    assert fb.simulated and fb.origin == "simulated" and fb.annotator_id == ANNOTATOR_ID
    assert ANNOTATOR_ID.startswith(SIMULATED_PREFIX)
    assert set(fb.meta["a"]) == {"score", "coverage", "precision", "penalties"}
    assert set(fb.meta["a"]["penalties"]) == {"repetition", "unfinished", "verbosity", "word_salad", "empty"}


def test_module_imports_only_stdlib_and_records():
    tree = ast.parse(Path(simulated.__file__).read_text(encoding="utf-8"))
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    modules |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    project = {m for m in modules if m.split(".")[0] in {"align", "reward_models", "annotation"}}
    assert project == {"annotation.records"}  # one import direction: annotation never imports align
    assert all(m.split(".")[0] in sys.stdlib_module_names for m in modules - project)
