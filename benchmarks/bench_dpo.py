"""`clinalign dpo` against a plain TRL DPO script: steps/s, peak memory and loss, side by side.

    .venv/bin/python benchmarks/bench_dpo.py [--data runs/demo/preferences] [--pairs 40] [--steps 10]
        [--rounds 2] [--threads 2] [--variants plain,plain_no_gc,clinalign]

Both sides train the same SmolLM2-135M-Instruct + LoRA (r16, all linear layers), on the same first
`--pairs` preference pairs, batch 4, max_length 256, lr 5e-4, beta 0.1, `--steps` optimiser steps:
- plain: a TRL script that sets only those experiment-defining values and leaves every other field at
  TRL's default (bf16 autocast on, gradient checkpointing on, reference forward every step);
- plain_no_gc: the same with gradient checkpointing off (the strongest plain baseline on a CPU);
- clinalign: `align.recipes.dpo.train_from_yaml(configs/demo/dpo.yaml)` (bf16 only where the CPU has
  AVX512-BF16/AMX, reference log-probs computed once with the adapter off, no checkpointing);
- clinalign_fp32: the same in float32 (does bf16 autocast pay on this CPU?);
- clinalign_tiled_head: the same with TRL's tiled LM head instead of clinalign's dense CPU head;
- clinalign_gc: the same with gradient checkpointing (TRL's default memory trade).
LoRA dropout is 0 on every side (configs/demo/dpo.yaml's setting; dropout cost 24% of a CPU step).
Each run is a fresh process; the order alternates (reversed every other round). The clock is TRL's
`train_runtime` (the training loop, reference precomputation included; model loading excluded).
Peak memory is the child's ru_maxrss. Prints steps/s, each variant's ratio to `plain`, the final loss
and the load average before and after every run: figures taken while other jobs run are not final.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

COMMON = {"per_device_train_batch_size": 4, "max_length": 256, "learning_rate": 5e-4, "beta": 0.1,
          "lr_scheduler_type": "cosine", "warmup_steps": 2, "seed": 0}
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}

PLAIN = """
import json, resource, sys, torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer
from align.recipes.dpo import to_conversational
from align.models import resolve_model
from annotation.preferences import load_preference_rows
cfg = json.loads(sys.argv[1])
torch.set_num_threads(cfg["threads"])
path = resolve_model("builtin:smollm2-135m-instruct")
rows = load_preference_rows(cfg["data"])[: cfg["pairs"]]
args = DPOConfig(output_dir=cfg["out"], max_steps=cfg["steps"], use_cpu=True, report_to="none",
                 save_strategy="no", logging_steps=1, **cfg["common"], **cfg["extra"])
trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(path), args=args,
                     train_dataset=Dataset.from_list(to_conversational(rows)),
                     processing_class=AutoTokenizer.from_pretrained(path), peft_config=LoraConfig(**cfg["lora"]))
m = trainer.train().metrics
print(json.dumps({"runtime": m["train_runtime"], "loss": m["train_loss"], "steps": trainer.state.global_step,
                  "bf16": args.bf16, "gc": args.gradient_checkpointing,
                  "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

CLINALIGN = """
import json, resource, sys
from align.recipes.dpo import train_from_yaml
from annotation.manifest import read_manifest
cfg = json.loads(sys.argv[1])
over = dict(cfg["common"], **cfg["extra"], dataset_path=cfg["data"], max_train_samples=cfg["pairs"], max_steps=cfg["steps"],
            output_dir=cfg["out"], save_strategy="no", report_to="none", logging_steps=1,
            num_threads=cfg["threads"])
m = read_manifest(train_from_yaml("configs/demo/dpo.yaml", over))["metrics"]
print(json.dumps({"runtime": m["train_runtime"], "loss": m["train_loss"], "steps": cfg["steps"],
                  "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

VARIANTS = {"plain": (PLAIN, {}), "plain_no_gc": (PLAIN, {"gradient_checkpointing": False}),
            "clinalign": (CLINALIGN, {}), "clinalign_fp32": (CLINALIGN, {"bf16": False}),
            "clinalign_tiled_head": (CLINALIGN, {"dense_lm_head": False}),
            "clinalign_gc": (CLINALIGN, {"gradient_checkpointing": True})}


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run(name: str, args: argparse.Namespace) -> dict:
    code, extra = VARIANTS[name]
    with tempfile.TemporaryDirectory() as out:
        cfg = {"data": args.data, "pairs": args.pairs, "steps": args.steps, "threads": args.threads, "out": out,
               "common": COMMON, "lora": LORA, "extra": extra}
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false")
        before = load_average()
        proc = subprocess.run([sys.executable, "-c", code, json.dumps(cfg)], capture_output=True, text=True,
                              env=env, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if proc.returncode:
        sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update(steps_per_s=result["steps"] / result["runtime"], load=f"{before} -> {load_average()}")
    print(f"  {name:12s} {result['steps_per_s']:.3f} steps/s  {result['runtime']:.1f} s  loss {result['loss']:.4f}"
          f"  peak {result['maxrss_mb']:.0f} MB  load {result['load']}", flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="runs/demo/preferences")
    ap.add_argument("--pairs", type=int, default=40)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", default="plain,plain_no_gc,clinalign,clinalign_fp32,clinalign_tiled_head")
    args = ap.parse_args()
    names = args.variants.split(",")
    results: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}", flush=True)
        for name in names if r % 2 == 0 else list(reversed(names)):
            results[name].append(run(name, args))
    base = statistics.median(x["steps_per_s"] for x in results[names[0]])
    print(f"\n{'variant':12s} {'steps/s':>8s} {'ratio':>6s} {'peak MB':>8s} {'loss':>7s}   ({args.pairs} pairs, "
          f"{args.steps} steps, {args.threads} threads; medians over {args.rounds} rounds)")
    for name in names:
        sps = statistics.median(x["steps_per_s"] for x in results[name])
        peak = max(x["maxrss_mb"] for x in results[name])
        loss = statistics.median(x["loss"] for x in results[name])
        print(f"{name:12s} {sps:8.3f} {sps / base:6.2f} {peak:8.0f} {loss:7.4f}")


if __name__ == "__main__":
    main()
