"""Active selection: the ranking rule, the label-first order in both stores, the review queue, the CLI."""

from __future__ import annotations

import json
import sqlite3
import warnings

import pytest

from annotation.active_selection import Candidate, density, label_value, prompt_groups, rank_candidates
from annotation.records import CandidatePair, Feedback
from annotation.review.queue import ReviewQueue
from annotation.sqlite_store import SCHEMA_VERSION, SQLiteStore
from clinalign_base.errors import InputError
from tests import argilla_fixtures
from tests.conftest import make_pair

argilla_stack = argilla_fixtures.argilla_stack  # only the Argilla test below starts the stack


# -- ranking -------------------------------------------------------------------------------------
def test_value_is_entropy_plus_disagreement():
    sure, coin = label_value([4.0]), label_value([0.0])
    split = label_value([3.0, -3.0], disagreement_weight=1.0)
    assert coin[0] == pytest.approx(1.0) and coin[3] == 0.0  # p = 0.5, one member: 1 bit, no disagreement
    assert sure[0] < 0.2
    assert split[1] == pytest.approx(0.5) and split[3] > 0.5  # members sure of opposite answers
    assert split[0] > coin[0]
    assert label_value([3.0, -3.0])[0] == pytest.approx(coin[0])  # default: entropy of the mean P(a) only


def test_selection_order_on_a_hand_built_case():
    c = [Candidate("p-sure", "Dose of aspirin for adults?", (3.0, 3.2)),
         Candidate("p-coin", "Dose of aspirin for adults?", (0.3, 0.5)),  # same prompt as p-sure
         Candidate("p-split", "Can I take ibuprofen with warfarin?", (2.5, -2.0)),
         Candidate("p-lean", "How is gout treated?", (0.8, 1.0)),
         Candidate("p-coin2", "dose of ASPIRIN for adults", (0.0, 0.05))]  # same prompt, other spelling
    ranked = rank_candidates(c, 5, max_per_group=2)
    # round 1: the best pair of each prompt in value order; round 2: the second best of each prompt
    assert [s.pair_id for s in ranked] == ["p-coin2", "p-split", "p-lean", "p-coin"]
    assert [s.rank for s in ranked] == [1, 2, 3, 4]
    assert ranked[1].margin_std == pytest.approx(2.25)
    # weighting the members' disagreement puts the pair they split on first
    bald = rank_candidates(c, 5, max_per_group=2, disagreement_weight=1.0)
    assert [s.pair_id for s in bald] == ["p-split", "p-coin2", "p-lean", "p-coin"]
    # one per prompt: the aspirin question gives only its best pair
    assert [s.pair_id for s in rank_candidates(c, 5)] == ["p-coin2", "p-split", "p-lean"]
    # the diversity rule can be relaxed but n still caps the list
    assert len(rank_candidates(c, 2, max_per_group=3)) == 2
    with pytest.raises(ValueError, match="listed twice"):
        rank_candidates(c + [c[0]], 3)


def test_density_puts_typical_pairs_before_odd_ones():
    # four pairs along one direction (two of them swapped: (b, a) is the same question), one odd pair
    feats = [(1.0, 0.1, 0.0), (-1.0, -0.1, 0.0), (0.9, 0.0, 0.1), (-1.1, 0.1, 0.0), (0.0, 0.0, 1.0)]
    d = density(feats)
    assert d[4] == 0.0 and max(d) == 1.0  # scaled to [0, 1]: the odd pair is the least typical
    assert min(d[:4]) > 0.9
    assert density([tuple(-x for x in f) if i == 0 else f for i, f in enumerate(feats)]) == pytest.approx(d)
    assert density([(1.0, 0.0)] * 3) == [1.0, 1.0, 1.0]  # all alike: no preference
    # equally uncertain pairs (same margins): the odd one drops to last; without features, order by id
    c = [Candidate(f"p{i}", f"question {i} about drug {i}?", (0.1, -0.1), features=f) for i, f in enumerate(feats)]
    ranked = rank_candidates(c, 5)
    assert ranked[-1].pair_id == "p4" and ranked[-1].value == 0.0 and ranked[-1].density == 0.0
    assert [s.pair_id for s in rank_candidates(c, 5, density_power=0.0)] == ["p0", "p1", "p2", "p3", "p4"]
    # one candidate without features: density is not applied to any (it cannot be compared)
    partial = c[:4] + [Candidate("p4", "question 4 about drug 4?", (0.1, -0.1))]
    assert all(s.density == 1.0 for s in rank_candidates(partial, 5))
    with pytest.raises(ValueError, match="density_power"):
        rank_candidates(c, 2, density_power=-1.0)


