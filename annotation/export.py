"""Clinicians' feedback → preference dataset.

Per pair: a majority vote over annotators. Ties and both-bad are never turned into pairs (they are
counted in the report). Strength becomes the margin; agreement is the winner's share of votes. A
clinician's correction becomes its own pair (chosen = correction, rejected = the original).
Simulated feedback is only used when asked for, never on a pair that has human feedback, and its
rows say so in `source`.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from statistics import mean
from typing import Any

from annotation.records import RATING_KEYS, SIMULATED_PREFIX, CandidatePair, Feedback


@dataclass
class ExportReport:
    pairs_seen: int = 0
    pairs_exported: int = 0
    excluded: Counter = field(default_factory=Counter)
    corrections: int = 0
    seed_rows: int = 0
    flagged: int = 0
    simulated_votes_ignored: int = 0
    feedback_by_annotator: Counter = field(default_factory=Counter)
    rows_by_source: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {"pairs_seen": self.pairs_seen, "pairs_exported": self.pairs_exported,
                "excluded": dict(self.excluded), "corrections": self.corrections, "seed_rows": self.seed_rows,
                "flagged_for_safety_review": self.flagged,
                "simulated_votes_ignored": self.simulated_votes_ignored,
                "feedback_by_annotator": dict(self.feedback_by_annotator),
                "rows_by_source": dict(self.rows_by_source)}


def _mean_ratings(votes: list[Feedback], side: str) -> str:
    per_key = {k: [v.ratings[side][k] for v in votes if side in v.ratings and k in v.ratings[side]]
               for k in RATING_KEYS}
    means = {k: round(mean(vals), 3) for k, vals in per_key.items() if vals}
    return json.dumps(means) if means else ""


def _source(votes: list[Feedback]) -> str:
    if all(v.simulated for v in votes):
        names = sorted({v.annotator_id[len(SIMULATED_PREFIX):] for v in votes})
        return "simulated:" + "+".join(names)
    origins = {"review" if v.origin == "review" else "clinician" for v in votes}
    return "+".join(sorted(origins))


def majority(votes: list[Feedback]) -> tuple[str | None, str]:
    """The winning side ('a'/'b') or None with the reason the pair is not exported."""
    counts = Counter(v.preference for v in votes)
    ranked = counts.most_common()
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        return None, "no_majority"
    label = ranked[0][0]
    if label in ("tie", "both_bad"):
        return None, label
    return label, ""


def pair_row(pair: CandidatePair, votes: list[Feedback], winner: str) -> dict[str, Any]:
    loser = "b" if winner == "a" else "a"
    signed = [v.strength if v.preference == winner else -v.strength if v.preference == loser else 0 for v in votes]
    text = {"a": pair.response_a, "b": pair.response_b}
    return {"prompt": pair.prompt, "chosen": text[winner], "rejected": text[loser],
            "margin": max(0.0, round(mean(signed), 4)), "source": _source(votes), "pair_id": pair.id,
            "n_annotators": len(votes),
            "agreement": round(sum(v.preference == winner for v in votes) / len(votes), 4),
            "ratings_chosen": _mean_ratings(votes, winner), "ratings_rejected": _mean_ratings(votes, loser),
            "annotators": sorted(v.annotator_id for v in votes)}


def correction_row(pair: CandidatePair, fb: Feedback) -> dict[str, Any] | None:
    original = pair.response_a if fb.correction_of == "a" else pair.response_b
    if not fb.correction or fb.correction.strip() == original.strip():
        return None
    return {"prompt": pair.prompt, "chosen": fb.correction, "rejected": original, "margin": float(fb.strength),
            "source": "correction:simulated" if fb.simulated else "correction", "pair_id": pair.id,
            "n_annotators": 1, "agreement": 1.0, "ratings_chosen": "",
            "ratings_rejected": _mean_ratings([fb], fb.correction_of), "annotators": [fb.annotator_id]}


def seed_rows(pairs: Iterable[CandidatePair]) -> list[dict[str, Any]]:
    """Expert reference answer (chosen) vs the model's draft (rejected), for pairs that carry one.

    This is exactly how a clinician's correction becomes a pair; the source names the reference set.
    """
    rows = []
    for pair in pairs:
        if pair.reference and pair.reference.strip() and pair.reference.strip() != pair.response_a.strip():
            origin = pair.source.split(":", 1)[-1] if pair.source.startswith("generated:") else pair.source
            rows.append({"prompt": pair.prompt, "chosen": pair.reference, "rejected": pair.response_a,
                         "margin": 1.0, "source": f"seed:{origin}-reference", "pair_id": pair.id,
                         "n_annotators": 0, "agreement": 1.0, "ratings_chosen": "", "ratings_rejected": "",
                         "annotators": []})
    return rows


def build_preference_rows(pairs: Iterable[CandidatePair], feedback: Iterable[Feedback], *,
                          include_simulated: bool = False, include_seeds: bool = False,
                          ) -> tuple[list[dict[str, Any]], ExportReport]:
    # Content-hash order: a store lists pairs by a timestamp to the second, so the same pairs stored
    # across a second boundary would otherwise export in another order and train another model.
    pairs = sorted(pairs, key=lambda p: p.id)
    by_pair: dict[str, list[Feedback]] = defaultdict(list)
    report = ExportReport(pairs_seen=len(pairs))
    for fb in feedback:
        by_pair[fb.pair_id].append(fb)
        report.feedback_by_annotator[fb.annotator_id] += 1
        report.flagged += fb.flagged
    rows: list[dict[str, Any]] = []
    for pair in pairs:
        votes = by_pair.get(pair.id, [])
        human = [v for v in votes if not v.simulated]
        if human:
            report.simulated_votes_ignored += len(votes) - len(human)
            votes = human
        elif not include_simulated:
            report.simulated_votes_ignored += len(votes)
            votes = []
        if not votes:
            report.excluded["unannotated"] += 1
            continue
        winner, reason = majority(votes)
        if winner is None:
            report.excluded[reason] += 1
        else:
            rows.append(pair_row(pair, votes, winner))
            report.pairs_exported += 1
        for fb in votes:
            if fb.correction and (row := correction_row(pair, fb)):
                rows.append(row)
                report.corrections += 1
    if include_seeds:
        seeds = seed_rows(pairs)
        rows.extend(seeds)
        report.seed_rows = len(seeds)
    report.rows_by_source.update(r["source"] for r in rows)
    return rows, report
