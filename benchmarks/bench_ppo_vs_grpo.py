"""Peak memory and seconds per update: clinalign's PPO vs TRL's GRPO, same policy, reward model and batch.

Run: .venv/bin/python benchmarks/bench_ppo_vs_grpo.py [--policy builtin:smollm2-135m-instruct]
        [--reward builtin:minilm-l6] [--batch 8] [--length 32] [--updates 3] [--threads 2] [--full]

Each trainer runs in its own fresh process. Memory is the process's resident set (CPU: torch
allocations are not visible to tracemalloc): `VmHWM` is reset (`/proc/self/clear_refs`) once both
models are loaded, so "train peak" is the high-water mark while training, and "peak" the whole
process's. One update = `--batch` completions of `--length` tokens and one optimizer step over them
(PPO: 1 epoch, 1 mini batch, value head on the policy; GRPO: batch/4 prompts x 4 generations, beta
0.05 so both compute a reference pass with the LoRA adapter off); both score through clinalign's
RewardScorer. The first update is warm-up and is not timed. Goal from issue 5: PPO + LoRA within 1.5x GRPO's memory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_common import PROMPTS, reset_peak, status_mb, timed_updates

REPO = Path(__file__).resolve().parents[1]




# ------------------------------------------------------------------------------------------ workers
def worker_ppo(a, tmp: Path) -> dict:
    from align.recipes.ppo.ppo_config import PPOConfig
    from align.recipes.ppo.ppo_trainer import PPOTrainer

    args = PPOConfig(output_dir=str(tmp / "ppo"), model_name_or_path=a.policy, reward_model_path=a.reward,
                     allow_untrained_reward=True, per_device_train_batch_size=a.batch, num_mini_batches=1,
                     num_ppo_epochs=1, local_rollout_forward_batch_size=a.batch, max_steps=a.updates + 1,
                     response_length=a.length, learning_rate=1e-5, save_steps=0, logging_steps=1,
                     use_peft=not a.full, seed=0, temperature=0.7)
    trainer = PPOTrainer(args, prompts=PROMPTS * 4)
    loaded = status_mb("VmRSS")
    reset_peak()
    times = timed_updates(trainer.train_step, a.updates)
    return {"loaded_mb": loaded, "train_peak_mb": status_mb("VmHWM"), "s_per_update": sum(times) / a.updates}


def worker_grpo(a, tmp: Path) -> dict:
    from types import SimpleNamespace

    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from align.models import load_causal_lm, load_tokenizer
    from align.recipes.online_rl import scorer_reward_func
    from align.recipes.ppo.rollout import make_reward_source

    gens = 4
    args = GRPOConfig(output_dir=str(tmp / "grpo"), per_device_train_batch_size=a.batch, num_generations=gens,
                      max_completion_length=a.length, max_steps=a.updates + 1, learning_rate=1e-5, beta=0.05,
                      temperature=0.7, bf16=False, gradient_checkpointing=False, report_to="none",
                      logging_steps=1, save_strategy="no", seed=0, disable_tqdm=True)
    # The reward goes through clinalign's RewardScorer in both trainers (GRPO's `reward_via: scorer`).
    source = make_reward_source(SimpleNamespace(reward_function=None, reward_model_path=a.reward,
                                                reward_max_length=None, allow_untrained_reward=True,
                                                local_rollout_forward_batch_size=a.batch))
    rows = [{"prompt": [{"role": "user", "content": p}], "question": p} for p in PROMPTS * 4]
    peft = None if a.full else LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj",
                                                                                "o_proj"], task_type="CAUSAL_LM")
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *args, **kwargs):
            stamps.append(time.perf_counter())

    trainer = GRPOTrainer(model=load_causal_lm(a.policy), reward_funcs=scorer_reward_func(source), args=args,
                          train_dataset=Dataset.from_list(rows), processing_class=load_tokenizer(a.policy),
                          peft_config=peft, callbacks=[Clock()])
    loaded = status_mb("VmRSS")
    reset_peak()
    trainer.train()
    steps = [b - a_ for a_, b in zip(stamps, stamps[1:], strict=False)]
    return {"loaded_mb": loaded, "train_peak_mb": status_mb("VmHWM"), "s_per_update": sum(steps) / len(steps)}


# ------------------------------------------------------------------------------------------ driver
def run_worker(kind: str, a) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, __file__, "--worker", kind, "--policy", a.policy, "--reward", a.reward,
           "--batch", str(a.batch), "--length", str(a.length), "--updates", str(a.updates),
           "--threads", str(a.threads)] + (["--full"] if a.full else [])
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{kind} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--policy", default="builtin:smollm2-135m-instruct")
    p.add_argument("--reward", default="builtin:minilm-l6")
    p.add_argument("--batch", type=int, default=8, help="completions per update (a multiple of 4)")
    p.add_argument("--length", type=int, default=32, help="tokens per completion")
    p.add_argument("--updates", type=int, default=3, help="timed updates (after one warm-up)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA (both trainers)")
    p.add_argument("--worker", choices=["ppo", "grpo"], help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        import torch

        import annotation  # noqa: F401  (offline defaults)

        torch.set_num_threads(a.threads)
        with tempfile.TemporaryDirectory() as tmp:
            fn = worker_ppo if a.worker == "ppo" else worker_grpo
            res = fn(a, Path(tmp))
        res["peak_mb"] = status_mb("VmHWM")
        print("RESULT " + json.dumps(res), flush=True)
        return

    mode = "full fine-tuning" if a.full else "LoRA r=16 (q,k,v,o)"
    print(f"policy {a.policy}, reward {a.reward}, {mode}; {a.batch} completions x {a.length} tokens per "
          f"update; {a.threads} threads; {a.updates} timed updates")
    res = {}
    for kind in ("ppo", "grpo"):
        res[kind] = run_worker(kind, a)
        print(f"  {kind}: {json.dumps({k: round(v, 2) for k, v in res[kind].items()})}", flush=True)
    print(f"{'':28}{'clinalign PPO':>16}{'TRL GRPO':>14}{'PPO / GRPO':>12}")
    for key, label in (("loaded_mb", "RSS after loading (MB)"), ("train_peak_mb", "peak RSS training (MB)"),
                       ("s_per_update", "seconds per update")):
        x, y = res["ppo"][key], res["grpo"][key]
        print(f"{label:28}{x:16.1f}{y:14.1f}{x / y:12.2f}")
    ratio = res["ppo"]["train_peak_mb"] / res["grpo"]["train_peak_mb"]
    print(f"goal (PPO peak within 1.5x GRPO's): {'met' if ratio <= 1.5 else 'NOT met'} ({ratio:.2f}x)")


if __name__ == "__main__":
    main()
