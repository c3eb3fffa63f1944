from __future__ import annotations

import hashlib
import json
from collections import defaultdict

import pytest

from align.evaluation.splits import (
    SPLITS,
    PromptSplit,
    disambiguate_ids,
    near_duplicate_groups,
    normalise,
    split_prompts,
    take,
)
from align.prompts import Prompt, load_prompts
from tests.conftest import REPO

MEDQUAD = REPO / "data/medquad/medquad_prompts_500.jsonl"
KQA = REPO / "data/kqa/kqa_physician_answers_201.jsonl"


def P(pid: str, text: str, *, source: str | None = None, group: str | None = None) -> Prompt:
    return Prompt(id=pid, text=text, source=source, group=group)


def _fillers(n: int, source: str | None = None) -> list[Prompt]:
    """Unrelated singleton prompts, so a pair has real chances of landing in different splits."""
    return [P(f"f{i:03d}", f"filler question number {i} about topic {i * 7919 % 1000}", source=source)
            for i in range(n)]


def _split_of(split: PromptSplit) -> dict[str, str]:
    return {p.id: name for name, ps in split.parts().items() for p in ps}


@pytest.fixture(scope="module")
def real_sets() -> list[tuple[str, list[Prompt]]]:
    # MedQuAD question ids are only unique within a sub-collection, so qualify the few that repeat.
    return [("medquad", disambiguate_ids(load_prompts(str(MEDQUAD)))), ("kqa", load_prompts(str(KQA)))]


@pytest.fixture(scope="module")
def real_split(real_sets) -> PromptSplit:
    return split_prompts(real_sets, seed=0)


# --- real data ---------------------------------------------------------------------------------------------------

def test_real_split_is_complete_disjoint_and_leak_free(real_sets, real_split):
    ids = [p.id for _, ps in real_sets for p in ps]
    parts = [{p.id for p in ps} for ps in real_split.parts().values()]
    assert sum(map(len, parts)) == len(ids) == len(set().union(*parts))
    assert all(not (a & b) for i, a in enumerate(parts) for b in parts[i + 1:])
    assert real_split.overlap() == 0
    assert all(len(ps) > 0 for ps in real_split.parts().values())


def test_real_split_keeps_each_medquad_focus_in_one_split(real_sets, real_split):
    where = _split_of(real_split)
    splits_by_focus: dict[str, set[str]] = defaultdict(set)
    for p in real_sets[0][1]:
        splits_by_focus[p.group.lower()].add(where[p.id])
    assert len(splits_by_focus) > 400
    assert all(len(s) == 1 for s in splits_by_focus.values())
    assert any(len([p for p in real_sets[0][1] if p.group.lower() == f]) > 1 for f in splits_by_focus)


def test_real_split_tracks_fractions_per_stratum(real_split):
    summary = real_split.summary()
    strata = summary["strata"]
    assert "kqa" in strata and "medquad:GHR" in strata and len(strata) == 10
    for counts in strata.values():
        n = sum(counts.values())
        for name, frac in summary["fractions"].items():
            # Whole groups (up to 3-4 prompts) are dealt, so a stratum can miss its share by a few prompts.
            assert abs(counts[name] - frac * n) <= 5, (counts, n)
    sizes, total = summary["sizes"], sum(summary["sizes"].values())
    assert abs(sizes["train"] / total - 0.6) < 0.02 and abs(sizes["test"] / total - 0.3) < 0.02


def test_real_split_is_deterministic_and_seed_dependent(real_sets, real_split):
    again = split_prompts(real_sets, seed=0)
    assert again.summary()["ids"] == real_split.summary()["ids"]
    other = split_prompts(real_sets, seed=1)
    assert other.summary()["sha256"]["test"] != real_split.summary()["sha256"]["test"]
    assert other.overlap() == 0


def test_summary_is_json_and_self_consistent(real_split):
    summary = json.loads(json.dumps(real_split.summary()))
    assert summary["overlap"] == 0 and summary["seed"] == 0
    for name in SPLITS:
        ids = summary["ids"][name]
        assert ids == [p.id for p in getattr(real_split, name)]
        assert summary["sizes"][name] == len(ids)
        assert summary["sha256"][name] == hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()
        assert summary["n_groups"][name] <= len(ids)
        assert sum(c[name] for c in summary["strata"].values()) == len(ids)


# --- near duplicates ---------------------------------------------------------------------------------------------

def test_normalise():
    assert normalise("  What are the Symptoms of ASTHMA ?? ") == "what are the symptoms of asthma"
    assert normalise("Is (are) X-linked_thing\tinherited?") == "is are x linked thing inherited"


def test_near_duplicate_groups_links_group_text_and_shingles():
    prompts = [
        P("b", "What is asthma?", group="Asthma"),
        P("a", "How is asthma treated?", group="ASTHMA "),          # same group field, other case
        P("c", "What are the symptoms of asthma?"),
        P("d", "what are the symptoms of asthma ?"),                 # same normalised text
        P("e", "What are the symptoms of severe asthma in adults over sixty?"),
        P("f", "What are the symptoms of severe asthma in adults over sixty years?"),  # 3-shingle Jaccard 9/10
        P("g", "asthma inhalers"),
        P("h", "Inhalers, asthma!"),                                 # < 3 words: unigram Jaccard 1
        P("i", "What are the symptoms of diabetes?"),                # shares shingles, Jaccard 0.6
    ]
    groups = near_duplicate_groups(prompts)
    assert groups["a"] == groups["b"] == "a"  # key = smallest id in the component
    assert groups["c"] == groups["d"] == "c"
    assert groups["e"] == groups["f"] == "e"
    assert groups["g"] == groups["h"] == "g"
    assert groups["i"] == "i"
    assert len(set(groups.values())) == 5
    assert near_duplicate_groups(prompts, threshold=0.95)["f"] == "f"  # 0.9 is below a stricter threshold


