"""Leak-free prompt splits for a round: train / reward-validation / test, disjoint by prompt, by near-duplicate
group and by normalised text, stratified by prompt set and source, deterministic for a seed."""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from itertools import combinations
from typing import Any

from align.prompts import Prompt

SPLITS: tuple[str, ...] = ("train", "rm_val", "test")
DEFAULT_FRACTIONS: dict[str, float] = {"train": 0.6, "rm_val": 0.1, "test": 0.3}
DEFAULT_THRESHOLD: float = 0.8
_NON_ALNUM = re.compile(r"[\W_]+")


def normalise(text: str) -> str:
    """Lower-case, alphanumerics only (Unicode-aware), single spaces, no leading/trailing space."""
    return _NON_ALNUM.sub(" ", text.lower()).strip()


def _shingles(norm: str) -> frozenset[tuple[str, ...]]:
    words = norm.split()
    if len(words) < 3:  # too short for trigrams: compare bags of words instead
        return frozenset((w,) for w in words)
    return frozenset(tuple(words[i:i + 3]) for i in range(len(words) - 2))


def _seeded_hash(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


# --- which prompts must stay together -------------------------------------------------------------------------

def _bucket_pairs(keys: Sequence[str | None]) -> set[tuple[int, int]]:
    """Index pairs (i < j) whose key is equal and non-empty."""
    buckets: dict[str, list[int]] = defaultdict(list)
    for i, k in enumerate(keys):
        if k:
            buckets[k].append(i)
    return {pair for members in buckets.values() for pair in combinations(members, 2)}


def _jaccard_pairs(shingles: Sequence[frozenset], threshold: float) -> set[tuple[int, int]]:
    """Index pairs (i < j) with shingle Jaccard >= threshold. An inverted index means only prompts sharing at
    least one shingle are ever compared, instead of all n^2/2 pairs."""
    index: dict[tuple[str, ...], list[int]] = defaultdict(list)
    pairs: set[tuple[int, int]] = set()
    for j, sh in enumerate(shingles):
        if not sh:
            continue
        shared: Counter[int] = Counter(i for s in sh for i in index.get(s, ()))
        for i, inter in shared.items():
            if inter / (len(shingles[i]) + len(sh) - inter) >= threshold:
                pairs.add((i, j))
        for s in sh:
            index[s].append(j)
    return pairs


def _related_pairs(prompts: Sequence[Prompt], threshold: float) -> set[tuple[int, int]]:
    """Direct 'must not straddle' edges: same group field, same normalised text, or near-duplicate text."""
    norms = [normalise(p.text) for p in prompts]
    group_keys = [normalise(p.group) if p.group else None for p in prompts]
    return (_bucket_pairs(group_keys) | _bucket_pairs(norms)
            | _jaccard_pairs([_shingles(n) for n in norms], threshold))


def _components(n: int, edges: Iterable[tuple[int, int]]) -> list[int]:
    """Union-find root per index."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]  # path halving keeps chains short
            i = parent[i]
        return i

    for i, j in edges:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    return [find(i) for i in range(n)]


def near_duplicate_groups(prompts: Sequence[Prompt], *, threshold: float = DEFAULT_THRESHOLD) -> dict[str, str]:
    """prompt id -> group key, by union-find over: same `group` field (normalised, so case-insensitive), same
    normalised text, and Jaccard >= threshold of word 3-shingles of the normalised text (unigrams for texts under
    three words). The key is the smallest prompt id of the component, so it depends only on the input."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"near-duplicate threshold must be in (0, 1], got {threshold}")
    roots = _components(len(prompts), _related_pairs(prompts, threshold))
    members: dict[int, list[str]] = defaultdict(list)
    for i, root in enumerate(roots):
        members[root].append(prompts[i].id)
    return {pid: min(ids) for ids in members.values() for pid in ids}


# --- the split -------------------------------------------------------------------------------------------------

@dataclass
class PromptSplit:
    train: list[Prompt]
    rm_val: list[Prompt]
    test: list[Prompt]
    groups: dict[str, str] = field(default_factory=dict)  # prompt id -> group key it was assigned under
    strata: dict[str, str] = field(default_factory=dict)  # prompt id -> stratum
    seed: int = 0
    fractions: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_FRACTIONS))
    near_dup_threshold: float = DEFAULT_THRESHOLD

    def parts(self) -> dict[str, list[Prompt]]:
        return {name: getattr(self, name) for name in SPLITS}

    def overlap(self) -> int:
        """Number of prompt pairs in different splits that share a group field, a normalised text or are
        near-duplicates. Recomputed from the prompts themselves (not from `groups`), so it is a real leak check;
        any group straddling splits has at least one such direct pair."""
        labelled = [(name, p) for name, ps in self.parts().items() for p in ps]
        pairs = _related_pairs([p for _, p in labelled], self.near_dup_threshold)
        return sum(labelled[i][0] != labelled[j][0] for i, j in pairs)

    def summary(self) -> dict[str, Any]:
        """JSON-able description for the round manifest."""
        parts = self.parts()
        per_stratum: dict[str, dict[str, int]] = {}
        for name, ps in parts.items():
            for p in ps:
                counts = per_stratum.setdefault(self.strata.get(p.id, p.source or ""), dict.fromkeys(SPLITS, 0))
                counts[name] += 1
        return {
            "seed": self.seed,
            "fractions": dict(self.fractions),
            "near_dup_threshold": self.near_dup_threshold,
            "sizes": {name: len(ps) for name, ps in parts.items()},
            "strata": dict(sorted(per_stratum.items())),
            "n_groups": {name: len({self.groups.get(p.id, p.id) for p in ps}) for name, ps in parts.items()},
            "overlap": self.overlap(),
            "sha256": {name: hashlib.sha256("\n".join(sorted(p.id for p in ps)).encode()).hexdigest()
                       for name, ps in parts.items()},
            "ids": {name: [p.id for p in ps] for name, ps in parts.items()},
        }


