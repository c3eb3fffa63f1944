"""Candidate generation throughput: the round's sampler against the one it replaced, side by side.

    .venv/bin/python benchmarks/bench_generation.py [--prompts 32] [--samples 4] [--max-new-tokens 96] [--rounds 2]

Each measurement runs in a fresh process, the two settings alternating, on the same MedQuAD prompts:
- before: float32, 8 sequences per `generate` call, one sample per call (the old Generator);
- after: `align.generate.Generator` defaults: bf16 where the CPU has AVX512-BF16/AMX, 64 sequences per
  call, `--samples` answers per prompt in one call, prompts sorted by length.
Prints generated tokens/s (tokens up to and including end-of-turn), the ratio and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CHILD = """
import json, sys, time, torch
from align.generate import Generator, SamplingSetting
from align.prompts import load_prompts
cfg = json.loads(sys.argv[1])
torch.set_num_threads(cfg["threads"])
texts = [p.text for p in load_prompts("data/medquad/medquad_prompts_500.jsonl", limit=cfg["prompts"])]
s = SamplingSetting("builtin:smollm2-135m-instruct", 0.8, max_new_tokens=cfg["max_new_tokens"], dtype=cfg["dtype"])
gen = Generator(s, batch_size=cfg["batch"]).load()
t0 = time.perf_counter()
if cfg["per_call_samples"]:
    out = gen.sample(texts, cfg["samples"])
else:  # one sample per call, as before: the prompt list repeated
    out = [gen.sample(texts, 1) for _ in range(cfg["samples"])]
    out = [[g[i][0] for g in out] for i in range(len(texts))]
secs = time.perf_counter() - t0
tokens = sum(s.n_tokens for g in out for s in g)
print(json.dumps({"seconds": secs, "tokens": tokens}))
"""

SETTINGS = {"before": {"dtype": "float32", "batch": 8, "per_call_samples": False},
            "after": {"dtype": "auto", "batch": 64, "per_call_samples": True}}


def run(name: str, args: argparse.Namespace) -> dict:
    cfg = SETTINGS[name] | {"prompts": args.prompts, "samples": args.samples, "max_new_tokens": args.max_new_tokens,
                            "threads": args.threads}
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads)}
    res = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg)], capture_output=True, text=True, env=env,
                         check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    rates: dict[str, list[float]] = {"before": [], "after": []}
    for r in range(args.rounds):
        for name in (("before", "after") if r % 2 == 0 else ("after", "before")):
            out = run(name, args)
            rates[name].append(out["tokens"] / out["seconds"])
            print(f"round {r + 1} {name:6s} {out['tokens']:6d} tokens in {out['seconds']:6.1f} s = "
                  f"{rates[name][-1]:6.1f} tokens/s", flush=True)
    before, after = (sum(v) / len(v) for v in (rates["before"], rates["after"]))
    print(f"\nbefore {before:.1f} tokens/s, after {after:.1f} tokens/s: ratio {after / before:.2f}x "
          f"({args.prompts} prompts x {args.samples} samples, {args.max_new_tokens} new tokens, "
          f"{args.threads} threads; load average {os.getloadavg()[0]:.2f} at the end, {time.ctime()})")


if __name__ == "__main__":
    main()