def test_reward_features_are_what_the_head_reads():
    import torch
    from transformers import AutoTokenizer

    from reward_models.backbones import BIENCODER_SEPARATOR, MINILM, load_biencoder, resolve_backbone
    from reward_models.formatting import RewardFormat
    from reward_models.scoring import RewardScorer

    prompts = ["How is gout treated?"] * 2 + ["What is the adult dose of paracetamol?"]
    answers = ["Colchicine or NSAIDs during a flare.", "Paris is in France.", "Up to 4 g a day in divided doses."]
    cross = RewardScorer(MINILM, allow_untrained=True, batch_size=2)  # BERT: classifier on the pooled [CLS]
    feats = torch.tensor(cross.features(prompts, answers))
    with torch.no_grad():
        assert cross.model.classifier(feats)[:, 0].tolist() == pytest.approx(cross.score(prompts, answers), abs=1e-4)
    path = resolve_backbone(MINILM)
    tok = AutoTokenizer.from_pretrained(path)
    bi = RewardScorer("mem", model=load_biencoder(path, tok, cosine_scale=10.0, dtype="float32"), tokenizer=tok,
                      fmt=RewardFormat(separator=BIENCODER_SEPARATOR, eos_token="[SEP]", max_length=4096))
    terms = torch.tensor(bi.features(prompts, answers))  # question x answer: the cosine's terms
    assert (10.0 * terms.sum(1)).tolist() == pytest.approx(bi.score(prompts, answers), abs=1e-4)
    # a decoder's head runs on every position: the features are the last real token's
    from transformers import LlamaForSequenceClassification

    from align.models import load_causal_lm, load_tokenizer
    from clinalign_base.models import TINY_LLAMA

    lm, ltok = load_causal_lm(TINY_LLAMA), load_tokenizer(TINY_LLAMA, padding_side="right")
    torch.manual_seed(0)
    seq = LlamaForSequenceClassification(lm.config.__class__(**{**lm.config.to_dict(), "num_labels": 1})).eval()
    dec = RewardScorer("mem", model=seq, tokenizer=ltok, fmt=RewardFormat(max_length=256), batch_size=3)
    hidden = torch.tensor(dec.features(prompts, answers))
    with torch.no_grad():
        assert seq.score(hidden)[:, 0].tolist() == pytest.approx(dec.score(prompts, answers), abs=1e-4)


def test_near_duplicate_prompts_and_explicit_groups():
    text = "What are the symptoms of Aarskog-Scott syndrome in children and adults today ?"
    c = [Candidate("a", text, (0.0,)), Candidate("b", text.replace("today", "now"), (0.0,)),
         Candidate("c", "How is gout treated?", (0.0,), group="q7"), Candidate("d", "Gout therapy?", (0.0,), group="q7")]
    groups = prompt_groups(c)
    assert groups["a"] == groups["b"] and groups["c"] == groups["d"] and groups["a"] != groups["c"]


# -- SQLite: the label-first order and its migration ---------------------------------------------
OLD_SCHEMA = """
CREATE TABLE pairs (id TEXT PRIMARY KEY, data TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE feedback (pair_id TEXT NOT NULL REFERENCES pairs(id), annotator_id TEXT NOT NULL,
    origin TEXT NOT NULL, data TEXT NOT NULL, submitted_at TEXT NOT NULL, PRIMARY KEY (pair_id, annotator_id));
CREATE INDEX feedback_annotator ON feedback(annotator_id);
"""