def _check_fractions(fractions: dict[str, float] | None) -> dict[str, float]:
    if fractions is None:
        return dict(DEFAULT_FRACTIONS)
    unknown = sorted(set(fractions) - set(SPLITS))
    if unknown:
        raise ValueError(f"unknown split name(s) in fractions: {', '.join(unknown)} (known: {', '.join(SPLITS)})")
    if any(not isinstance(v, (int, float)) or math.isnan(v) or v < 0 for v in fractions.values()):
        raise ValueError(f"split fractions must be non-negative numbers, got {fractions}")
    total = sum(fractions.values())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {total:g} from {fractions}")
    return {name: float(fractions.get(name, 0.0)) for name in SPLITS}


def _flatten(prompt_sets: Sequence[tuple[str, Sequence[Prompt]]]) -> tuple[list[Prompt], dict[str, str]]:
    """All prompts in input order plus their strata; refuses duplicate ids, since every split record is keyed
    by id and a repeated id would silently merge two prompts."""
    prompts: list[Prompt] = []
    strata: dict[str, str] = {}
    seen: dict[str, str] = {}
    for set_name, ps in prompt_sets:
        for p in ps:
            if p.id in seen:
                raise ValueError(f"duplicate prompt id {p.id!r} (in set {seen[p.id]!r} and set {set_name!r}); "
                                 "prompt ids must be unique across sets, e.g. qualify them with disambiguate_ids()")
            seen[p.id] = set_name
            prompts.append(p)
            strata[p.id] = f"{set_name}:{p.source}" if p.source else set_name
    return prompts, strata


def _deal(groups: list[list[Prompt]], fractions: dict[str, float]) -> dict[str, str]:
    """Assign whole groups (already in seeded order) of one stratum: each goes to the split furthest below its
    share of the prompts dealt so far, counting the group itself. Ties go to the earlier split name."""
    counts = dict.fromkeys(SPLITS, 0)
    assigned: dict[str, str] = {}
    for members in groups:
        total = sum(counts.values()) + len(members)
        target = max(SPLITS, key=lambda s: (fractions[s] * total - counts[s], -SPLITS.index(s)))
        counts[target] += len(members)
        assigned.update((p.id, target) for p in members)
    return assigned


