"""Which unlabelled pairs a clinician's label teaches the reward model most (active selection).

Scores come in from outside (`annotation` imports neither `reward_models` nor `align`): for every
pair, the reward margin r(a) - r(b) of each ensemble member (one member for a single model).

Value of a label (in bits, higher = label first):
- P(a preferred) under the Bradley-Terry model is sigmoid(margin). The ensemble's mean probability
  p̄ near 0.5 means the model cannot tell the answers apart: entropy H(p̄) is 1 bit there and 0
  where it is sure.
- Disagreement: the mutual information H(p̄) - mean_m H(p_m) (BALD) is large when members are each
  sure but of different answers, i.e. where the training data left the model undecided rather
  than where the pair is a coin flip to everyone.
  value = H(p̄) + disagreement_weight * MI. The default weight is 0 (entropy of the ensemble's mean
  probability): in the simulated study (benchmarks/bench_active_selection.py, docs/reward-models.md)
  adding MI with weight 1 did worse than random; small bootstrap ensembles disagree mostly by chance.
- Representativeness (information density, Settles & Craven 2008): entropy alone also picks pairs that
  are hard because they are odd (a draft unlike any other), whose label teaches little about the rest.
  When every candidate carries `features` (the difference of the reward model's representations of
  its two answers), the value is multiplied by density**density_power, density being the mean squared
  cosine of the pair to all candidates (squared: a pair and its swap (b, a) are the same question),
  scaled to [0, 1] over the candidates. In the study this reached random selection's 400-label
  accuracy with 160 labels on seeds never used to choose it (entropy alone: 220).
Diversity: pairs are taken round by round over prompt groups (a prompt and its near-duplicates
form one group): round 1 takes the best pair of each group, round 2 the second best, and so on,
each round in value order, with at most `max_per_group` pairs of a group in the selection. So
the top of the queue spreads over prompts instead of spending 50 labels on one question.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

_NON_ALNUM = re.compile(r"[\W_]+")
NEAR_DUP_THRESHOLD = 0.8  # word-trigram Jaccard at which two prompts count as one question


@dataclass(frozen=True)
class Candidate:
    """One unlabelled pair with its members' reward margins r(a) - r(b)."""

    pair_id: str
    prompt: str
    margins: tuple[float, ...]
    group: str | None = None  # an explicit prompt group (e.g. prompt_id); else from the text
    features: tuple[float, ...] | None = None  # representation of a vs b (density weighting)


@dataclass(frozen=True)
class Selected:
    pair_id: str
    rank: int  # 1 = label first
    value: float
    p_a: float  # ensemble mean P(a preferred)
    entropy: float
    disagreement: float  # mutual information between the label and the member (bits)
    margin_std: float
    group: str
    density: float = 1.0  # representativeness in [0, 1] (1 when no features were given)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def binary_entropy(p: float) -> float:
    """Entropy in bits of a yes/no outcome with probability p."""
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def label_value(margins: Sequence[float], disagreement_weight: float = 0.0) -> tuple[float, float, float, float]:
    """(value, p̄, H(p̄), MI) of one pair's member margins."""
    if not margins:
        raise ValueError("a candidate needs at least one member margin")
    probs = [sigmoid(m) for m in margins]
    p_mean = sum(probs) / len(probs)
    entropy = binary_entropy(p_mean)
    mi = max(0.0, entropy - sum(binary_entropy(p) for p in probs) / len(probs))
    return entropy + disagreement_weight * mi, p_mean, entropy, mi


def density(features: Sequence[Sequence[float]]) -> list[float]:
    """Per candidate, the mean squared cosine to all candidates, min-max scaled to [0, 1] (all 1 if equal).

    mean_j cos²(i, j) = u_i·C·u_i with C the second moment of the unit vectors: O(n·d²), not O(n²·d)."""
    import numpy as np

    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError("features must be one equally long vector per candidate")
    u = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    d = np.einsum("ij,jk,ik->i", u, u.T @ u / len(u), u)
    span = float(d.max() - d.min())
    return [1.0] * len(d) if span <= 1e-12 else ((d - d.min()) / span).tolist()


def normalise(text: str) -> str:
    return _NON_ALNUM.sub(" ", text.lower()).strip()


def _shingles(norm: str) -> frozenset[tuple[str, ...]]:
    words = norm.split()
    if len(words) < 3:
        return frozenset((w,) for w in words)
    return frozenset(tuple(words[i:i + 3]) for i in range(len(words) - 2))


def prompt_groups(candidates: Sequence[Candidate], threshold: float = NEAR_DUP_THRESHOLD) -> dict[str, str]:
    """pair id -> group key: an explicit group, else the normalised prompt, near-duplicates merged.
    The same rule as the round's split (align.evaluation.splits), kept here without importing align."""
    keys = [c.group or "text:" + normalise(c.prompt) for c in candidates]
    distinct = sorted(set(keys))
    parent = {k: k for k in distinct}

    def find(k: str) -> str:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    # near-duplicate prompt texts join one group (inverted index over shingles: no n^2 scan)
    texts = {}
    for c, k in zip(candidates, keys, strict=True):
        texts.setdefault(k, _shingles(normalise(c.prompt)))
    index: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for k in distinct:
        sh = texts[k]
        shared: dict[str, int] = defaultdict(int)
        for s in sh:
            for other in index[s]:
                shared[other] += 1
        for other, inter in shared.items():
            if sh and inter / (len(sh) + len(texts[other]) - inter) >= threshold:
                parent[find(k)] = find(other)
        for s in sh:
            index[s].append(k)
    return {c.pair_id: find(k) for c, k in zip(candidates, keys, strict=True)}


def rank_candidates(candidates: Sequence[Candidate], n: int, *, max_per_group: int = 1,
                    disagreement_weight: float = 0.0, density_power: float = 1.0) -> list[Selected]:
    """The `n` pairs most worth a label, best first (the rules in the module docstring).

    Density weighting applies when every candidate has features and density_power > 0. Ties in value
    are broken by pair id, so the order is deterministic."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if max_per_group < 1:
        raise ValueError(f"max_per_group must be at least 1, got {max_per_group}")
    seen: set[str] = set()
    for c in candidates:
        if c.pair_id in seen:
            raise ValueError(f"pair {c.pair_id} is listed twice")
        seen.add(c.pair_id)
    if density_power < 0:
        raise ValueError(f"density_power must be >= 0, got {density_power}")
    groups = prompt_groups(candidates)
    use_density = density_power > 0 and all(c.features is not None for c in candidates)
    dens = density([c.features for c in candidates]) if use_density else [1.0] * len(candidates)  # type: ignore[misc]
    scored = []
    for c, d in zip(candidates, dens, strict=True):
        value, p, h, mi = label_value(c.margins, disagreement_weight)
        mean = sum(c.margins) / len(c.margins)
        std = math.sqrt(sum((m - mean) ** 2 for m in c.margins) / len(c.margins))
        scored.append(Selected(c.pair_id, 0, value * d ** density_power, p, h, mi, std, groups[c.pair_id], d))
    by_group: dict[str, list[Selected]] = defaultdict(list)
    for s in sorted(scored, key=lambda s: (-s.value, s.pair_id)):
        by_group[s.group].append(s)
    picked: list[Selected] = []
    for round_ in range(max_per_group):
        tier = [pairs[round_] for pairs in by_group.values() if len(pairs) > round_]
        picked += sorted(tier, key=lambda s: (-s.value, s.pair_id))
        if len(picked) >= n:
            break
    return [Selected(**{**s.to_dict(), "rank": i + 1}) for i, s in enumerate(picked[:n])]

