"""Reward ensembles: spread, the drop-in scorer, training k members through the CLI, bad folders."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from clinalign_base.errors import ClinalignError, InputError
from reward_models.ensemble import EnsembleScorer, member_paths, pair_disagreement, spread_metrics
from reward_models.scoring import RewardScorer, Scorer, load_scorer

torch.set_num_threads(1)
PROMPTS = ["What should I do about a burn?", "Is ibuprofen safe with warfarin?", "How is gout treated?"]
ANSWERS = ["Cool it under running water and see a doctor if it blisters.", "Ask your doctor; it raises bleeding risk.",
           "lol whatever"]


@pytest.fixture(scope="module")
def base() -> RewardScorer:
    torch.manual_seed(0)
    return RewardScorer("builtin:minilm-l6", allow_untrained=True)


def _member(base: RewardScorer, head_seed: int | None) -> RewardScorer:
    """A copy of the base scorer; a fresh random head when head_seed is given."""
    model = copy.deepcopy(base.model)
    if head_seed is not None:
        torch.manual_seed(head_seed)
        for p in model.classifier.parameters():
            torch.nn.init.normal_(p, std=0.5)
    return RewardScorer("<in-memory>", model=model, tokenizer=base.tokenizer, fmt=base.fmt)


def test_identical_members_give_zero_spread(base):
    ens = EnsembleScorer("<in-memory>", members=[_member(base, None), _member(base, None)])
    scores = ens.score(PROMPTS, ANSWERS)
    assert scores.spread == pytest.approx([0.0] * 3, abs=1e-6)
    assert list(scores) == pytest.approx(base.score(PROMPTS, ANSWERS), abs=1e-5)
    assert isinstance(ens, Scorer)


def test_disagreeing_members_give_their_std(base):
    a, b = _member(base, 1), _member(base, 2)
    ens = EnsembleScorer("<in-memory>", members=[a, b])
    scores = ens.score(PROMPTS, ANSWERS)
    ra, rb = a.score(PROMPTS, ANSWERS), b.score(PROMPTS, ANSWERS)
    assert list(scores) == pytest.approx([(x + y) / 2 for x, y in zip(ra, rb, strict=True)], abs=1e-5)
    assert scores.spread == pytest.approx([abs(x - y) / 2 for x, y in zip(ra, rb, strict=True)], abs=1e-5)
    assert min(scores.spread) > 1e-3
    # progress adds up to the number of items however many members there are
    seen: list[float] = []
    ens.score(PROMPTS, ANSWERS, progress=seen.append)
    assert sum(seen) == pytest.approx(3)
    rejected = ens.score(PROMPTS, list(reversed(ANSWERS)))
    m = spread_metrics(scores, rejected)
    assert m["k"] == 2 and len(m["member_accuracy"]) == 2 and m["mean_margin_spread"] > 0
    assert pair_disagreement(scores, rejected).shape == (3,)
    # active selection's features come from the first member (one extra pass, not k)
    assert torch.allclose(torch.tensor(ens.features(PROMPTS, ANSWERS)), torch.tensor(a.features(PROMPTS, ANSWERS)))


def _config(tmp_path: Path, **extra) -> Path:
    rows = [{"prompt": f"What should I do about {t}?", "chosen": f"For {t}, rest and see your doctor.",
             "rejected": f"lol who cares about {t}"} for t in ("a cough", "a rash", "back pain", "a cold")]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {"dataset_path": str(data), "model_name_or_path": "builtin:minilm-l6", "output_dir": str(tmp_path / "ens"),
           "max_length": 48, "eos_token": "[SEP]", "per_device_train_batch_size": 4, "learning_rate": 1e-4,
           "max_steps": 2, "bf16": False, "activation_checkpointing": False, "report_to": "none",
           "save_strategy": "no", "disable_tqdm": True, "num_threads": 1, "seed": 7, **extra}
    path = tmp_path / "reward.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_cli_trains_members_and_scores_mean_and_spread(tmp_path, capsys):
    from align.cli import main

    cfg = _config(tmp_path)
    assert main(["reward", "train", "--config", str(cfg), "--members", "2"]) == 0
    ens = tmp_path / "ens"
    spec = json.loads((ens / "ensemble.json").read_text())
    assert [m["seed"] for m in spec["members"]] == [7, 8] and [m["path"] for m in spec["members"]] == ["member-0", "member-1"]
    manifest = json.loads((ens / "clinalign_manifest.json").read_text())
    assert manifest["kind"] == "reward_ensemble"
    assert {i["role"] for i in manifest["inputs"]} == {"config", "member-0", "member-1"}
    member_manifest = json.loads((ens / "member-1" / "clinalign_manifest.json").read_text())
    assert member_manifest["config"]["training"]["seed"] == 8
    assert isinstance(load_scorer(str(ens)), EnsembleScorer) and len(member_paths(ens)) == 2

    data = tmp_path / "score.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "response": a}) + "\n" for p, a in zip(PROMPTS, ANSWERS, strict=True)))
    out = tmp_path / "scored.jsonl"
    assert main(["reward", "score", "--model", str(ens), "--data", str(data), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(math.isfinite(r["reward"]) and r["reward_spread"] > 0 for r in rows)  # seeds differ: heads differ
    single = tmp_path / "single.jsonl"
    assert main(["reward", "score", "--model", str(ens / "member-0"), "--data", str(data), "--out", str(single)]) == 0
    assert "reward_spread" not in json.loads(single.read_text().splitlines()[0])  # a single model: as before
    pairs = tmp_path / "pairs.jsonl"  # the eval report of an ensemble: members, spread, calibration
    pairs.write_text("".join(json.dumps({"prompt": p, "chosen": a, "rejected": "I don't know."}) + "\n"
                             for p, a in zip(PROMPTS, ANSWERS, strict=True)))
    assert main(["reward", "eval", "--model", str(ens), "--data", str(pairs), "--out", str(tmp_path / "ev.json")]) == 0
    block = json.loads((tmp_path / "ev.json").read_text())["ensemble"]
    assert block["k"] == 2 and len(block["member_accuracy"]) == 2 and block["mean_margin_spread"] > 0

    # active selection reads the members' disagreement on each pair's margin
    from annotation.sqlite_store import SQLiteStore
    from tests.conftest import make_pair

    with SQLiteStore(tmp_path / "fb.sqlite") as store:
        store.add_pairs([make_pair(i) for i in range(4)])
    sel = tmp_path / "sel.jsonl"
    assert main(["annotate", "select", "--store", str(tmp_path / "fb.sqlite"), "--reward-model", str(ens),
                 "--n", "2", "--max-per-prompt", "1", "--out", str(sel)]) == 0
    chosen = [json.loads(line) for line in sel.read_text().splitlines()]
    assert len(chosen) == 2 and all(r["margin_std"] > 0 for r in chosen)
    assert any(r["density"] < 1.0 for r in chosen)  # weighted by the first member's features

    # retraining in place drops members beyond k; a single model folder is never overwritten
    (ens / "member-5").mkdir()
    assert main(["reward", "train", "--config", str(cfg), "--members", "2", "--set", "max_steps=1"]) == 0
    assert sorted(p.name for p in ens.glob("member-*")) == ["member-0", "member-1"]
    assert main(["reward", "train", "--config", str(cfg), "--members", "2",
                 "--output_dir", str(ens / "member-0")]) == 2
    assert "not an ensemble folder" in capsys.readouterr().err
    assert main(["reward", "train", "--config", str(cfg), "--members", "0"]) == 2


def test_broken_ensemble_folder_names_the_file(tmp_path):
    ens = tmp_path / "ens"
    ens.mkdir()
    (ens / "ensemble.json").write_text(json.dumps({"members": [{"path": "member-0"}]}))
    with pytest.raises(InputError, match=r"ensemble\.json.*member folder missing"):
        EnsembleScorer(str(ens))
    (ens / "ensemble.json").write_text("{not json")
    with pytest.raises(InputError, match=r"ensemble\.json.*not a valid ensemble manifest"):
        load_scorer(str(ens))
    with pytest.raises(ClinalignError, match="at least one member"):
        EnsembleScorer("<in-memory>", members=[])
