"""Shipped DeepSpeed JSONs and Me LLaMA stage YAMLs, validated with DeepSpeedConfig at their target
world sizes; batch arithmetic and the pre-launch checks of `clinalign launch`.

No GPU cluster here: `DeepSpeedConfig` is DeepSpeed's own parser and checks, run as if N ranks had
started (the world size is the only thing faked, and a test below shows it is really used).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from align.distributed import ds_config as dc
from align.distributed.launch import (
    LaunchRequest,
    build_command,
    check_gpus,
    check_hostfile,
    check_nccl,
    check_rendezvous,
)
from clinalign_base.errors import ClinalignError, InputError

REPO = Path(__file__).resolve().parents[1]
DS_JSONS = sorted((REPO / "configs" / "deepspeed").glob("*.json"))
STAGE_YAMLS = sorted((REPO / "configs").glob("me-llama-*/*.yaml"))
CLI = [sys.executable, "-m", "align.cli"]


def test_all_four_deepspeed_configs_are_shipped():
    assert {p.name for p in DS_JSONS} >= {"zero2.json", "zero2_offload.json", "zero3.json", "zero3_offload.json"}


@pytest.mark.parametrize("world", [1, 8, 64])
@pytest.mark.parametrize("path", DS_JSONS, ids=lambda p: p.name)
def test_shipped_json_is_valid_at_world_size(path, world):
    v = dc.validate_json(path, world, values={"per_device_train_batch_size": 2, "gradient_accumulation_steps": 4})
    assert v.config.world_size == world
    assert v.train_batch_size == 2 * 4 * world
    assert v.zero_stage == (3 if "zero3" in path.name else 2)
    offload = v.config.zero_config.offload_optimizer
    assert (offload is not None and offload.device == "cpu") == ("offload" in path.name)


@pytest.mark.parametrize("path", STAGE_YAMLS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_stage_yaml_valid_at_its_target_world_size(path):
    nodes, gpus = dc.target_world_size(path)
    v = dc.validate_stage(path)
    data = yaml.safe_load(path.read_text())
    assert v.world_size == nodes * gpus
    assert v.train_batch_size == data["per_device_train_batch_size"] * data["gradient_accumulation_steps"] * nodes * gpus
    # The HF integration's filling took the YAML's values, not the defaults.
    ds = v.config._param_dict
    stage = dc.header_command(path)[dc.header_command(path).index("--stage") + 1]
    assert ds["optimizer"]["params"]["lr"] == dc.training_values(stage, data)["learning_rate"]
    assert ds["bf16"]["enabled"] is True and data["bf16"] is True
    hidden = 8192 if "70b" in path.parent.name else 5120
    assert ds["zero_optimization"]["reduce_bucket_size"] == hidden * hidden


def test_70b_dpo_config_validated_at_world_size_64():
    v = dc.validate_stage(REPO / "configs" / "me-llama-70b" / "dpo.yaml")
    print(dc.describe(v))
    assert (v.world_size, v.zero_stage) == (64, 3)
    assert v.config.train_batch_size == 64 * v.config.train_micro_batch_size_per_gpu * \
        v.config.gradient_accumulation_steps
    assert v.config.zero_config.prefetch_bucket_size == int(0.9 * 8192 * 8192)


def test_world_size_really_reaches_deepspeed():
    """Same JSON + YAML at 8 and 64 ranks: DeepSpeed derives a different global batch."""
    path = REPO / "configs" / "me-llama-70b" / "dpo.yaml"
    assert dc.validate_stage(path, nodes=1, gpus_per_node=8).train_batch_size * 8 == \
        dc.validate_stage(path, nodes=8, gpus_per_node=8).train_batch_size


@pytest.mark.parametrize("path", [p for p in STAGE_YAMLS if p.stem in ("dpo", "reward")],
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_stage_yaml_keys_belong_to_the_recipe_dataclasses(path):
    from trl import DPOConfig, ModelConfig, RewardConfig

    if path.stem == "dpo":
        from align.recipes.dpo import DPOScriptArguments as Script

        classes = (Script, DPOConfig, ModelConfig)
    else:
        from reward_models.train import RewardScriptArguments as Script

        classes = (Script, RewardConfig, ModelConfig)
    known = {f.name for c in classes for f in dataclasses.fields(c)}
    data = yaml.safe_load(path.read_text())
    assert set(data) - known == set(), f"{path}: keys the recipe does not know"
    assert data["use_peft"] is True and data["dtype"] == "bfloat16"
    assert not Path(data["model_name_or_path"]).exists()  # a placeholder for the local licensed weights


@pytest.mark.parametrize("path", STAGE_YAMLS + sorted((REPO / "configs" / "accelerate").glob("*.yaml")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_first_line_is_the_command_that_runs_it(path):
    argv = dc.header_command(path)
    rel = str(path.relative_to(REPO))
    assert rel in argv
    if path.parent.name.startswith("me-llama"):
        assert argv[:2] == ["clinalign", "launch"] and argv[argv.index("--config") + 1] == rel
        from align.stage_registry import for_config

        assert argv[argv.index("--stage") + 1] == for_config(path.stem).name  # reward_medical.yaml: reward


# ---------------------------------------------------------------------------- batch arithmetic errors
def test_bad_batch_arithmetic_is_a_clear_error():
    ds = dc.load_ds_json(REPO / "configs" / "deepspeed" / "zero3.json") | {"train_batch_size": 100}
    values = dc.training_values("dpo") | {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 4}
    with pytest.raises(ClinalignError, match=r"train_batch_size 100 != micro-batch 2 × gradient_accumulation_steps "
                                             r"4 × world size 8 = 64"):
        dc.fill_auto(ds, values, world_size=8, hidden_size=5120, source="x")


def test_explicit_micro_batch_disagreeing_with_yaml_is_an_error():
    ds = dc.load_ds_json(REPO / "configs" / "deepspeed" / "zero2.json") | {"train_micro_batch_size_per_gpu": 4}
    values = dc.training_values("dpo") | {"per_device_train_batch_size": 2}
    with pytest.raises(ClinalignError, match="train_micro_batch_size_per_gpu=4 but the stage config says 2"):
        dc.fill_auto(ds, values, world_size=8, hidden_size=5120, source="x")


@pytest.mark.parametrize("micro,accum,world", [(0, 1, 8), (2, -1, 8), (2, 1, 0)])
def test_non_positive_batch_numbers_rejected(micro, accum, world):
    with pytest.raises(ClinalignError, match="must be a positive integer"):
        dc.check_batch_arithmetic(micro, accum, world)


def test_deepspeed_itself_rejects_bad_arithmetic_and_bad_fields():
    # Bypassing our own check, DeepSpeed's assertion still comes back as a clinalign error.
    with pytest.raises(ClinalignError, match="train_batch_size is not equal"):
        dc.deepspeed_config({"train_batch_size": 100, "train_micro_batch_size_per_gpu": 2,
                             "gradient_accumulation_steps": 4}, 8, source="x")
    with pytest.raises(ClinalignError, match="DeepSpeed rejects"):
        dc.deepspeed_config({"train_batch_size": 8, "zero_optimization": {"stage": "three"}}, 1, source="x")


def test_stage_yaml_with_bad_batch_fails_validation(tmp_path):
    src = (REPO / "configs" / "me-llama-70b" / "dpo.yaml").read_text()
    bad_ds = tmp_path / "ds.json"
    bad_ds.write_text(json.dumps(dc.load_ds_json(REPO / "configs/deepspeed/zero3.json") | {"train_batch_size": 96}))
    cfg = tmp_path / "dpo.yaml"
    cfg.write_text(src.replace("deepspeed: configs/deepspeed/zero3.json", f"deepspeed: {bad_ds}"))
    with pytest.raises(ClinalignError, match="train_batch_size 96 != .* world size 64 = 128"):
        dc.validate_stage(cfg)


def test_missing_and_broken_json_name_the_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        dc.load_ds_json(tmp_path / "nope.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"zero_optimization": {"stage": 3,}\n')
    with pytest.raises(InputError, match=r"broken\.json:1: invalid JSON"):
        dc.load_ds_json(broken)


def test_validate_configs_cli():
    proc = subprocess.run([*CLI, "validate-configs"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "configs/me-llama-70b/dpo.yaml (zero3.json) world=64 ZeRO-3" in proc.stdout
    assert f"{len(DS_JSONS) * 3 + len(dc.shipped_stage_configs())} checks passed" in proc.stdout


# ---------------------------------------------------------------------------------- pre-launch checks
def test_gpu_count_check():
    req = LaunchRequest("dpo", "c.yaml", nodes=1, gpus_per_node=8)
    assert not check_gpus(req, visible=0).ok
    assert "sees 4 CUDA GPU(s)" in check_gpus(req, visible=4).message
    assert check_gpus(req, visible=8).ok


def test_nccl_checks():
    req = LaunchRequest("dpo", "c.yaml", nodes=2)
    bad = check_nccl(req, env={"NCCL_DEBUG": "LOUD", "NCCL_IB_DISABLE": "yes", "NCCL_SOCKET_IFNAME": "ib"},
                     interfaces={"lo", "eth0"})
    names = {c.name for c in bad if not c.ok and c.fatal}
    assert names == {"NCCL_DEBUG", "NCCL_IB_DISABLE", "NCCL_SOCKET_IFNAME"}
    good = check_nccl(req, env={"NCCL_DEBUG": "info", "NCCL_SOCKET_IFNAME": "eth"}, interfaces={"lo", "eth0"})
    assert all(c.ok for c in good)
    assert all(c.ok for c in check_nccl(req, env={"NCCL_SOCKET_IFNAME": "^lo,docker"}, interfaces={"lo"}))
    unset = check_nccl(req, env={}, interfaces={"lo"})
    assert [(c.ok, c.fatal) for c in unset] == [(False, False)]  # multi-node without IFNAME: a warning


def test_multi_node_needs_master_addr_and_node_rank():
    req = LaunchRequest("dpo", "c.yaml", nodes=2, gpus_per_node=8)
    failed = {c.name for c in check_rendezvous(req, env={}) if not c.ok}
    assert failed == {"MASTER_ADDR", "node rank"}
    ok = check_rendezvous(req, env={"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29510", "SLURM_NODEID": "1"})
    assert all(c.ok for c in ok)
    assert not all(c.ok for c in check_rendezvous(req, env={"MASTER_ADDR": "127.0.0.1", "NODE_RANK": "2"}))
    assert not check_rendezvous(req, env={"MASTER_ADDR": "no-such-host.invalid", "NODE_RANK": "0"})[0].ok
    assert all(c.ok for c in check_rendezvous(LaunchRequest("dpo", "c.yaml"), env={}))


def test_hostfile_checks(tmp_path):
    hf = tmp_path / "hosts"
    hf.write_text("# cluster\nnode-a slots=8\nnode-b slots=4\n")
    req = LaunchRequest("dpo", "c.yaml", nodes=3, gpus_per_node=8, hostfile=str(hf), launcher="deepspeed")
    msgs = " ".join(c.message for c in check_hostfile(req) if not c.ok)
    assert "lists 2 host(s), --nodes is 3" in msgs and "node-b offer fewer than 8 slots" in msgs
    hf.write_text("node-a slots=8\nnode-b eight\n")
    (bad,) = check_hostfile(req)
    assert not bad.ok and "hosts:2" in bad.message and "hostname slots=N" in bad.message
    assert not check_hostfile(LaunchRequest("dpo", "c.yaml", nodes=2, launcher="deepspeed"))[0].ok
    example = LaunchRequest("dpo", "c.yaml", nodes=8, hostfile=str(REPO / "scripts" / "hostfile.example"))
    assert all(c.ok for c in check_hostfile(example))


def test_build_commands():
    cfg = "configs/me-llama-70b/dpo.yaml"
    single = build_command(LaunchRequest("dpo", "configs/me-llama-13b/dpo.yaml", nodes=1, gpus_per_node=8))
    assert single[1:4] == ["launch", "--config_file", str(REPO / "configs/accelerate/single_node.yaml")]
    assert single[single.index("--num_processes") + 1] == "8"
    assert single[-5:] == ["--module", "align.cli", "dpo", "--config", "configs/me-llama-13b/dpo.yaml"]
    multi = build_command(LaunchRequest("reward", cfg, nodes=8, gpus_per_node=8, master_addr="10.0.0.1",
                                        node_rank=3, extra_args=["--learning_rate", "1e-5"]))
    assert multi[multi.index("--num_processes") + 1] == "64" and multi[multi.index("--machine_rank") + 1] == "3"
    assert multi[multi.index("--main_process_ip") + 1] == "10.0.0.1"
    assert multi[-6:] == ["reward", "train", "--config", cfg, "--learning_rate", "1e-5"]
    ds = build_command(LaunchRequest("dpo", cfg, nodes=8, hostfile=str(REPO / "scripts/hostfile.example"),
                                     launcher="deepspeed"))
    assert Path(ds[0]).name == "deepspeed" and "--no_local_rank" in ds
    assert ds[ds.index("--master_addr") + 1] == "gpu-node-01"
    assert ds[ds.index("--module") + 1] == "align.cli"
    with pytest.raises(ClinalignError, match="unknown stage"):
        build_command(LaunchRequest("sft", cfg))


def test_launch_dry_run_prints_command_and_checks():
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "NODE_RANK", "SLURM_NODEID")}
    proc = subprocess.run([*CLI, "launch", "--stage", "dpo", "--config", "configs/me-llama-70b/dpo.yaml",
                           "--nodes", "8", "--gpus-per-node", "8", "--hostfile", "scripts/hostfile.example",
                           "--node-rank", "0", "--dry-run"], cwd=REPO, env=env | {"COLUMNS": "250"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "zero3.json ZeRO-3 valid at world size 64, train_batch_size 128" in out
    assert "would run:" in out and "--num_processes 64" in out and "--main_process_ip gpu-node-01" in out
    assert "FAIL GPUs" in out  # no GPU here: reported, not fatal in a dry run


def test_launch_refuses_when_checks_fail():
    proc = subprocess.run([*CLI, "launch", "--stage", "dpo", "--config", "configs/me-llama-13b/dpo.yaml",
                           "--nodes", "1", "--gpus-per-node", "8"], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=os.environ | {"COLUMNS": "250", "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 2
    assert "pre-launch check(s) failed: GPUs: --gpus-per-node 8 but this node sees 0" in proc.stderr
    assert "running:" not in proc.stdout
