"""The whole loop end to end, at toy size, through the real CLI: what `make demo` runs, reduced."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from annotation.manifest import path_sha256
from tests.conftest import REPO

CLI = str(Path(sys.executable).with_name("clinalign"))


@pytest.mark.slow
def test_tiny_round_leaves_a_real_manifest(tmp_path):
    out = tmp_path / "round"
    env = os.environ | {"OMP_NUM_THREADS": "2", "COLUMNS": "220"}
    res = subprocess.run([CLI, "demo", "--config", "configs/demo/round_tiny.yaml", "--output-dir", str(out)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "SIMULATED" in res.stdout  # the summary says whose feedback this was
    m = json.loads((out / "manifest.json").read_text())
    assert m["kind"] == "round" and m["environment"]["packages"]["trl"]

    # inputs are real files whose hashes match what is on disk now
    inputs = {i["role"]: i for i in m["inputs"]}
    for role in ("prompts:medquad", "prompts:kqa", "config:round", "config:reward", "config:dpo"):
        assert role in inputs, role
        assert inputs[role]["sha256"] == path_sha256(REPO / inputs[role]["path"]), role
    outputs = {o["role"]: o for o in m["outputs"]}
    assert set(outputs) == {"feedback.sqlite", "preferences", "reward_model", "policy", "evaluation"}
    for o in outputs.values():
        assert o["sha256"] == path_sha256(o["path"])

    stages = m["metrics"]
    assert stages["1 generate candidate pairs"]["pairs"] > 0
    assert "withheld_by_phi_gate" in stages["1 generate candidate pairs"]
    assert stages["3 export preference dataset"]["rows"] > 0
    ev = stages["6 evaluation"]
    assert 0.0 <= ev["win_rate"] <= 1.0 and ev["n_prompts"] == 4
    assert 0.0 <= ev["pubmedqa_accuracy_after"] <= 1.0
    assert m["annotations"]["simulated"] is True
    assert set(m["annotations"]["feedback_by_annotator"]) == {"simulated:reference-overlap"}

    # each artefact carries its own manifest, chained to the previous one by hash
    prefs = json.loads((out / "preferences" / "clinalign_manifest.json").read_text())
    policy = json.loads((out / "policy" / "clinalign_manifest.json").read_text())
    pref_in = next(i for i in policy["inputs"] if i["role"] == "preferences")
    assert pref_in["sha256"] == outputs["preferences"]["sha256"]
    assert prefs["kind"] == "preference_dataset"
    rows = [json.loads(x) for x in (out / "preferences" / "preferences.jsonl").read_text().splitlines()]
    assert all(r["source"].startswith(("simulated:", "seed:")) for r in rows)


@pytest.mark.slow
def test_tiny_round_with_ppo_as_the_online_stage(tmp_path):
    out = tmp_path / "round"
    env = os.environ | {"OMP_NUM_THREADS": "2", "COLUMNS": "220"}
    res = subprocess.run([CLI, "demo", "--config", "configs/demo/round_tiny.yaml", "--output-dir", str(out),
                          "--policy-stage", "ppo"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    assert res.returncode == 0, res.stderr[-4000:]
    m = json.loads((out / "manifest.json").read_text())
    stage = m["metrics"]["5 policy (ppo)"]
    assert stage["stage"] == "ppo" and "reward_mean" in stage
    assert "config:ppo" in {i["role"] for i in m["inputs"]}
    policy = json.loads((out / "policy" / "clinalign_manifest.json").read_text())
    assert policy["kind"].startswith("policy")
    assert (out / "evaluation" / "evaluation.json").is_file()
