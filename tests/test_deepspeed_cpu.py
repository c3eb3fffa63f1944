"""TRL's DPO and reward trainers really running through DeepSpeed ZeRO-2/3 on this CPU.

Every run happens in a fresh subprocess (this file is also the worker script: `python
tests/test_deepspeed_cpu.py --task ...`, or under `torchrun` for two ranks), because DeepSpeed, the
process group and the HF integration keep process-wide state. The worker uses the *shipped*
configs/deepspeed/*.json. `DS_ACCELERATOR=cpu` picks DeepSpeed's CPU accelerator; the CPU switches
of accelerate (`Accelerator(cpu=True)`, `ACCELERATE_USE_CPU=true`, TrainingArguments `use_cpu=True`)
would silently replace DeepSpeed with plain DDP, so they are kept off and every test asserts that the
trained model is a `deepspeed.DeepSpeedEngine` at the expected ZeRO stage.

The first run JIT-compiles DeepSpeed's CPU ops (~4 min here) into TORCH_EXTENSIONS_DIR
(default ~/.cache/clinalign/torch_extensions, as the Makefile sets); later runs load them.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
DS_DIR = REPO / "configs" / "deepspeed"
TIMEOUT = 1200  # includes a cold op build

pytestmark = pytest.mark.deepspeed

ROWS = [{"prompt": f"Patient question {i}: what should I do about a mild tension headache?",
         "chosen": " Rest, drink water, and take paracetamol as directed; see a doctor if it persists.",
         "rejected": " Ignore it."} for i in range(8)]


# ----------------------------------------------------------------------------------------- test side
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ACCELERATE_USE_CPU", "ACCELERATE_USE_DEEPSPEED")}
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO),
               TORCH_EXTENSIONS_DIR=os.environ.get("TORCH_EXTENSIONS_DIR")
               or str(Path.home() / ".cache" / "clinalign" / "torch_extensions"),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return env


def run_worker(out: Path, *args: str, nproc: int = 1) -> list[dict]:
    """Run the worker (1 process, or `nproc` under torchrun on gloo); one result dict per rank."""
    out.mkdir(parents=True, exist_ok=True)
    env = _env()
    port = str(_free_port())
    if nproc == 1:
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK="0", LOCAL_RANK="0", WORLD_SIZE="1",
                   LOCAL_WORLD_SIZE="1")
        cmd = [sys.executable, str(HERE)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               "--master_addr=127.0.0.1", f"--master_port={port}", str(HERE)]
    proc = subprocess.run([*cmd, "--out", str(out), *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=TIMEOUT)
    (out / "worker.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, f"worker failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-4000:]}"
    return [json.loads((out / f"result-rank{r}.json").read_text()) for r in range(nproc)]


def _load(path: str):
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_deepspeed(result: dict, zero: int, world: int = 1) -> None:
    print(f"rank {result['rank']}: {result['engine']} ZeRO-{result['zero_stage']} world={result['world_size']}")
    assert result["is_deepspeed_engine"], f"trained model is {result['engine']}, not a DeepSpeedEngine"
    assert result["distributed_type"] == "DEEPSPEED"
    assert result["zero_stage"] == zero
    assert result["world_size"] == world


@pytest.mark.parametrize("zero", [2, 3])
@pytest.mark.parametrize("task", ["dpo", "reward"])
def test_trl_trainer_runs_under_deepspeed(tmp_path, task, zero):
    (res,) = run_worker(tmp_path, "--task", task, "--zero", str(zero), "--steps", "2")
    _assert_deepspeed(res, zero)
    assert res["global_step"] == 2
    assert all(loss == loss and loss < 50 for loss in res["losses"])  # finite
    # Training went through DeepSpeed's optimizer and changed the weights.
    assert res["max_abs_change"] > 0


def test_two_ranks_keep_identical_parameters(tmp_path):
    results = run_worker(tmp_path, "--task", "dpo", "--zero", "3", "--steps", "2", nproc=2)
    for res in results:
        _assert_deepspeed(res, 3, world=2)
    # Each rank saw different pairs (distributed sampler), yet after gathering the ZeRO-3 shards both
    # hold the same full parameters, and those differ from the starting point.
    assert results[0]["seen_prompts"] != results[1]["seen_prompts"]
    p0, p1 = _load(results[0]["params_file"]), _load(results[1]["params_file"])
    assert p0.keys() == p1.keys() and p0
    for name in p0:
        assert p0[name].equal(p1[name]), f"{name} differs between ranks"
    assert all(res["max_abs_change"] > 0 for res in results)


def test_checkpoint_consolidate_and_resume(tmp_path):
    import torch

    # A: 4 steps straight. B: the same run stopped after step 2 (checkpoint), then resumed to 4.
    (straight,) = run_worker(tmp_path / "straight", "--task", "dpo", "--zero", "3", "--steps", "4")
    (first,) = run_worker(tmp_path / "resume", "--task", "dpo", "--zero", "3", "--steps", "4",
                          "--stop-at", "2", "--save-steps", "2")
    ckpt = tmp_path / "resume" / "run" / "checkpoint-2"
    assert (ckpt / "latest").is_file() and (ckpt / "zero_to_fp32.py").is_file()

    # Consolidate the sharded ZeRO-3 checkpoint with the script DeepSpeed puts beside it.
    out = tmp_path / "consolidated"
    proc = subprocess.run([sys.executable, str(ckpt / "zero_to_fp32.py"), str(ckpt), str(out)], env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = list(out.glob("*.bin")) + list(out.glob("*.safetensors"))
    assert files, f"zero_to_fp32 wrote nothing in {out}"
    if files[0].suffix == ".safetensors":
        from safetensors.torch import load_file

        consolidated = load_file(str(files[0]))
    else:
        consolidated = _load(str(files[0]))
    at_step2 = _load(first["params_file"])
    common = [k for k in at_step2 if k in consolidated]
    assert len(common) >= len(at_step2) - 1  # a tied lm_head may be stored once
    for name in common:
        torch.testing.assert_close(consolidated[name].float(), at_step2[name].float(), rtol=0, atol=0)

    (resumed,) = run_worker(tmp_path / "resume", "--task", "dpo", "--zero", "3", "--steps", "4",
                            "--resume", str(ckpt))
    _assert_deepspeed(resumed, 3)
    # It continued from step 2: two more steps ran, not four.
    assert resumed["global_step"] == 4 and resumed["loss_calls"] == 2 and straight["loss_calls"] == 4
    # Weights, Adam moments, LR schedule and data position all restored: same weights as run A.
    a, b = _load(straight["params_file"]), _load(resumed["params_file"])
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6)
    assert not all(a[n].equal(at_step2[n]) for n in a)  # and steps 3-4 did change something


def test_lead_dpo_recipe_under_zero3(tmp_path):
    """`align.recipes.dpo.train_from_yaml` (the shipped demo recipe) with the shipped ZeRO-3 config."""
    (res,) = run_worker(tmp_path, "--task", "recipe", "--zero", "3", "--steps", "2")
    _assert_deepspeed(res, 3)
    assert res["global_step"] == 2
    assert Path(res["output_dir"], "adapter_config.json").is_file()


# --------------------------------------------------------------------------------------- worker side
def _gather_params(model) -> dict:
    """Full parameters (ZeRO-3 shards gathered) as CPU tensors."""
    import deepspeed

    params = list(model.parameters())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        return {n: p.detach().clone().cpu() for n, p in model.named_parameters()}


def _rank_result(trainer, args, out: Path, initial: dict | None) -> None:
    import deepspeed
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else 0
    engine = trainer.model_wrapped
    module = engine.module if isinstance(engine, deepspeed.DeepSpeedEngine) else trainer.model
    final = _gather_params(module)
    params_file = out / f"params-rank{rank}.pt"
    import torch

    torch.save(final, params_file)
    change = max(((final[k] - initial[k]).abs().max().item() for k in initial), default=0.0) if initial else 0.0
    logs = [h for h in trainer.state.log_history if "loss" in h]
    result = {
        "rank": rank, "engine": f"{type(engine).__module__}.{type(engine).__name__}",
        "is_deepspeed_engine": isinstance(engine, deepspeed.DeepSpeedEngine),
        "zero_stage": engine.zero_optimization_stage() if hasattr(engine, "zero_optimization_stage") else -1,
        "distributed_type": trainer.accelerator.state.distributed_type.name,
        "world_size": dist.get_world_size() if dist.is_initialized() else 1,
        "global_step": trainer.state.global_step, "losses": [h["loss"] for h in logs],
        "loss_calls": getattr(trainer, "_loss_calls", 0), "params_file": str(params_file),
        "max_abs_change": change, "seen_prompts": sorted(getattr(trainer, "_seen_prompts", [])),
        "output_dir": args.output_dir if hasattr(args, "output_dir") else "",
    }
    (out / f"result-rank{rank}.json").write_text(json.dumps(result))


def _stop_callback(stop_at: int | None):
    from transformers import TrainerCallback

    class StopAt(TrainerCallback):
        # Stop (with a checkpoint) part-way through a run planned for more steps, so the LR schedule
        # is the one a real interruption would leave behind.
        def on_step_end(self, args, state, control, **kwargs):
            if stop_at and state.global_step >= stop_at:
                control.should_save = True
                control.should_training_stop = True
            return control

    return StopAt()


def _record_prompts(trainer, tok) -> None:
    """Remember which prompts this rank trained on (the two-rank test checks they differ)."""
    trainer._seen_prompts, trainer._loss_calls = set(), 0
    original = trainer.compute_loss

    def compute_loss(model, inputs, *a, **kw):
        trainer._loss_calls += 1
        ids = inputs.get("prompt_ids", inputs.get("input_ids", inputs.get("chosen_input_ids")))
        if ids is not None:
            trainer._seen_prompts.update(tok.batch_decode(ids[:, :16], skip_special_tokens=True))
        return original(model, inputs, *a, **kw)

    trainer.compute_loss = compute_loss


def _multi_rank_cpu_state() -> dict:
    """Two ranks on CPU: pre-configure accelerate's state with DeepSpeed on gloo (test-only switch).

    TrainingArguments' DeepSpeed branch gives accelerate no backend; on CPU accelerate then counts one
    process (`backend is None`), so the "auto" train_batch_size is filled for world size 1 and ZeRO-3
    init fails on rank 0 and 1 alike. On GPUs the backend is nccl and none of this is needed.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return {}
    from accelerate import PartialState

    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    try:
        PartialState(backend="gloo")
    finally:
        del os.environ["ACCELERATE_USE_DEEPSPEED"]
    return {"accelerator_config": {"use_configured_state": True}}


