"""Reward training survives a kill: a real `clinalign reward train` process is killed after its first
checkpoint, resumed with resume_from_checkpoint true, and ends where a straight run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from annotation.errors import InputError
from reward_models.train import find_checkpoint, train_from_yaml, work_dir

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
TOPICS = ["a sore throat", "a mild fever", "back pain", "a headache", "a cough", "heartburn", "a rash", "insomnia"]
MAX_STEPS, SAVE_STEPS = 20, 4


def _config(tmp_path: Path, out: Path) -> Path:
    rows = [{"prompt": f"What should I do about {t}?", "chosen": f"For {t}, rest and see your doctor if it gets worse.",
             "rejected": f"lol who cares about {t}"} for t in TOPICS]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {"dataset_path": str(data), "model_name_or_path": "builtin:minilm-l6", "output_dir": str(out),
           "max_length": 48, "eos_token": "[SEP]", "per_device_train_batch_size": 4, "learning_rate": 5e-5,
           "max_steps": MAX_STEPS, "save_strategy": "steps", "save_steps": SAVE_STEPS, "save_total_limit": 2,
           "bf16": False, "activation_checkpointing": False, "report_to": "none", "logging_steps": 1,
           "disable_tqdm": True, "num_threads": 1, "seed": 0}
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _cli(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "align.cli", "reward", "train", "--config", str(config), *extra]


def _kill_after_first_checkpoint(config: Path, out: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen(_cli(config), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    first = work_dir(out) / f"checkpoint-{SAVE_STEPS}" / "trainer_state.json"
    deadline = time.monotonic() + 180
    while not first.is_file():
        if proc.poll() is not None:
            pytest.fail(f"training ended before its first checkpoint: {proc.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("no checkpoint within 180 s")
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # no clean shutdown: as a preempted node would die
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()  # nothing half-written in place


def _scores(model_dir: Path) -> list[float]:
    from reward_models.scoring import RewardScorer

    scorer = RewardScorer(str(model_dir))
    return scorer.score(["What should I do about a burn?"] * 2, ["Cool it and see your doctor.", "lol whatever"])


def test_killed_run_resumes_from_its_checkpoint_and_matches_a_straight_run(tmp_path):
    straight = train_from_yaml(str(_config(tmp_path, tmp_path / "straight")))
    out = tmp_path / "rm"
    config = _config(tmp_path, out)
    _kill_after_first_checkpoint(config, out)
    killed_at = Path(find_checkpoint(True, out))
    assert killed_at.parent == work_dir(out) and 0 < int(killed_at.name.split("-")[1]) < MAX_STEPS

    # `--resume_from_checkpoint true` on the command line is this override (the CLI passes --key value on)
    train_from_yaml(str(config), {"resume_from_checkpoint": "true"})
    metrics = json.loads((out / "clinalign_manifest.json").read_text())["metrics"]
    assert metrics["global_step"] == MAX_STEPS
    assert metrics["resumed_from"] == str(killed_at)  # the killed run's checkpoint was used
    assert (out / "checkpoints" / f"checkpoint-{MAX_STEPS}").is_dir()  # checkpoints kept with the model
    assert not work_dir(out).exists()
    # Same data order, optimizer, scheduler and RNG state: the resumed model is the straight run's.
    assert _scores(out) == pytest.approx(_scores(straight), abs=1e-3)


def test_resume_true_without_checkpoints_names_the_folders(tmp_path):
    with pytest.raises(InputError, match="no checkpoint"):
        find_checkpoint(True, tmp_path / "rm")
    with pytest.raises(InputError, match="not a checkpoint folder"):
        find_checkpoint(str(tmp_path / "nowhere"), tmp_path / "rm")
    assert find_checkpoint(None, tmp_path / "rm") is None
    half = work_dir(tmp_path / "rm") / "checkpoint-9"  # killed while saving: no trainer_state.json
    half.mkdir(parents=True)
    (work_dir(tmp_path / "rm") / "checkpoint-4").mkdir()
    (work_dir(tmp_path / "rm") / "checkpoint-4" / "trainer_state.json").write_text("{}")
    assert Path(find_checkpoint("true", tmp_path / "rm")).name == "checkpoint-4"
