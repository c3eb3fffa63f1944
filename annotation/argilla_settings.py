"""The Argilla dataset that clinicians annotate: fields, the clinical rubric, guidelines, overlap.

Question names are the contract between the server and `annotation.argilla_store` (which turns a
submitted response back into a `Feedback`): change them here and there together.
"""

from __future__ import annotations

import re
from typing import Any

from annotation.records import PREFERENCES, RATING_KEYS, RATING_RANGE, STRENGTH_RANGE

FIELDS = ("prompt", "response_a", "response_b")
PREFERENCE_Q = "preference"
STRENGTH_Q = "strength"
CORRECTION_Q = "correction"
CORRECTION_OF_Q = "correction_of"
RATIONALE_Q = "rationale"
SAFETY_FLAG_Q = "safety_flag"
# One answer per clinician for what the rubric has no question for (origin of the feedback, the
# review app's side mapping and timing), as JSON. It lives in the clinician's own response, so
# concurrent writers never share (and never overwrite) it; clinicians leave it empty.
DETAILS_Q = "clinalign_details"
# Extra (undeclared) metadata key holding the pair's provenance. Argilla shows undeclared metadata
# to owners and workspace admins only, so model names and generation settings stay hidden from
# the clinicians (blind annotation).
PAIR_META_KEY = "clinalign_pair"
# Label-first rank from `clinalign annotate select` (1 = label first; absent = no priority). Visible
# to clinicians, who sort their queue by it; it says nothing about which model wrote which answer.
PRIORITY_META = "priority"
PRIORITY_TITLE = "Priority (1 = label first)"

# The one vocabulary: the fields are "Question", "Answer A", "Answer B"; every choice, title and
# the guidelines use exactly these words (docs/clinician-guide.md quotes them).
FIELD_TITLES = {"prompt": "Question", "response_a": "Answer A", "response_b": "Answer B"}
PREFERENCE_LABELS = {
    "a": "Answer A is better",
    "b": "Answer B is better",
    "tie": "Tie: about equally good",
    "both_bad": "Both unacceptable",
}
STRENGTH_LABELS = {1: "slight", 2: "clear", 3: "strong"}
DEFAULT_STRENGTH = 2
# Every rating reads the same way: 1 = worst, 5 = best. Harm is asked as *safety* (5 = no risk)
# and stored as harm = 6 - safety (the Feedback record keeps "harm", higher = worse).
RATING_QUESTIONS = {"accuracy": "accuracy", "harm": "safety", "completeness": "completeness"}
RATING_TITLES = {
    "accuracy": "accuracy (1 = wrong or misleading ... 5 = fully correct)",
    "harm": "safety (1 = could cause severe harm ... 5 = no risk to a patient)",
    "completeness": "completeness (1 = misses what matters ... 5 = covers all a clinician would expect)",
}
SAFETY_REASONS = {
    "dangerous_advice": "Dangerous advice",
    "patient_information": "Patient-identifying information in the text",
    "should_not_answer": "Should not be answered by a model",
    "other": "Other (say why in the rationale)",
}

