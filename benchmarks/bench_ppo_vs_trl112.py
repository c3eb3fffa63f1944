"""Peak memory and seconds per update: `clinalign ppo` against TRL 1.12's PPOTrainer (the anchor).

Run: .venv/bin/python benchmarks/bench_ppo_vs_trl112.py [--batch 8] [--length 48] [--epochs 1]
        [--updates 3] [--rounds 2] [--threads 2]

TRL 1.12 is the last TRL with PPO (`trl.experimental.ppo`). The benchmark makes its own venv for it
(~/.cache/clinalign/venvs/trl112: `trl==1.12.0` installed without dependencies over this project's
venv through a .pth file, so torch, transformers, peft and accelerate are the very same builds).

Both trainers get the same SmolLM2-135M-Instruct policy with LoRA r16 on q/k/v/o (reference = adapter
off), the same reward model, the same prompts and the same batch: `--batch` prompts per update, one
mini batch, `--epochs` PPO epochs, `--length` new tokens at temperature 0.7, fp32, no checkpointing.
TRL 1.12 needs its reward and value models to share the policy's tokenizer, so the reward model is
SmolLM2-135M with a one-output score head (seeded, untrained: this measures cost, not learning), and
TRL's critic is a second copy of it, as TRL's PPO is built (policy, reference, reward, value). clinalign's
critic is a value head on the policy. Each run is a fresh process, the order alternating by round;
the first update is warm-up and not timed. Memory is the process's high-water mark (VmHWM) while
training. Goal (issue 15): clinalign <= 0.5x TRL's peak memory and <= 0.7x its time per update.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from bench_common import PROMPTS, reset_peak, status_mb, timed_updates

REPO = Path(__file__).resolve().parents[1]
VENV = Path.home() / ".cache" / "clinalign" / "venvs" / "trl112"
POLICY = "builtin:smollm2-135m-instruct"
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}




def trl112_python() -> str:
    """The TRL 1.12 venv's python, made once (idempotent)."""
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        own = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
        Path(own, "clinalign_base_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "trl==1.12.0"], check=True)
    return str(python)


def make_reward_model(folder: Path) -> None:
    """SmolLM2-135M with a seeded one-output score head, and the policy's tokenizer."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from align.models import resolve_model

    torch.manual_seed(0)
    path = resolve_model(POLICY)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)


# ------------------------------------------------------------------------------------------ workers
def worker_clinalign(a, reward: str, tmp: Path) -> dict:
    from align.recipes.ppo.ppo_config import PPOConfig
    from align.recipes.ppo.ppo_trainer import PPOTrainer

    args = PPOConfig(output_dir=str(tmp / "ppo"), model_name_or_path=POLICY, reward_model_path=reward,
                     allow_untrained_reward=True, per_device_train_batch_size=a.batch, num_mini_batches=1,
                     num_ppo_epochs=a.epochs, local_rollout_forward_batch_size=a.batch, max_steps=a.updates + 1,
                     response_length=a.length, learning_rate=1e-5, save_steps=0, logging_steps=1,
                     use_peft=True, lora_r=LORA["r"], lora_alpha=LORA["lora_alpha"], lora_dropout=0.0,
                     lora_target_modules=LORA["target_modules"], seed=0, temperature=0.7)
    trainer = PPOTrainer(args, prompts=PROMPTS * 4)
    reset_peak()
    times = timed_updates(trainer.train_step, a.updates)
    return {"train_peak_mb": status_mb("VmHWM"), "s_per_update": statistics.mean(times)}


def worker_trl112(a, reward: str, tmp: Path) -> dict:
    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        TrainerCallback,
    )
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    from align.models import resolve_model

    assert trl.__version__ == "1.12.0", trl.__version__
    path = resolve_model(POLICY)
    tok = AutoTokenizer.from_pretrained(path, padding_side="left")
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
             for p in PROMPTS * 4]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    args = PPOConfig(output_dir=str(tmp / "trl"), per_device_train_batch_size=a.batch, num_mini_batches=1,
                     num_ppo_epochs=a.epochs, local_rollout_forward_batch_size=a.batch,
                     total_episodes=a.batch * (a.updates + 1), response_length=a.length, temperature=0.7,
                     learning_rate=1e-5, stop_token="eos", bf16=False, gradient_checkpointing=False,
                     use_cpu=True, report_to="none", save_strategy="no", logging_steps=1, seed=0,
                     num_sample_generations=0, disable_tqdm=True)
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *args, **kwargs):
            stamps.append(time.perf_counter())

    trainer = PPOTrainer(args=args, processing_class=tok, model=AutoModelForCausalLM.from_pretrained(path),
                         ref_model=None, reward_model=AutoModelForSequenceClassification.from_pretrained(reward),
                         value_model=AutoModelForSequenceClassification.from_pretrained(reward),
                         train_dataset=Dataset.from_dict({"input_ids": ids}), peft_config=LoraConfig(**LORA),
                         callbacks=[Clock()])
    reset_peak()
    start = time.perf_counter()
    trainer.train()
    edges = [start, *stamps]
    steps = [b - a_ for a_, b in zip(edges, edges[1:], strict=False)][1:]
    return {"train_peak_mb": status_mb("VmHWM"), "s_per_update": statistics.mean(steps)}


# ------------------------------------------------------------------------------------------ driver
def run_worker(kind: str, a, reward: Path) -> dict:
    python = trl112_python() if kind == "trl112" else sys.executable
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    cmd = [python, __file__, "--worker", kind, "--reward-path", str(reward), "--batch", str(a.batch),
           "--length", str(a.length), "--epochs", str(a.epochs), "--updates", str(a.updates), "--threads", str(a.threads)]
    load = os.getloadavg()[0]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{kind} worker failed:\n{proc.stderr[-3000:]}")
    res = json.loads(lines[-1][len("RESULT "):])
    res["load"] = f"{load:.2f} -> {os.getloadavg()[0]:.2f}"
    print(f"  {kind:10s} {res['s_per_update']:7.2f} s/update  peak {res['train_peak_mb']:7.0f} MB  load {res['load']}",
          flush=True)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8, help="prompts (completions) per update")
    p.add_argument("--length", type=int, default=48, help="new tokens per completion")
    p.add_argument("--epochs", type=int, default=1, help="PPO epochs per rollout batch")
    p.add_argument("--updates", type=int, default=3, help="timed updates (after one warm-up)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--worker", choices=["clinalign", "trl112"], help=argparse.SUPPRESS)
    p.add_argument("--reward-path", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        import torch

        import annotation  # noqa: F401  (offline defaults before any hub library loads)

        torch.set_num_threads(a.threads)
        with tempfile.TemporaryDirectory() as tmp:
            fn = worker_clinalign if a.worker == "clinalign" else worker_trl112
            res = fn(a, a.reward_path, Path(tmp))
        print("RESULT " + json.dumps(res), flush=True)
        return

    trl112_python()
    print(f"SmolLM2-135M-Instruct + LoRA r16 (q,k,v,o); {a.batch} completions x {a.length} tokens per update, "
          f"{a.epochs} PPO epoch(s); {a.threads} threads; {a.updates} timed updates; {a.rounds} rounds")
    res: dict[str, list[dict]] = {"clinalign": [], "trl112": []}
    with tempfile.TemporaryDirectory() as tmp:
        reward = Path(tmp) / "reward"
        make_reward_model(reward)
        for r in range(a.rounds):
            for kind in ("clinalign", "trl112") if r % 2 == 0 else ("trl112", "clinalign"):
                res[kind].append(run_worker(kind, a, reward))
    med = {k: {m: statistics.median(x[m] for x in v) for m in ("train_peak_mb", "s_per_update")}
           for k, v in res.items()}
    print(f"\n{'':26}{'clinalign':>12}{'TRL 1.12':>12}{'ratio':>8}{'goal':>8}")
    for key, label, goal in (("train_peak_mb", "peak RSS training (MB)", 0.5), ("s_per_update", "seconds per update", 0.7)):
        x, y = med["clinalign"][key], med["trl112"][key]
        print(f"{label:26}{x:12.1f}{y:12.1f}{x / y:8.2f}{'<= ' + str(goal):>8}  {'met' if x / y <= goal else 'NOT met'}")


if __name__ == "__main__":
    main()