def test_old_store_file_is_migrated_and_keeps_its_data(tmp_path):
    path = tmp_path / "old.sqlite"
    pairs = [make_pair(i) for i in range(3)]
    conn = sqlite3.connect(path)  # a store as the previous version wrote it: no priorities, user_version 0
    conn.executescript(OLD_SCHEMA)
    conn.executemany("INSERT INTO pairs VALUES (?, ?, ?)",
                     [(p.id, json.dumps(p.to_dict()), p.created_at) for p in pairs])
    conn.execute("INSERT INTO feedback VALUES (?, ?, ?, ?, ?)",
                 (pairs[0].id, "dr-a", "annotation",
                  json.dumps(Feedback(pair_id=pairs[0].id, annotator_id="dr-a", preference="a").to_dict()), "t"))
    conn.commit()
    conn.close()

    with SQLiteStore(path) as store:
        assert store.counts() == {"pairs": 3, "feedback": 1, "annotators": 1}
        assert store.priorities() == {}
        assert store.set_priorities({pairs[2].id: 1, pairs[1].id: 2}) == 2
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    raw.close()
    with SQLiteStore(path) as store:  # reopening an up-to-date file changes nothing
        assert store.priorities() == {pairs[2].id: 1, pairs[1].id: 2}
        store.set_priorities({pairs[0].id: 1})  # a new selection replaces the old one
        assert store.priorities() == {pairs[0].id: 1}
        with pytest.raises(InputError, match="pair-nope"):
            store.set_priorities({"pair-nope": 1, pairs[1].id: 2})
        assert store.priorities() == {pairs[0].id: 1}  # all or nothing


# -- the review queue ----------------------------------------------------------------------------
def _vote(queue: ReviewQueue, user: str) -> str:
    ticket = queue.next_ticket(user)
    queue.vote(user, ticket.id, "A")
    return ticket.pair.id


def test_review_queue_serves_prioritised_pairs_first(tmp_path):
    store = SQLiteStore(tmp_path / "fb.sqlite")
    pairs = [make_pair(i) for i in range(6)]
    store.add_pairs(pairs)
    store.set_priorities({pairs[4].id: 1, pairs[2].id: 2})
    queue = ReviewQueue(store, seed=0, priority_votes=2)
    assert [_vote(queue, "dr-a") for _ in range(2)] == [pairs[4].id, pairs[2].id]
    assert _vote(queue, "dr-b") == pairs[4].id  # still first: it has 1 of its 2 votes
    # pairs[4] has its 2 votes: dr-c gets pairs[2] (1 vote), then the unvoted pairs before pairs[4]
    served = [_vote(queue, "dr-c") for _ in range(6)]
    assert served[0] == pairs[2].id and served[-1] == pairs[4].id
    assert set(served[1:5]) == {pairs[i].id for i in (0, 1, 3, 5)}
    # without a selection the order is the old one (fewest votes first), unaffected
    plain = SQLiteStore(tmp_path / "plain.sqlite")
    plain.add_pairs(pairs)
    assert ReviewQueue(plain, seed=0).next_ticket("dr-a") is not None
    store.close()
    plain.close()


def test_new_selection_reaches_a_running_queue(tmp_path):
    store = SQLiteStore(tmp_path / "fb.sqlite")
    pairs = [make_pair(i) for i in range(4)]
    store.add_pairs(pairs)
    queue = ReviewQueue(store, seed=0)
    store.set_priorities({pairs[3].id: 1})
    queue.refresh()  # what the app does every REFRESH_S
    assert queue.next_ticket("dr-a").pair.id == pairs[3].id
    store.close()


