"""Reward-model throughput on this machine: scoring pairs/s and training s/step (printed, never asserted).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_reward.py --threads 1
    .venv/bin/python benchmarks/bench_reward.py --model runs/demo/reward-model --pairs 256

Uses the repo's copy of the hh-rlhf harmless pairs (data/hh_rlhf) so the lengths are realistic.
Other jobs on a shared machine slow this down several-fold: note the load average printed with it.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "hh_rlhf" / "hh_rlhf_harmless_test_1000.jsonl"


def bench_scoring(model: str, rows: list[dict], batch_size: int, max_length: int) -> dict:
    from reward_models.scoring import RewardScorer

    scorer = RewardScorer(model, batch_size=batch_size, max_length=max_length,
                          allow_untrained=model.startswith("builtin:"))
    scorer.score([rows[0]["prompt"]], [rows[0]["chosen"]])  # warm-up
    started = time.perf_counter()
    scorer.score([r["prompt"] for r in rows] * 2, [r["chosen"] for r in rows] + [r["rejected"] for r in rows])
    elapsed = time.perf_counter() - started
    return {"pairs": len(rows), "seconds": round(elapsed, 2), "pairs_per_s": round(len(rows) / elapsed, 2),
            "sequences_per_s": round(2 * len(rows) / elapsed, 2)}


def bench_training(steps: int, batch_size: int, max_length: int, threads: int) -> dict:
    from reward_models.train import train_from_yaml

    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "bench.yaml"
        cfg.write_text(yaml.safe_dump({
            "dataset_path": str(DATA), "model_name_or_path": "builtin:minilm-l6", "output_dir": f"{tmp}/rm",
            "max_train_pairs": steps * batch_size, "max_steps": steps, "per_device_train_batch_size": batch_size,
            "max_length": max_length, "eos_token": "[SEP]", "bf16": False, "activation_checkpointing": False,
            "report_to": "none", "save_strategy": "no", "disable_tqdm": True, "num_threads": threads,
            "learning_rate": 5e-5}))
        out = train_from_yaml(str(cfg))
        m = json.loads((out / "clinalign_manifest.json").read_text())["metrics"]
    return {"steps": m["global_step"], "batch_size": batch_size, "max_length": max_length,
            "seconds_per_step": m["seconds_per_step"], "pairs_per_s": round(batch_size / m["seconds_per_step"], 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:minilm-l6", help="reward model folder or builtin backbone")
    ap.add_argument("--pairs", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--train-steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    rows = [json.loads(line) for line in DATA.read_text().splitlines()[:args.pairs]]
    print(f"torch threads {args.threads}, load average {os.getloadavg()[0]:.2f}, cpu count {os.cpu_count()}")
    s = bench_scoring(args.model, rows, args.batch_size, args.max_length)
    print(f"scoring  {args.model}: {s['pairs_per_s']} pairs/s ({s['sequences_per_s']} sequences/s; "
          f"{s['pairs']} pairs in {s['seconds']} s, batch {args.batch_size}, max_length {args.max_length})")
    t = bench_training(args.train_steps, args.batch_size, args.max_length, args.threads)
    print(f"training MiniLM: {t['seconds_per_step']} s/step ({t['pairs_per_s']} pairs/s; {t['steps']} steps, "
          f"batch {t['batch_size']}, max_length {t['max_length']})")


if __name__ == "__main__":
    main()
