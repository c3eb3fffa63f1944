"""Inter-annotator agreement on clinicians' feedback, from any store's feedback list.

- Krippendorff's alpha (the `krippendorff` package): nominal on the preference (a/b/tie/both_bad),
  ordinal on each rating criterion (accuracy, harm, completeness; the two answers of a pair are
  separate units). Only pairs judged by two or more annotators carry information; alpha is None
  when there are none, or when every judgement used one single value (alpha is 0/0 there).
- Pairwise observed agreement on the preference, beside alpha, because alpha is unstable on
  small, one-sided samples.
- Per annotator: how often they agree with the consensus of the *other* annotators of the same
  pair (leave-one-out majority; pairs where the others are split evenly are left out), so a
  clinician's own vote never counts towards the consensus they are measured against.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from itertools import combinations
from typing import Any

import numpy as np

from annotation.records import PREFERENCES, RATING_KEYS, RATING_RANGE, Feedback

_PREF_CODE = {p: i for i, p in enumerate(PREFERENCES)}


def latest_per_annotator(feedback: Iterable[Feedback]) -> dict[str, dict[str, Feedback]]:
    """{pair_id: {annotator_id: feedback}}, keeping the latest when a store returned repeats."""
    by_pair: dict[str, dict[str, Feedback]] = defaultdict(dict)
    for fb in sorted(feedback, key=lambda f: f.submitted_at):
        by_pair[fb.pair_id][fb.annotator_id] = fb
    return dict(by_pair)


def krippendorff_alpha(units: list[dict[str, Any]], level: str, domain: list[Any] | None = None) -> float | None:
    """Alpha over units given as {annotator: value}; None when it is undefined."""
    import krippendorff

    coders = sorted({c for u in units for c in u})
    pairable = [u for u in units if len(u) >= 2]
    if len(coders) < 2 or not pairable:
        return None
    values = {v for u in pairable for v in u.values()}
    if len(values) < 2:
        return None  # expected disagreement is 0: alpha is 0/0, not 1
    matrix = np.full((len(coders), len(units)), np.nan)
    index = {c: i for i, c in enumerate(coders)}
    for j, unit in enumerate(units):
        for coder, value in unit.items():
            matrix[index[coder], j] = value
    kwargs: dict[str, Any] = {"reliability_data": matrix, "level_of_measurement": level}
    if domain is not None:
        kwargs["value_domain"] = domain
    return float(krippendorff.alpha(**kwargs))


def pairwise_agreement(units: list[dict[str, Any]]) -> float | None:
    agree = total = 0
    for unit in units:
        for x, y in combinations(unit.values(), 2):
            total += 1
            agree += x == y
    return agree / total if total else None


def _consensus(values: list[str]) -> str | None:
    if not values:
        return None
    ranked = Counter(values).most_common()
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        return None  # the others are split evenly: no consensus to agree with
    return ranked[0][0]


def per_annotator(by_pair: dict[str, dict[str, Feedback]]) -> dict[str, dict[str, Any]]:
    stats: dict[str, dict[str, Any]] = defaultdict(lambda: {"n_feedback": 0, "n_compared": 0, "n_agree": 0})
    for judgements in by_pair.values():
        for annotator, fb in judgements.items():
            row = stats[annotator]
            row["n_feedback"] += 1
            consensus = _consensus([o.preference for a, o in judgements.items() if a != annotator])
            if consensus is not None:
                row["n_compared"] += 1
                row["n_agree"] += fb.preference == consensus
    for row in stats.values():
        row["agreement_with_consensus"] = row["n_agree"] / row["n_compared"] if row["n_compared"] else None
    return dict(sorted(stats.items()))


def agreement_report(feedback: Iterable[Feedback], *, include_simulated: bool = True) -> dict[str, Any]:
    """Everything the `clinalign annotate agreement` table and JSON show."""
    items = [f for f in feedback if include_simulated or not f.simulated]
    by_pair = latest_per_annotator(items)
    pref_units = [{a: _PREF_CODE[f.preference] for a, f in j.items()} for j in by_pair.values()]
    lo, hi = RATING_RANGE
    ratings: dict[str, dict[str, Any]] = {}
    for key in RATING_KEYS:
        units = [{a: f.ratings[side][key] for a, f in j.items() if key in f.ratings.get(side, {})}
                 for j in by_pair.values() for side in ("a", "b")]
        units = [u for u in units if u]
        ratings[key] = {"alpha": krippendorff_alpha(units, "ordinal", list(range(lo, hi + 1))),
                        "n_units": len(units), "n_units_multi": sum(len(u) >= 2 for u in units),
                        "n_ratings": sum(len(u) for u in units)}
    n_annot = Counter(len(j) for j in by_pair.values())
    return {
        "counts": {
            "feedback": sum(len(j) for j in by_pair.values()),
            "pairs": len(by_pair),
            "annotators": len({a for j in by_pair.values() for a in j}),
            "pairs_with_2plus": sum(v for k, v in n_annot.items() if k >= 2),
            "annotators_per_pair": {str(k): v for k, v in sorted(n_annot.items())},
            "preferences": {p: sum(f.preference == p for j in by_pair.values() for f in j.values())
                            for p in PREFERENCES},
        },
        "preference": {
            "alpha": krippendorff_alpha(pref_units, "nominal", list(range(len(PREFERENCES)))),
            "pairwise_agreement": pairwise_agreement(pref_units),
            "level": "nominal",
        },
        "ratings": ratings,
        "annotators": per_annotator(by_pair),
    }