def _common_args(cli, out: Path) -> dict:
    from align.distributed.ds_config import load_ds_json

    return _multi_rank_cpu_state() | dict(output_dir=str(out / "run"), deepspeed=load_ds_json(DS_DIR / f"zero{cli.zero}.json"),
                bf16=False, use_cpu=False, per_device_train_batch_size=2, gradient_accumulation_steps=1,
                max_steps=cli.steps, learning_rate=1e-3, gradient_checkpointing=False, report_to="none",
                logging_steps=1, save_strategy="steps" if cli.save_steps else "no",
                save_steps=cli.save_steps or 500, seed=0, data_seed=0, dataloader_num_workers=0)


def _worker_dpo(cli, out: Path):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from align.models import TINY_LLAMA, load_tokenizer, resolve_model

    args = DPOConfig(**_common_args(cli, out), max_length=64, beta=0.1)  # before the model: ZeRO-3 init
    tok = load_tokenizer(TINY_LLAMA)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(TINY_LLAMA), dtype=torch.float32)
    initial = _gather_params(model)
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(ROWS), processing_class=tok,
                         callbacks=[_stop_callback(cli.stop_at)])
    _record_prompts(trainer, tok)
    trainer.train(resume_from_checkpoint=cli.resume)
    return trainer, args, initial


