"""The whole loop end to end, at toy size, through the real CLI: what `make demo` runs, reduced."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clinalign_base.manifest import path_sha256
from tests.conftest import REPO

CLI = str(Path(sys.executable).with_name("clinalign"))


@pytest.mark.slow
def test_tiny_round_leaves_a_real_manifest(tmp_path):
    out = tmp_path / "round"
    rated = tmp_path / "graded.jsonl"  # experts' grades: the round reports the RM's agreement with them
    rated.write_text("".join(json.dumps({"question": q, "answer": a, "grade": g, "question_id": q[:8]}) + "\n"
                             for q, a, g in [
        ("What causes gout?", "Gout is caused by uric acid crystals in a joint.", 4),
        ("What causes gout?", "Asthma narrows the airways.", 1),
        ("What causes gout?", "It is a joint problem.", 2),
        ("How is asthma treated?", "Inhaled corticosteroids and a reliever inhaler treat asthma.", 4),
        ("How is asthma treated?", "Gout is caused by uric acid.", 1),
        ("How is asthma treated?", "With medicines.", 3)]))
    env = os.environ | {"OMP_NUM_THREADS": "2", "COLUMNS": "220"}
    res = subprocess.run([CLI, "demo", "--config", "configs/demo/round_tiny.yaml", "--output-dir", str(out),
                          "--reward_rated", str(rated)],  # any round key: a trailing --key value
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "SIMULATED" in res.stdout  # the summary says whose feedback this was
    m = json.loads((out / "manifest.json").read_text())
    assert m["kind"] == "round" and m["environment"]["packages"]["trl"]

    # inputs are real files whose hashes match what is on disk now
    inputs = {i["role"]: i for i in m["inputs"]}
    for role in ("prompts:medquad", "prompts:kqa", "config:round", "config:sft", "config:reward", "config:dpo"):
        assert role in inputs, role
        assert inputs[role]["sha256"] == path_sha256(REPO / inputs[role]["path"]), role
    outputs = {o["role"]: o for o in m["outputs"]}
    assert {"split.json", "sft", "sft_model", "feedback.sqlite", "preferences", "preferences_rm_val", "reward_model",
            "policy", "evaluation"} <= set(outputs)
    for o in outputs.values():
        assert o["sha256"] == path_sha256(o["path"])

    stages = m["metrics"]
    split = stages["1 split prompts (train / rm_val / test)"]
    assert split["overlap"] == 0 and split["used"] == {"train": 8, "rm_val": 4, "eval": 4}
    cands = stages["3 on-policy candidates"]
    assert cands["train"]["pairs"] > 0 and "withheld_by_phi_gate" in cands["train"]
    assert stages["5 export preference datasets"]["rows"] > 0
    rm = stages["6 reward model (proxy)"]
    assert rm["rated_n"] == 6 and -1.0 <= rm["rated_spearman"] <= 1.0 and inputs["rated:reward_eval"]
    ev = stages["8 evaluation on held-out prompts"]
    assert 0.0 <= ev["win_rate"] <= 1.0 and ev["n_prompts"] == 4 and ev["train_prompt_overlap"] == 0
    assert 0.0 <= ev["pubmedqa_accuracy_after"] <= 1.0
    assert m["annotations"]["simulated"] is True
    assert set(m["annotations"]["feedback_by_annotator"]) == {"simulated:clinician-v2"}

    # the evaluation file keeps its contract (scripts read it)
    wr = json.loads((out / "evaluation" / "winrate.json").read_text())
    for key in ("judge", "win_rate", "ci95", "p_value", "n_prompts", "n_comparisons", "ties", "train_prompt_overlap",
                "control", "lengths"):
        assert key in wr, key
    assert wr["n_comparisons"] == 4 * 2 * 2 and wr["judge"].startswith("simulated:")
    assert set(wr["control"]) >= {"win_rate", "ci95"}
    # test prompts never reach training: not in the SFT data, not in the preference rows
    test_ids = set(json.loads((out / "split.json").read_text())["used_this_round"]["eval"])
    sft_ids = {json.loads(x)["prompt_id"] for x in (out / "sft_data" / "sft.jsonl").read_text().splitlines()}
    assert test_ids and not test_ids & sft_ids

    # each artefact carries its own manifest, chained to the previous one by hash
    prefs = json.loads((out / "preferences" / "clinalign_manifest.json").read_text())
    policy = json.loads((out / "policy" / "clinalign_manifest.json").read_text())
    pref_in = next(i for i in policy["inputs"] if i["role"] == "preferences")
    assert pref_in["sha256"] == outputs["preferences"]["sha256"]
    assert prefs["kind"] == "preference_dataset"
    rows = [json.loads(x) for x in (out / "preferences" / "preferences.jsonl").read_text().splitlines()]
    assert rows and all(r["source"].startswith("simulated:") for r in rows)


@pytest.mark.slow
def test_tiny_round_with_ppo_as_the_online_stage(tmp_path):
    out = tmp_path / "round"
    env = os.environ | {"OMP_NUM_THREADS": "2", "COLUMNS": "220"}
    res = subprocess.run([CLI, "demo", "--config", "configs/demo/round_tiny.yaml", "--output-dir", str(out),
                          "--policy-stage", "ppo"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    assert res.returncode == 0, res.stderr[-4000:]
    m = json.loads((out / "manifest.json").read_text())
    stage = m["metrics"]["7 policy (ppo)"]
    assert stage["stage"] == "ppo" and "reward_mean" in stage
    assert "guard_flags" in stage  # the reward-hacking guard reports, flags or not
    assert "config:ppo" in {i["role"] for i in m["inputs"]}
    policy = json.loads((out / "policy" / "clinalign_manifest.json").read_text())
    assert policy["kind"].startswith("policy")
    assert (out / "evaluation" / "evaluation.json").is_file()
