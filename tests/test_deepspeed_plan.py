"""The memory planner against DeepSpeed's own estimators and the known Me LLaMA figures."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

from align.distributed import plan as dp
from clinalign_base.errors import ClinalignError

REPO = Path(__file__).resolve().parents[1]
GB = 2**30


def _meta_numel(arch: dp.Architecture, cls_name: str = "LlamaForCausalLM") -> int:
    """Parameters of the real transformers class for this shape, built on the meta device (no memory)."""
    import torch
    import transformers

    cfg = transformers.LlamaConfig(hidden_size=arch.hidden, num_hidden_layers=arch.layers, vocab_size=arch.vocab,
                                   intermediate_size=arch.intermediate, num_attention_heads=arch.heads,
                                   num_key_value_heads=arch.kv_heads, tie_word_embeddings=arch.tied_embeddings,
                                   num_labels=1)
    with torch.device("meta"):
        model = getattr(transformers, cls_name)(cfg)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name,published", [("me-llama-13b", 13_015_864_320), ("me-llama-70b", 68_976_648_192)])
def test_parameter_counts_match_llama2_and_transformers(name, published):
    arch = dp.KNOWN_MODELS[name]
    total, largest = dp.param_counts(arch)
    assert total == published  # LLaMA-2 13B / 70B, as their HF checkpoints count them
    assert total == _meta_numel(arch)
    assert largest == arch.vocab * arch.hidden  # the embedding is the largest single layer
    score_total, _ = dp.param_counts(arch, head="score")
    assert score_total == _meta_numel(arch, "LlamaForSequenceClassification")


@pytest.mark.parametrize("model,offload,expected", [
    ("me-llama-13b", False, 27.9), ("me-llama-13b", True, 3.6),
    ("me-llama-70b", False, 145.5), ("me-llama-70b", True, 17.0)])
def test_zero3_on_8_gpus_known_values(model, offload, expected):
    w = dp.Workload(model, "dpo", gpus=8, lora=False)
    row = dp.plan_row(w, dp.Option(3, offload, False, ""))
    assert round(row.states / GB, 1) == expected


def _printed_all_cold(fn, *args, **kw) -> dict[str, float]:
    """The per-GPU GB column DeepSpeed's `*_all_cold` estimator prints, keyed by its options string."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        fn(*args, **kw)
    out = {}
    for line in buf.getvalue().splitlines():
        m = re.match(r"\s*([\d.]+)GB \|\s*([\d.]+)GB \| (.+)$", line)
        if m:
            # DeepSpeed formats its enum as "OffloadDeviceEnum.cpu" on Python 3.11+, "cpu" before.
            out[m.group(3).replace(" ", "").replace("OffloadDeviceEnum.", "")] = float(m.group(2))
    return out