# -- the CLI ------------------------------------------------------------------------------------
def test_cli_select_marks_unlabelled_pairs_first(tmp_path, capsys):
    from align.cli import main

    path = tmp_path / "fb.sqlite"
    pairs = [make_pair(i, prompt=f"What is the usual adult dose of drug {i % 3}?") for i in range(6)]
    with SQLiteStore(path) as store:
        store.add_pairs(pairs)
        store.add_feedback([Feedback(pair_id=pairs[0].id, annotator_id="dr-a", preference="a")])
    out = tmp_path / "sel.jsonl"
    assert main(["annotate", "select", "--store", str(path), "--reward-model", "builtin:minilm-l6",
                 "--allow-untrained", "--n", "50", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert pairs[0].id not in {r["pair_id"] for r in rows}  # labelled already
    assert len(rows) == 3 and len({r["group"] for r in rows}) == 3  # one per prompt
    assert [r["rank"] for r in rows] == [1, 2, 3]
    assert all(rows[i]["value"] >= rows[i + 1]["value"] for i in range(2))
    assert min(r["density"] for r in rows) < 1.0  # the reward model's features weighted the value
    with SQLiteStore(path) as store:
        assert store.priorities() == {r["pair_id"]: r["rank"] for r in rows}
    assert main(["annotate", "select", "--store", str(tmp_path / "missing.sqlite"),
                 "--reward-model", "builtin:minilm-l6", "--allow-untrained"]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["annotate", "select", "--store", str(path), "--reward-model", str(tmp_path)]) == 2


# -- Argilla ------------------------------------------------------------------------------------
@pytest.mark.argilla
def test_argilla_priority_metadata_clinicians_sort_by(argilla_stack, monkeypatch):
    import httpx

    from annotation.argilla_settings import PRIORITY_META
    from annotation.argilla_store import ArgillaStore

    monkeypatch.setenv("ARGILLA_API_URL", argilla_stack.url)
    monkeypatch.setenv("ARGILLA_API_KEY", argilla_stack.api_key)
    monkeypatch.setenv("ARGILLA_WORKSPACE", "clinical-test")
    store = ArgillaStore.from_env("active-select", progress=False)
    pairs = [CandidatePair(prompt=f"Can patients with condition {i} take ibuprofen?", response_a=f"Yes ({i}).",
                           response_b=f"No ({i}).", model_a="m1", model_b="m2") for i in range(5)]
    store.add_pairs(pairs)
    store.set_priorities({pairs[3].id: 1, pairs[1].id: 2})
    assert store.priorities() == {pairs[3].id: 1, pairs[1].id: 2}
    store.set_priorities({pairs[4].id: 1, pairs[0].id: 2})  # replaces the previous selection
    assert store.priorities() == {pairs[4].id: 1, pairs[0].id: 2}
    with pytest.raises(InputError, match="pair-nope"):
        store.set_priorities({"pair-nope": 1})
    with httpx.Client(base_url=argilla_stack.url, headers={"X-Argilla-Api-Key": argilla_stack.api_key},
                      timeout=60) as http:
        props = http.get(f"/api/v1/me/datasets/{store.dataset.id}/metadata-properties").json()["items"]
        prop = next(p for p in props if p["name"] == PRIORITY_META)
        assert prop["visible_for_annotators"] is True and prop["settings"]["type"] == "integer"
        records = http.get(f"/api/v1/datasets/{store.dataset.id}/records", params={"limit": 100}).json()["items"]
        # what the Argilla UI sends when a clinician sorts by Priority
        body = {"query": {}, "sort": [{"scope": {"entity": "metadata", "metadata_property": PRIORITY_META},
                                       "order": "asc"}]}
        found = http.post(f"/api/v1/me/datasets/{store.dataset.id}/records/search", json=body,
                          params={"limit": 100})
    assert found.status_code == 200, found.text
    assert [i["record"]["external_id"] for i in found.json()["items"]][:2] == [pairs[4].id, pairs[0].id]
    by_id = {r["external_id"]: r["metadata"] for r in records}
    assert by_id[pairs[0].id][PRIORITY_META] == 2 and PRIORITY_META not in by_id[pairs[3].id]
    assert by_id[pairs[0].id]["model_a"] == "m1"  # the rest of the metadata kept
    pairs_after = {p.id: p for p in store.iter_pairs()}
    assert pairs_after[pairs[0].id].prompt == pairs[0].prompt
    store.close()


@pytest.mark.argilla
def test_argilla_dataset_made_before_priority_gets_the_field(argilla_stack, monkeypatch):
    import argilla as rg

    from annotation.argilla_settings import PRIORITY_META, build_settings
    from annotation.argilla_store import ArgillaStore

    client = rg.Argilla(api_url=argilla_stack.url, api_key=argilla_stack.api_key)
    settings = build_settings()
    settings.metadata.remove(PRIORITY_META)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ws = client.workspaces("clinical-test") or rg.Workspace(name="clinical-test", client=client).create()
        if client.datasets(name="before-priority", workspace=ws) is None:
            rg.Dataset(name="before-priority", workspace=ws, settings=settings, client=client).create()
    monkeypatch.setenv("ARGILLA_API_URL", argilla_stack.url)
    monkeypatch.setenv("ARGILLA_API_KEY", argilla_stack.api_key)
    monkeypatch.setenv("ARGILLA_WORKSPACE", "clinical-test")
    store = ArgillaStore.from_env("before-priority", progress=False)
    pair = make_pair(1)
    store.add_pairs([pair])
    store.set_priorities({pair.id: 1})
    assert store.priorities() == {pair.id: 1}
    store.close()
