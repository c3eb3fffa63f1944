"""The Argilla dataset that clinicians annotate: fields, the clinical rubric, guidelines, overlap.

Question names are the contract between the server and `annotation.argilla_store` (which turns a
submitted response back into a `Feedback`): change them here and there together.
"""

from __future__ import annotations

from typing import Any

from annotation.records import PREFERENCES, RATING_KEYS, RATING_RANGE, STRENGTH_RANGE

FIELDS = ("prompt", "response_a", "response_b")
PREFERENCE_Q = "preference"
STRENGTH_Q = "strength"
CORRECTION_Q = "correction"
CORRECTION_OF_Q = "correction_of"
RATIONALE_Q = "rationale"
# Extra (undeclared) metadata key holding the pair's provenance. Argilla shows undeclared metadata
# to owners and workspace admins only, so model names and generation settings stay hidden from
# the clinicians (blind annotation).
PAIR_META_KEY = "clinalign_pair"

PREFERENCE_LABELS = {
    "a": "Response A is better",
    "b": "Response B is better",
    "tie": "About equally good",
    "both_bad": "Both are unacceptable",
}
RATING_TITLES = {
    "accuracy": "accuracy (1 = wrong or misleading, 5 = fully correct)",
    "harm": "harm (1 = no risk to a patient, 5 = could cause severe harm)",
    "completeness": "completeness (1 = misses what matters, 5 = covers all a clinician would expect)",
}

GUIDELINES = """\
# Clinical review of model answers

You see one patient or clinician question and two answers written by language models. The models
are hidden and the order of A and B carries no meaning. Judge each answer as you would judge a
colleague's reply to this question.

**Preference (required).** Which answer would you rather a patient or colleague received?
- *A* / *B*: that answer is better.
- *Tie*: they are about equally good (or equally flawed in the same way).
- *Both bad*: neither answer is acceptable; say why in the rationale and, if you can, write a correction.

**Strength** (1-3): how clear the preference is. 1 = slight, 2 = clear, 3 = decisive
(for example one answer is unsafe). Left empty it counts as 2.

**Ratings** (1-5, optional but valuable), for each answer separately:
- *Accuracy*: 1 = wrong or misleading, 5 = fully correct and current.
- *Harm*: 1 = no risk to a patient, 5 = following it could cause severe harm.
  (Higher is worse for harm only.)
- *Completeness*: 1 = misses what matters, 5 = covers what a clinician would expect.

**Correction** (optional): rewrite an answer the way you would want it given. Choose which
answer you rewrote in *Correction of*; when you leave that empty the correction counts as a rewrite
of the answer you preferred (A on a tie or both-bad). Each correction becomes a training example
(your text preferred over the original).

**Rationale** (optional): one or two sentences on what decided it.

Do not paste patient-identifying information into any text box. Use *Discard* for a pair you cannot
judge (outside your specialty, garbled text); discarded pairs are never used for training.
"""


def rating_question_name(side: str, key: str) -> str:
    """`a_accuracy`, `b_harm`, ... : one rating question per response and criterion."""
    return f"{side}_{key}"


def build_settings(min_submitted: int = 2) -> Any:
    """The `argilla.Settings` for a clinical pairwise dataset (imports argilla lazily)."""
    import argilla as rg

    if min_submitted < 1:
        raise ValueError("min_submitted must be at least 1")
    lo, hi = RATING_RANGE
    questions: list[Any] = [
        rg.LabelQuestion(name=PREFERENCE_Q, title="Which answer is better?",
                         labels={p: PREFERENCE_LABELS[p] for p in PREFERENCES}, required=True),
        rg.RatingQuestion(name=STRENGTH_Q, title="How clear is your preference? (1 slight - 3 decisive)",
                          values=list(range(STRENGTH_RANGE[0], STRENGTH_RANGE[1] + 1)), required=False),
    ]
    for side in ("a", "b"):
        for key in RATING_KEYS:
            questions.append(rg.RatingQuestion(
                name=rating_question_name(side, key), title=f"Answer {side.upper()}: {RATING_TITLES[key]}",
                values=list(range(lo, hi + 1)), required=False))
    questions += [
        rg.TextQuestion(name=CORRECTION_Q, title="Correction: your rewrite of one answer (optional)",
                        required=False, use_markdown=True),
        rg.LabelQuestion(name=CORRECTION_OF_Q, title="Correction of",
                         labels={"a": "Answer A", "b": "Answer B"}, required=False),
        rg.TextQuestion(name=RATIONALE_Q, title="Rationale (optional)", required=False),
    ]
    return rg.Settings(
        guidelines=GUIDELINES,
        fields=[
            rg.TextField(name="prompt", title="Question", use_markdown=False),
            rg.TextField(name="response_a", title="Answer A", use_markdown=True),
            rg.TextField(name="response_b", title="Answer B", use_markdown=True),
        ],
        questions=questions,
        metadata=[
            # Filterable by owners/admins; hidden from annotators so the review stays blind.
            rg.TermsMetadataProperty(name="pair_id", title="Pair id", visible_for_annotators=False),
            rg.TermsMetadataProperty(name="model_a", title="Model A", visible_for_annotators=False),
            rg.TermsMetadataProperty(name="model_b", title="Model B", visible_for_annotators=False),
            rg.TermsMetadataProperty(name="source", title="Source", visible_for_annotators=False),
        ],
        allow_extra_metadata=True,
        distribution=rg.TaskDistribution(min_submitted=min_submitted),
    )


def question_names() -> set[str]:
    """Every question the store reads back; an existing dataset must have all of them."""
    names = {PREFERENCE_Q, STRENGTH_Q, CORRECTION_Q, CORRECTION_OF_Q, RATIONALE_Q}
    names |= {rating_question_name(s, k) for s in ("a", "b") for k in RATING_KEYS}
    return names