GUIDELINES = """\
# Clinical review of model answers

You see one patient or clinician **Question** and two model answers, **Answer A** and **Answer B**.
The models are hidden and the order of A and B carries no meaning. Judge each answer as you would
judge a colleague's reply to this question.

**Which answer is better?** (required) Which answer would you rather a patient or colleague received?
- *Answer A is better* / *Answer B is better*: that answer is clinically better (more accurate,
  safer, more complete, more useful to the person asking).
- *Tie: about equally good*: both acceptable, or equally flawed in the same way but not unsafe.
- *Both unacceptable*: neither answer should be given to a patient; say why in the rationale and,
  if you can, write a correction.

**Strength** (only when *Answer A is better* or *Answer B is better*): 1 = slight, 2 = clear,
3 = strong (for example the other answer is unsafe). Left empty it counts as 2 (clear). Skip it
after *Tie* or *Both unacceptable*: it is ignored there.

**Ratings** (optional but valuable), for each answer separately. On every scale 1 is worst and
5 is best:
- *Accuracy*: 1 = wrong or misleading ... 5 = fully correct and current.
- *Safety*: 1 = following it could cause severe harm ... 5 = no risk to a patient.
- *Completeness*: 1 = misses what matters ... 5 = covers what a clinician would expect.

**Flag this pair for safety review** (optional): tick every reason that applies when something
needs a human look beyond your judgement: dangerous advice, patient-identifying information in
the text, a question a model should not answer at all, or anything else (say what in the
rationale). Flagged pairs are reported to the study lead at export.

**Correction** (optional): rewrite one answer as it should read. Say which one in *Correction of*;
left empty, the correction counts as a rewrite of the better answer (Answer A after *Tie* or
*Both unacceptable*). Each correction becomes a training example (your text preferred over the
original).

**Rationale** (optional): one or two sentences on what decided it.

**Priority**: pairs marked with a priority (1 first) are the ones whose label teaches the reward
model most; sort by *Priority* to take them first.

**Review app details**: filled in by clinalign for votes cast in the review app. Leave it empty.

Do not paste patient-identifying information into any text box. Use *Discard* for a pair you cannot
judge (outside your specialty, garbled text); discarded pairs are never used for training.
"""


NAME_MAX = 100
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def name_problem(name: str) -> str | None:
    """Why a dataset or workspace name is refused, or None.

    Argilla itself takes any 1-200 characters, but brackets, slashes, spaces, `..` and the like
    are mangled or misread on the way: in URLs and `argilla:<dataset>` specs, in shells, by
    rich-formatted output, by the Hub export (which makes a repository name of it). clinalign
    allows only names that survive all of them: letters, digits, '-', '_' and '.', starting with a
    letter or digit, no '..', at most 100 characters.
    """
    if not isinstance(name, str) or not name:
        return "is empty"
    if len(name) > NAME_MAX:
        return f"is longer than {NAME_MAX} characters"
    if not _NAME_RE.fullmatch(name):
        bad = sorted({c for c in name if not (c.isascii() and (c.isalnum() or c in "._-"))})
        if bad:
            shown = ", ".join(repr(c) for c in bad)
            return f"contains {shown}"
        return "must start with a letter or a digit"
    if ".." in name:
        return "contains '..'"
    return None


def check_name(name: str, what: str = "dataset") -> str:
    """The name, or ValueError with one line saying what is wrong and what is allowed."""
    problem = name_problem(name)
    if problem:
        raise ValueError(f"{what} name {name!r} {problem}: use letters, digits, '-', '_' and '.' "
                         f"(starting with a letter or digit, no '..', at most {NAME_MAX} characters), "
                         "e.g. round1-cardiology")
    return name


def rating_question_name(side: str, key: str) -> str:
    """`a_accuracy`, `b_safety`, ... : one rating question per answer and criterion."""
    return f"{side}_{RATING_QUESTIONS.get(key, key)}"


def legacy_rating_question_name(side: str, key: str) -> str:
    """Datasets made before the safety scale asked `a_harm` (1 = no risk ... 5 = severe harm)."""
    return f"{side}_{key}"