def _worker_reward(cli, out: Path):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    from align.models import TINY_LLAMA, load_tokenizer, resolve_model

    args = RewardConfig(**_common_args(cli, out), max_length=64)
    tok = load_tokenizer(TINY_LLAMA, padding_side="right")
    model = AutoModelForSequenceClassification.from_pretrained(resolve_model(TINY_LLAMA), num_labels=1,
                                                               dtype=torch.float32)
    model.config.pad_token_id = tok.pad_token_id
    initial = _gather_params(model)
    rows = [{"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]} for r in ROWS]
    trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    _record_prompts(trainer, tok)
    trainer.train()
    return trainer, args, initial


def _worker_recipe(cli, out: Path):
    """The lead's recipe; its DPOTrainer is captured to inspect the engine it trained."""
    import trl

    from align.recipes.dpo import train_from_yaml

    data = out / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    captured = {}
    original = trl.DPOTrainer.train

    def train(self, *a, **kw):
        captured["trainer"] = self
        return original(self, *a, **kw)

    trl.DPOTrainer.train = train
    overrides = {"model_name_or_path": "builtin:tiny-llama", "dataset_path": str(data),
                 "deepspeed": str(DS_DIR / f"zero{cli.zero}.json"), "use_cpu": False, "bf16": False,
                 "output_dir": str(out / "run"), "max_steps": cli.steps, "per_device_train_batch_size": 2,
                 "gradient_accumulation_steps": 1, "max_length": 64, "report_to": "none",
                 "save_strategy": "no", "logging_steps": 1, "num_threads": 1}
    train_from_yaml(str(REPO / "configs" / "demo" / "dpo.yaml"), overrides)
    trainer = captured["trainer"]
    return trainer, trainer.args, None


def worker_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", choices=["dpo", "reward", "recipe"], required=True)
    parser.add_argument("--zero", type=int, choices=[2, 3], required=True)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--out", required=True)
    parser.add_argument("--stop-at", type=int, default=None)
    parser.add_argument("--save-steps", type=int, default=None)
    parser.add_argument("--resume", default=None)
    cli = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    out = Path(cli.out)
    trainer, args, initial = {"dpo": _worker_dpo, "reward": _worker_reward, "recipe": _worker_recipe}[cli.task](
        cli, out)
    _rank_result(trainer, args, out, initial)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    worker_main()
