"""The frozen-probe reward (reward_architecture: probe): response pooling, a saved model that gives
exactly the fitted head's rewards, a head that learns a planted signal and not shuffled labels,
and clear refusals. Backbone: the random-init tiny Llama with SmolLM2's tokenizer."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from annotation.errors import InputError
from reward_models.probe import cross_validate, grouped_folds, response_mask
from reward_models.train import train_from_yaml

torch.set_num_threads(1)
SEPARATOR = "<|im_end|>\n<|im_start|>assistant\n"
TOPICS = ["fever", "rash", "cough", "knee pain", "headache", "insomnia", "nausea", "back pain", "dizziness",
          "sore throat", "fatigue", "heartburn", "earache", "toothache", "anxiety", "acne"]


def test_response_mask_pools_after_the_last_marker_and_never_padding():
    ids = torch.tensor([[5, 7, 8, 9, 7, 8, 3, 4, 0, 0],   # marker (7, 8) twice: the response is 3, 4
                        [5, 6, 6, 6, 6, 6, 6, 6, 6, 6],   # no marker: everything unpadded
                        [7, 8, 1, 2, 3, 0, 0, 0, 7, 8]])  # a marker inside the padding does not count
    mask = torch.tensor([[1] * 8 + [0] * 2, [1] * 10, [1] * 5 + [0] * 5])
    keep = response_mask(ids, mask, [7, 8]).int().tolist()
    assert keep[0] == [0, 0, 0, 0, 0, 0, 1, 1, 0, 0]
    assert keep[1] == [1] * 10
    assert keep[2] == [0, 0, 1, 1, 1, 0, 0, 0, 0, 0]


def test_cross_validation_groups_conversations_and_finds_the_informative_layer():
    rng = np.random.default_rng(0)
    keys = [f"c{i // 3}" for i in range(120)]  # three pairs per conversation
    folds = grouped_folds(keys, 5, seed=0)
    assert all(len({folds[i] for i in range(len(keys)) if keys[i] == k}) == 1 for k in set(keys))
    noise = rng.normal(size=(120, 2, 8))
    noise[:, 1, 0] += 2.0  # layer 2 carries the preference in feature 0; layer 1 is noise
    acc = cross_validate(noise, folds, [1, 2], [1.0])
    assert acc[(2, 1.0)] > 0.8 and abs(acc[(1, 1.0)] - 0.5) < 0.15


def _pairs(n: int, seed: int, shuffled: bool = False) -> list[dict]:
    """The chosen answer is calm advice, the rejected one an alarming refusal: a signal a linear head on
    token-level features of any (even random) transformer can find."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        good = f"For {topic}, rest, drink water and see your doctor if it lasts more than a week."
        bad = f"I refuse. {topic.title()} could be fatal!!! Panic now, nobody can help you with {topic}!!!"
        swap = shuffled and rng.random() < 0.5
        rows.append({"prompt": f"Human: I have {topic} (case {i}). What should I do?",
                     "chosen": bad if swap else good, "rejected": good if swap else bad,
                     "group": f"{topic}-{i % 5}"})
    return rows


def _config(tmp_path: Path, rows: list[dict], **extra) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {"dataset_path": str(data), "eval_fraction": 0.25, "separator": SEPARATOR,
           "reward_architecture": "probe", "probe_layers": [1, 2], "probe_penalties": [1.0, 0.1], "probe_folds": 4,
           "model_name_or_path": "builtin:tiny-llama", "dtype": "float32", "output_dir": str(tmp_path / "rm"),
           "max_length": 128, "bf16": False, "report_to": "none", **extra}
    path = tmp_path / "probe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_probe_learns_a_planted_signal_and_not_shuffled_labels(tmp_path):
    from annotation.manifest import read_manifest

    out = train_from_yaml(str(_config(tmp_path / "real", _pairs(80, 0))))
    m = read_manifest(out)["metrics"]
    assert m["probe_layer"] in (1, 2) and m["probe_cv_folds"] == 4
    assert m["probe_cv_accuracy"] > 0.9 and m["eval_accuracy"] > 0.9  # held-out groups, never trained on
    control = read_manifest(train_from_yaml(str(_config(tmp_path / "ctrl", _pairs(80, 0, shuffled=True)))))
    assert control["metrics"]["probe_cv_accuracy"] < 0.7  # labels at random: nothing to learn
    assert "closed form" in read_manifest(out)["annotations"]["trainer"]


@pytest.mark.parametrize("dtype, tol", [("float32", 1e-4), ("bfloat16", 3e-2)])
def test_saved_probe_scores_what_the_fitted_head_computes(tmp_path, dtype, tol):
    """The saved model (first L blocks, no final norm, response pooling, head) equals w·features + b, and
    the bias centres the training answers' rewards at 0. A bf16 backbone keeps its head in fp32."""
    from transformers import AutoModel

    from reward_models.backbones import resolve_backbone
    from reward_models.probe import layer_features
    from reward_models.scoring import RewardScorer

    rows = _pairs(40, 1)
    out = train_from_yaml(str(_config(tmp_path, rows, eval_fraction=0.0, dtype=dtype)))
    cfg = json.loads((out / "config.json").read_text())
    layer = cfg["probe_layer"]
    assert cfg["model_type"] == "clinalign_probe" and cfg["num_hidden_layers"] == layer
    scorer = RewardScorer(str(out))  # from disk, through the Auto classes, as PPO and `reward eval` load it
    texts = [(r["prompt"], r[side]) for r in rows for side in ("chosen", "rejected")]
    saved = np.array(scorer.score([p for p, _ in texts], [a for _, a in texts]))
    assert scorer.model.score.weight.dtype == torch.float32
    backbone = AutoModel.from_pretrained(resolve_backbone("builtin:tiny-llama"), dtype=getattr(torch, dtype)).eval()
    ids = [scorer.encode(p, a).input_ids for p, a in texts]
    feats = layer_features(backbone, ids, scorer.tokenizer.pad_token_id, [layer], cfg["response_marker"])[:, 0]
    head = scorer.model.score
    expected = feats @ head.weight.detach().numpy()[0] + head.bias.item()
    np.testing.assert_allclose(saved, expected, rtol=tol, atol=tol)
    assert abs(saved.mean()) < tol * max(1.0, np.abs(saved).max())


@pytest.mark.parametrize("extra, message", [
    ({"separator": ""}, "separator that marks where the response starts"),
    ({"probe_layers": [1, 9]}, "the backbone has 2 layers"),
    ({"resume_from_checkpoint": "true"}, "no checkpoints to resume"),
])
def test_probe_refuses_what_it_cannot_do(tmp_path, extra, message):
    with pytest.raises(InputError, match=message):
        train_from_yaml(str(_config(tmp_path, _pairs(12, 2), **extra)))
    assert not (tmp_path / "rm").exists()  # nothing half-written


def test_probe_ensemble_is_refused(tmp_path):
    from reward_models.ensemble import train_ensemble

    with pytest.raises(InputError, match="same model"):
        train_ensemble(str(_config(tmp_path, _pairs(12, 2))), {}, 2)
    assert not (tmp_path / "rm").exists()
