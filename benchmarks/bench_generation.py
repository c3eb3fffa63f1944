"""Candidate generation throughput: transformers, llama.cpp, vLLM (and the old sampler), side by side.

    .venv/bin/python benchmarks/bench_generation.py [--backends transformers,llamacpp:bf16,vllm]
        [--prompts 32] [--samples 4] [--max-new-tokens 96] [--rounds 2] [--threads 2]

Each measurement runs in a fresh process, the settings alternating (the order reversed every other
round), on the same MedQuAD prompts, all through `align.generate.Generator` with the demo's sampling
(temperature 0.8, top-p 0.95, `--samples` answers per prompt):
- before: float32, 8 sequences per `generate` call, one sample per call (the Generator of round 1);
- transformers: the Generator's transformers path (bf16 where the CPU has AVX512-BF16/AMX, 64 sequences
  per call, prompts sorted by length);
- llamacpp:<weights>: llama.cpp (llama-cpp-python), the model as a cached GGUF in <weights>
  (bf16 | f16 | f32 | q8_0), 64 parallel sequences with continuous batching;
- vllm: a vLLM server (scripts/setup-vllm.sh; torch.compile'd graph, cached in ~/.cache/vllm after the
  first start), the same dtype as transformers, 64 requests in flight.
Model loading (a first-time GGUF conversion, a vLLM server start) happens before the clock starts; its time is printed
apart. Prints generated tokens/s (tokens up to and including end-of-turn), each backend's ratio to
transformers, and the load average before and after every measurement: timings taken while other jobs
run on the machine are not final.
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
s = SamplingSetting("builtin:smollm2-135m-instruct", 0.8, 0.95, max_new_tokens=cfg["max_new_tokens"],
                    dtype=cfg["dtype"], backend=cfg["backend"])
t_load = time.perf_counter()
gen = Generator(s, batch_size=cfg["batch"]).load()
t0 = time.perf_counter()
if cfg["per_call_samples"]:
    out = gen.sample(texts, cfg["samples"])
else:  # one sample per call, as before: the prompt list repeated
    out = [gen.sample(texts, 1) for _ in range(cfg["samples"])]
    out = [[g[i][0] for g in out] for i in range(len(texts))]
secs = time.perf_counter() - t0
flat = [x for g in out for x in g]
print(json.dumps({"seconds": secs, "load_seconds": t0 - t_load, "tokens": sum(x.n_tokens for x in flat),
                  "eos_rate": sum(x.finished for x in flat) / len(flat), "backend": gen.backend}))
"""


def setting(name: str) -> dict:
    if name == "before":
        return {"dtype": "float32", "batch": 8, "per_call_samples": False, "backend": "transformers"}
    return {"dtype": "auto", "batch": 64, "per_call_samples": True, "backend": name}


def run(name: str, args: argparse.Namespace) -> dict:
    cfg = setting(name) | {"prompts": args.prompts, "samples": args.samples, "max_new_tokens": args.max_new_tokens,
                           "threads": args.threads}
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads)}
    res = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg)], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        sys.exit(f"{name} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", default="transformers,llamacpp:bf16,llamacpp:f16",
                    help="comma-separated: before, transformers, llamacpp[:bf16|f16|f32|q8_0], vllm")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    names = [b.strip() for b in args.backends.split(",") if b.strip()]
    rates: dict[str, list[float]] = {n: [] for n in names}
    print(f"{args.prompts} prompts x {args.samples} samples, {args.max_new_tokens} new tokens, {args.threads} threads, "
          f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f} at the start, {time.ctime()}", flush=True)
    for r in range(args.rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            before = os.getloadavg()[0]
            out = run(name, args)
            rates[name].append(out["tokens"] / out["seconds"])
            print(f"round {r + 1} {name:14s} [{out['backend']}] {out['tokens']:6d} tokens in {out['seconds']:6.1f} s = "
                  f"{rates[name][-1]:6.1f} tokens/s (eos rate {out['eos_rate']:.2f}, load {out['load_seconds']:.1f} s; "
                  f"load average {before:.2f} -> {os.getloadavg()[0]:.2f})", flush=True)
    mean = {n: sum(v) / len(v) for n, v in rates.items()}
    ref = mean.get("transformers") or next(iter(mean.values()))
    print()
    base = mean.get("before")  # issue 15's baseline: the demo's generation when the issue was filed
    for n in names:
        print(f"{n:14s} {mean[n]:7.1f} tokens/s  {mean[n] / ref:5.2f}x transformers"
              + (f"  {mean[n] / base:5.2f}x before" if base else ""))
    print(f"load average {os.getloadavg()[0]:.2f} at the end ({time.ctime()}); rerun on a quiet machine for final figures")


if __name__ == "__main__":
    main()