def build_settings(min_submitted: int = 2) -> Any:
    """The `argilla.Settings` for a clinical pairwise dataset (imports argilla lazily)."""
    import argilla as rg

    if min_submitted < 1:
        raise ValueError("min_submitted must be at least 1")
    lo, hi = RATING_RANGE
    side_words = " or ".join(f'"{PREFERENCE_LABELS[p]}"' for p in ("a", "b"))
    questions: list[Any] = [
        rg.LabelQuestion(name=PREFERENCE_Q, title="Which answer is better?",
                         labels={p: PREFERENCE_LABELS[p] for p in PREFERENCES}, required=True),
        rg.RatingQuestion(
            name=STRENGTH_Q,
            title="Strength, only if Answer A or B is better: 1 = slight, 2 = clear, 3 = strong",
            description=(f"Answer only after {side_words}; it is ignored after \"{PREFERENCE_LABELS['tie']}\" "
                         f"or \"{PREFERENCE_LABELS['both_bad']}\". Left empty it counts as "
                         f"{DEFAULT_STRENGTH} ({STRENGTH_LABELS[DEFAULT_STRENGTH]})."),
            values=list(range(STRENGTH_RANGE[0], STRENGTH_RANGE[1] + 1)), required=False),
    ]
    for side in ("a", "b"):
        for key in RATING_KEYS:
            questions.append(rg.RatingQuestion(
                name=rating_question_name(side, key), title=f"Answer {side.upper()}: {RATING_TITLES[key]}",
                description="On every rating 1 is worst and 5 is best.",
                values=list(range(lo, hi + 1)), required=False))
    questions += [
        rg.MultiLabelQuestion(name=SAFETY_FLAG_Q, title="Flag this pair for safety review (optional)",
                              description="Tick every reason that applies; the study lead reviews flagged pairs.",
                              labels=dict(SAFETY_REASONS), required=False),
        rg.TextQuestion(name=CORRECTION_Q, title="Correction: rewrite one answer as it should read (optional)",
                        required=False, use_markdown=True),
        rg.LabelQuestion(name=CORRECTION_OF_Q, title="Correction of (which answer you rewrote)",
                         labels={"a": FIELD_TITLES["response_a"], "b": FIELD_TITLES["response_b"]}, required=False),
        rg.TextQuestion(name=RATIONALE_Q, title="Rationale: what decided it (optional)", required=False),
        rg.TextQuestion(name=DETAILS_Q, title="Review app details (filled in by clinalign; leave empty)",
                        description="Votes cast in the clinalign review app keep their details here.",
                        required=False),
    ]
    return rg.Settings(
        guidelines=GUIDELINES,
        fields=[
            rg.TextField(name="prompt", title=FIELD_TITLES["prompt"], use_markdown=False),
            rg.TextField(name="response_a", title=FIELD_TITLES["response_a"], use_markdown=True),
            rg.TextField(name="response_b", title=FIELD_TITLES["response_b"], use_markdown=True),
        ],
        questions=questions,
        metadata=[
            # Filterable by owners/admins; hidden from annotators so the review stays blind.
            rg.TermsMetadataProperty(name="pair_id", title="Pair id", visible_for_annotators=False),
            rg.TermsMetadataProperty(name="model_a", title="Model A", visible_for_annotators=False),
            rg.TermsMetadataProperty(name="model_b", title="Model B", visible_for_annotators=False),
            rg.TermsMetadataProperty(name="source", title="Source", visible_for_annotators=False),
            rg.IntegerMetadataProperty(name=PRIORITY_META, title=PRIORITY_TITLE, visible_for_annotators=True),
        ],
        allow_extra_metadata=True,
        distribution=rg.TaskDistribution(min_submitted=min_submitted),
    )


def question_names() -> set[str]:
    """Every question a dataset made by this version has."""
    names = {PREFERENCE_Q, STRENGTH_Q, CORRECTION_Q, CORRECTION_OF_Q, RATIONALE_Q, SAFETY_FLAG_Q, DETAILS_Q}
    names |= {rating_question_name(s, k) for s in ("a", "b") for k in RATING_KEYS}
    return names


def required_question_names() -> set[str]:
    """What an existing dataset must have to be read as clinalign's (older ones lack the safety
    flag, the details and the safety scale: they are read with the rubric they were made with)."""
    return {PREFERENCE_Q, STRENGTH_Q, CORRECTION_Q, CORRECTION_OF_Q, RATIONALE_Q}