def split_prompts(prompt_sets: Sequence[tuple[str, Sequence[Prompt]]], *, fractions: dict[str, float] | None = None,
                  seed: int = 0, near_dup_threshold: float = DEFAULT_THRESHOLD) -> PromptSplit:
    """Split [(set_name, prompts), ...] into train / rm_val / test by whole near-duplicate groups, stratified by
    f"{set_name}:{source}" (or set_name when a prompt has no source). A group spanning strata is dealt in the
    stratum of its first prompt. Each split keeps the input order of its prompts."""
    fracs = _check_fractions(fractions)
    prompts, strata = _flatten(prompt_sets)
    groups = near_duplicate_groups(prompts, threshold=near_dup_threshold)
    members: dict[str, list[Prompt]] = defaultdict(list)
    for p in prompts:
        members[groups[p.id]].append(p)
    by_stratum: dict[str, list[str]] = defaultdict(list)
    for key, ps in members.items():
        by_stratum[strata[ps[0].id]].append(key)
    assigned: dict[str, str] = {}
    for keys in by_stratum.values():
        keys.sort(key=lambda k: (_seeded_hash(seed, k), k))
        assigned.update(_deal([members[k] for k in keys], fracs))
    parts = {name: [p for p in prompts if assigned[p.id] == name] for name in SPLITS}
    return PromptSplit(**parts, groups=groups, strata=strata, seed=seed, fractions=fracs,
                       near_dup_threshold=near_dup_threshold)


# --- helpers for callers ---------------------------------------------------------------------------------------

def _largest_remainder(sizes: dict[str, int], limit: int) -> dict[str, int]:
    """Integer quotas proportional to sizes, summing to limit (Hamilton's method; ties by stratum name)."""
    total = sum(sizes.values())
    exact = {k: limit * n / total for k, n in sizes.items()}
    quota = {k: math.floor(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: (quota[k] - exact[k], k))[:limit - sum(quota.values())]:
        quota[k] += 1
    return quota


def take(split_prompts: Sequence[Prompt], limit: int | None, *, seed: int = 0) -> list[Prompt]:
    """At most `limit` prompts of one split, allocated to sources in proportion to their size and picked within
    a source by seeded hash of the id; returned in the split's original order. None means the whole split."""
    if limit is None or limit >= len(split_prompts):
        return list(split_prompts)
    if limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    by_source: dict[str, list[int]] = defaultdict(list)  # source -> positions in the split
    for i, p in enumerate(split_prompts):
        by_source[p.source or ""].append(i)
    quota = _largest_remainder({k: len(v) for k, v in by_source.items()}, limit)
    kept: set[int] = set()
    for source, positions in by_source.items():
        ranked = sorted(positions, key=lambda i: (_seeded_hash(seed, split_prompts[i].id), i))
        kept.update(ranked[:quota[source]])
    return [p for i, p in enumerate(split_prompts) if i in kept]


def disambiguate_ids(prompts: Sequence[Prompt]) -> list[Prompt]:
    """Prompts whose id repeats get it qualified as f"{source}/{id}" (MedQuAD question ids are only unique
    within a sub-collection); a still-repeated id gets a "#k" suffix. Unique ids are left untouched."""
    counts = Counter(p.id for p in prompts)
    renamed = [replace(p, id=f"{p.source}/{p.id}") if counts[p.id] > 1 and p.source else p for p in prompts]
    seen: Counter[str] = Counter()
    out: list[Prompt] = []
    for p in renamed:
        seen[p.id] += 1
        out.append(replace(p, id=f"{p.id}#{seen[p.id]}") if seen[p.id] > 1 else p)
    return out