@pytest.mark.parametrize("model", ["me-llama-13b", "me-llama-70b"])
@pytest.mark.parametrize("gpus,nodes", [(8, 1), (64, 8)])
def test_states_equal_what_deepspeed_all_cold_prints(model, gpus, nodes):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs_all_cold
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs_all_cold

    total, largest = dp.param_counts(dp.KNOWN_MODELS[model])
    z3 = _printed_all_cold(estimate_zero3_model_states_mem_needs_all_cold, total, largest,
                           num_gpus_per_node=gpus // nodes, num_nodes=nodes)
    z2 = _printed_all_cold(estimate_zero2_model_states_mem_needs_all_cold, total,
                           num_gpus_per_node=gpus // nodes, num_nodes=nodes)
    assert z3 and z2
    w = dp.Workload(model, "dpo", gpus=gpus, nodes=nodes, lora=False)
    ours = {opt: round(dp.plan_row(w, opt).states / GB, 2) for opt in dp.OPTIONS}
    for opt, gb in ours.items():
        if opt.stage == 3:
            key = (f"offload_param={'cpu' if opt.offload_param else 'none'},"
                   f"offload_optimizer={'cpu' if opt.offload_optimizer else 'none'},zero_init=1")
            assert gb == z3[key], opt.label
        else:
            assert gb == z2[f"offload_optimizer={'cpu' if opt.offload_optimizer else 'none'}"], opt.label


def test_lora_counts_match_peft():
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    arch = dp.Architecture("t", hidden=64, layers=2, vocab=1000, intermediate=176, heads=4, kv_heads=2)
    cfg = transformers.LlamaConfig(hidden_size=64, num_hidden_layers=2, vocab_size=1000, intermediate_size=176,
                                   num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    model = get_peft_model(transformers.LlamaForCausalLM(cfg), LoraConfig(
        r=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert dp.lora_counts(arch, 8)[0] == trainable


def test_local_config_folder(tmp_path):
    (tmp_path / "config.json").write_text(
        '{"hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 1000, "intermediate_size": 128,'
        ' "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": true}')
    arch = dp.architecture(str(tmp_path))
    assert (arch.hidden, arch.kv_dim, arch.tied_embeddings) == (64, 32, True)
    assert dp.param_counts(arch)[0] == _meta_numel(arch)
    with pytest.raises(ClinalignError, match="unknown model"):
        dp.architecture("me-llama-7b")


def test_stage_extras():
    base = dict(model="me-llama-13b", gpus=8, gpu_mem_gb=80)
    z3 = dp.OPTIONS[1]
    dpo_lora = dp.plan_row(dp.Workload(stage="dpo", **base), z3)
    dpo_full = dp.plan_row(dp.Workload(stage="dpo", lora=False, **base), z3)
    assert dpo_lora.reference == 0  # the adapter-disabled base is the reference
    assert dpo_full.reference == 2 * dp.param_counts(dp.KNOWN_MODELS["me-llama-13b"])[0] // 8  # bf16, sharded
    assert dpo_lora.frozen > 0 and dpo_full.frozen == 0
    ppo = dp.plan_row(dp.Workload(stage="ppo", **base), z3)
    assert ppo.reward > 0 and ppo.value == 0 and ppo.reference == 0
    critic = dp.plan_row(dp.Workload(stage="ppo", critic="model", **base), z3)
    assert critic.value > 0 and critic.total > ppo.total
    rm_70b = dp.plan_row(dp.Workload(stage="ppo", reward_model="me-llama-70b", **base), z3)
    assert rm_70b.reward > ppo.reward
    reward = dp.plan_row(dp.Workload(stage="reward", **base), z3)
    assert reward.reference == reward.reward == 0
    # Offloading parameters takes the frozen weights off the GPU entirely.
    full_offload = dp.plan_row(dp.Workload(stage="dpo", **base), dp.OPTIONS[4])
    assert full_offload.frozen == 0 and full_offload.cpu_per_node > dpo_lora.cpu_per_node
    # Longer sequences and checkpointing off cost activations.
    longer = dp.plan_row(dp.Workload(stage="dpo", seq_len=4096, **base), z3)
    no_ckpt = dp.plan_row(dp.Workload(stage="dpo", gradient_checkpointing=False, **base), z3)
    assert dpo_lora.activations < longer.activations < no_ckpt.activations


def test_recommendation():
    w = dp.Workload("me-llama-70b", "ppo", gpus=8, gpu_mem_gb=80)
    rows = dp.plan(w)
    best = dp.recommend(w, rows)
    assert best is not None and best.lora and dp.fits(best, w)
    assert best.option.stage == 3  # 70B bf16 weights replicated per GPU (ZeRO-2) cannot fit in 80 GB
    # The faster options listed before it did not fit.
    assert not any(dp.fits(r, w) for r in rows[:rows.index(best)] if r.lora)
    tiny = dp.Workload("me-llama-70b", "dpo", gpus=1, gpu_mem_gb=4, lora=False)
    assert dp.recommend(tiny, dp.plan(tiny)) is None
    cpu_bound = dp.Workload("me-llama-70b", "dpo", gpus=8, gpu_mem_gb=24, cpu_mem_gb=64)
    rec = dp.recommend(cpu_bound, dp.plan(cpu_bound))
    assert rec is None or rec.cpu_per_node <= 64 * GB


def test_bad_workloads():
    with pytest.raises(ClinalignError, match="split evenly"):
        dp.Workload("me-llama-70b", "dpo", gpus=10, nodes=4)
    with pytest.raises(ClinalignError, match="unknown stage"):
        dp.Workload("me-llama-70b", "sft", gpus=8)


def test_plan_cli_prints_table():
    proc = subprocess.run([sys.executable, "-m", "align.cli", "plan", "--model", "me-llama-70b", "--stage", "ppo",
                           "--gpus", "8", "--gpu-mem", "80"], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**__import__("os").environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    print(proc.stdout)
    assert "me-llama-70b · ppo · 8 GPU(s)" in proc.stdout
    assert "145.5" in proc.stdout and "17.0" in proc.stdout  # full fine-tuning ZeRO-3 rows
    assert "Recommended:" in proc.stdout and "configs/deepspeed/" in proc.stdout
    nothing = subprocess.run([sys.executable, "-m", "align.cli", "plan", "--model", "me-llama-70b", "--full",
                              "--gpus", "1", "--gpu-mem", "4"], cwd=REPO, capture_output=True, text=True,
                             timeout=300, env={**__import__("os").environ, "COLUMNS": "200"})
    assert nothing.returncode == 1 and "Nothing fits" in nothing.stdout