def test_text_near_duplicates_never_straddle_a_split():
    pair = [P("q1", "What are the symptoms of asthma?"), P("q2", "What are the symptoms of asthma ?"),
            P("q3", "What are the symptoms of severe asthma in elderly adults?"),
            P("q4", "what are the symptoms of severe asthma in elderly adults today")]
    for seed in range(10):
        split = split_prompts([("s", _fillers(40) + pair)], seed=seed)
        where = _split_of(split)
        assert where["q1"] == where["q2"] and where["q3"] == where["q4"]
        assert split.groups["q2"] == "q1" and split.groups["q4"] == "q3"
        assert split.overlap() == 0


def test_group_spanning_strata_is_dealt_whole_in_first_stratum():
    a = [P("a1", "Tell me about gout", source="X", group="Gout")] + _fillers(20, source="X")
    b = [P("b1", "Is gout inherited?", group="gout")] + [P(f"k{i}", f"other patient question {i}") for i in range(20)]
    for seed in range(10):
        split = split_prompts([("one", a), ("two", b)], seed=seed)
        where = _split_of(split)
        assert where["a1"] == where["b1"]
        assert split.strata["a1"] == "one:X" and split.strata["b1"] == "two"


def test_singleton_groups_are_dealt_exactly_to_fractions():
    split = split_prompts([("s", _fillers(100))], fractions={"train": 0.5, "rm_val": 0.25, "test": 0.25}, seed=3)
    assert split.summary()["sizes"] == {"train": 50, "rm_val": 25, "test": 25}


# --- overlap is a real check -------------------------------------------------------------------------------------

def test_overlap_detects_leaks_without_trusting_groups():
    x1, x2 = P("x1", "What causes gout?", group="Gout"), P("x2", "How is gout treated?", group="gout")
    y1, y2 = P("y1", "Is celiac disease inherited?"), P("y2", "is CELIAC disease inherited")
    z = P("z", "What is the outlook for lupus?")
    # `groups` claims everything is separate; overlap() must not believe it.
    leaky = PromptSplit(train=[x1, y1], rm_val=[z], test=[x2, y2], groups={p.id: p.id for p in (x1, x2, y1, y2, z)})
    assert leaky.overlap() == 2
    assert leaky.summary()["overlap"] == 2
    assert PromptSplit(train=[x1, x2], rm_val=[z], test=[y1, y2]).overlap() == 0
    assert PromptSplit(train=[z], rm_val=[], test=[z]).overlap() == 1  # the same prompt in two splits


# --- bad input ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fractions, message", [
    ({"train": 0.6, "rm_val": 0.1, "test": 0.2}, r"sum to 1, got 0\.9"),
    ({"train": 0.6, "dev": 0.1, "test": 0.3}, r"unknown split name\(s\) in fractions: dev"),
    ({"train": 1.2, "rm_val": -0.2, "test": 0.0}, r"non-negative"),
])
def test_bad_fractions(fractions, message):
    with pytest.raises(ValueError, match=message):
        split_prompts([("s", _fillers(10))], fractions=fractions)


def test_duplicate_ids_across_sets_are_refused():
    with pytest.raises(ValueError, match=r"duplicate prompt id 'dup-1' \(in set 'a' and set 'b'\)"):
        split_prompts([("a", [P("dup-1", "first question")]), ("b", [P("dup-1", "second question")])])


def test_disambiguate_ids_qualifies_only_repeats():
    prompts = [P("1", "a", source="GHR"), P("1", "b", source="NINDS"), P("2", "c", source="GHR"),
               P("3", "d"), P("3", "e")]
    assert [p.id for p in disambiguate_ids(prompts)] == ["GHR/1", "NINDS/1", "2", "3", "3#2"]


# --- take --------------------------------------------------------------------------------------------------------

def test_take_is_a_deterministic_stratified_subset(real_split):
    train = real_split.train
    picked = take(train, 20, seed=0)
    assert len(picked) == 20 and picked == take(train, 20, seed=0)
    train_ids = [p.id for p in train]
    assert {p.id for p in picked} <= set(train_ids)
    positions = [train_ids.index(p.id) for p in picked]
    assert positions == sorted(positions)  # original order kept
    sources = {p.source for p in picked}
    assert None in sources and "GHR" in sources and "GARD" in sources and len(sources) >= 5
    assert {p.id for p in take(train, 20, seed=1)} != {p.id for p in picked}
    assert take(train, None) == train and take(train, 10_000) == train and take(train, 0) == []


def test_take_allocates_by_source_share():
    prompts = _fillers(60, source="A") + [P(f"b{i}", f"b question {i}", source="B") for i in range(30)]
    picked = take(prompts, 9, seed=0)
    assert sum(p.source == "A" for p in picked) == 6 and sum(p.source == "B" for p in picked) == 3
    with pytest.raises(ValueError, match="limit"):
        take(prompts, -1)
