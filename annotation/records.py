"""The shared vocabulary: candidate pairs shown to clinicians and the feedback they give.

Pair ids are a hash of prompt and both responses, so storing the same pair twice stores it once,
in any store (SQLite, Argilla) and on any machine.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

from clinalign_base.clock import utc_now  # also imported from here

PREFERENCES = ("a", "b", "tie", "both_bad")
# All 1-5. accuracy and completeness: higher is better; harm: higher is WORSE (1 = no risk of harm,
# 5 = severe harm), as the Argilla rubric, the review app and the reward heads read it.
RATING_KEYS = ("accuracy", "harm", "completeness")
RATING_RANGE = (1, 5)
STRENGTH_RANGE = (1, 3)
SIMULATED_PREFIX = "simulated:"
ORIGINS = ("annotation", "review", "import", "simulated")


def make_pair_id(prompt: str, response_a: str, response_b: str) -> str:
    digest = hashlib.sha256("\x1f".join((prompt, response_a, response_b)).encode("utf-8"))
    return "pair-" + digest.hexdigest()[:20]


@dataclass(frozen=True)
class CandidatePair:
    """Two responses to one prompt, with where they came from."""

    prompt: str
    response_a: str
    response_b: str
    model_a: str
    model_b: str
    generation: dict[str, Any] = field(default_factory=dict)
    prompt_id: str | None = None
    reference: str | None = None  # an expert reference answer, when the prompt set has one
    source: str = "generated"
    created_at: str = field(default_factory=utc_now)

    def __post_init__(self) -> None:
        for name in ("prompt", "response_a", "response_b"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{name} is empty")
        if self.response_a.strip() == self.response_b.strip():
            raise ValueError("response_a and response_b are identical")

    @property
    def id(self) -> str:
        return make_pair_id(self.prompt, self.response_a, self.response_b)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CandidatePair:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


@dataclass(frozen=True)
class Feedback:
    """One clinician's judgement of one pair.

    `preference` is in the pair's own a/b terms (the review app un-swaps displayed sides before
    storing). `ratings` maps "a"/"b" to {accuracy, harm, completeness} on 1-5, each optional.
    `correction` is a clinician's rewrite of `correction_of` ("a" or "b"); it becomes a pair
    (chosen = correction, rejected = original) at export.
    """

    pair_id: str
    annotator_id: str
    preference: str
    strength: int = 2
    ratings: dict[str, dict[str, int]] = field(default_factory=dict)
    correction: str | None = None
    correction_of: str | None = None
    rationale: str | None = None
    origin: str = "annotation"
    flagged: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
    submitted_at: str = field(default_factory=utc_now)

    def __post_init__(self) -> None:
        problems = validate_feedback_fields(self)
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def simulated(self) -> bool:
        return self.annotator_id.startswith(SIMULATED_PREFIX)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Feedback:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


def validate_feedback_fields(fb: Feedback) -> list[str]:
    """Every problem with a feedback record, as short sentences (empty when valid)."""
    problems: list[str] = []
    if not isinstance(fb.pair_id, str) or not fb.pair_id.strip():
        problems.append("pair_id is empty")
    if not isinstance(fb.annotator_id, str) or not fb.annotator_id.strip():
        problems.append("annotator_id is empty")
    if fb.preference not in PREFERENCES:
        problems.append(f"preference must be one of {', '.join(PREFERENCES)}, got {fb.preference!r}")
    lo, hi = STRENGTH_RANGE
    if not isinstance(fb.strength, int) or isinstance(fb.strength, bool) or not lo <= fb.strength <= hi:
        problems.append(f"strength must be an integer {lo}-{hi}, got {fb.strength!r}")
    if not isinstance(fb.ratings, dict):
        problems.append("ratings must be an object like {\"a\": {\"accuracy\": 4}}")
    else:
        lo, hi = RATING_RANGE
        for side, values in fb.ratings.items():
            if side not in ("a", "b") or not isinstance(values, dict):
                problems.append(f"ratings keys must be 'a'/'b' mapping to objects, got {side!r}")
                continue
            for key, value in values.items():
                if key not in RATING_KEYS:
                    problems.append(f"unknown rating '{key}' (expected {', '.join(RATING_KEYS)})")
                elif not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
                    problems.append(f"rating {side}.{key} must be an integer {lo}-{hi}, got {value!r}")
    if fb.correction is not None:
        if not isinstance(fb.correction, str) or not fb.correction.strip():
            problems.append("correction is empty (omit it or give text)")
        if fb.correction_of not in ("a", "b"):
            problems.append("correction_of must be 'a' or 'b' when a correction is given")
    if fb.origin not in ORIGINS:
        problems.append(f"origin must be one of {', '.join(ORIGINS)}, got {fb.origin!r}")
    if fb.origin == "simulated" and not fb.annotator_id.startswith(SIMULATED_PREFIX):
        problems.append(f"simulated feedback needs an annotator_id starting with '{SIMULATED_PREFIX}'")
    if isinstance(fb.annotator_id, str) and fb.annotator_id.startswith(SIMULATED_PREFIX) and fb.origin != "simulated":
        problems.append("annotator ids starting with 'simulated:' are reserved for simulated feedback")
    return problems
