"""A clearly labelled simulated annotator, for demos and tests only.

It prefers the response whose words overlap more with an expert reference answer (unigram F1),
which is a crude stand-in for a clinician. Its feedback carries `annotator_id` starting with
`simulated:` and `origin="simulated"`, and export never mixes it silently with human feedback.
"""

from __future__ import annotations

import re
from collections import Counter

from annotation.records import CandidatePair, Feedback

ANNOTATOR_ID = "simulated:reference-overlap"
_WORD = re.compile(r"[a-z0-9]+")


def unigram_f1(text: str, reference: str) -> float:
    a, b = Counter(_WORD.findall(text.lower())), Counter(_WORD.findall(reference.lower()))
    common = sum((a & b).values())
    if not common:
        return 0.0
    precision, recall = common / sum(a.values()), common / sum(b.values())
    return 2 * precision * recall / (precision + recall)


def judge(pair: CandidatePair, *, tie_margin: float = 0.01) -> Feedback | None:
    """Feedback on a pair that has a reference answer; None when there is nothing to compare with."""
    if not pair.reference:
        return None
    fa, fb = unigram_f1(pair.response_a, pair.reference), unigram_f1(pair.response_b, pair.reference)
    gap = abs(fa - fb)
    preference = "tie" if gap < tie_margin else ("a" if fa > fb else "b")
    strength = 1 if gap < 0.05 else 2 if gap < 0.15 else 3
    return Feedback(pair_id=pair.id, annotator_id=ANNOTATOR_ID, preference=preference, strength=strength,
                    rationale=f"unigram F1 with the reference: a={fa:.3f} b={fb:.3f}", origin="simulated",
                    meta={"f1_a": round(fa, 4), "f1_b": round(fb, 4)})
