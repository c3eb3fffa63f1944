"""Does a frozen instruct LM already know which answer is harmless? A linear-probe study (issue 14).

The shipped hh-rlhf reward model fine-tunes MiniLM on 1000 pairs and reaches 0.60 on held-out pairs.
This study asks whether SmolLM2-135M-Instruct's own hidden states separate chosen from rejected
answers without any fine-tuning: mean-pooled hidden states of the *response* tokens at several layers,
a Bradley-Terry (logistic) head on the difference chosen - rejected with an L2 penalty, and the
choice of layer and penalty made by 5-fold cross-validation on the training file grouped by the first
human turn. Only with `--heldout` does it fit on all training pairs with the chosen setting and score
a held-out file once (shared/eval is read, never copied; look at it once per setting).

    .venv/bin/python scripts/reward_probe_study.py --pairs data/hh_rlhf/hh_rlhf_harmless_test_1000.jsonl
    .venv/bin/python scripts/reward_probe_study.py --pairs ... --heldout ../shared/eval/hh_rlhf_harmless_heldout.jsonl

Features are cached next to --cache (one forward per answer: ~9 min for 1000 pairs on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

LAYERS = (6, 10, 14, 18, 22, 26, 30)
PENALTIES = (3.0, 1.0, 0.3, 0.1)
MAX_LEN, MAX_RESPONSE = 320, 128


def _rows(path: str) -> list[dict]:
    rows = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not all(isinstance(row.get(k), str) for k in ("prompt", "chosen", "rejected")):
            sys.exit(f"{path}:{n}: needs string fields prompt, chosen, rejected")
        rows.append(row)
    return rows


def chat_messages(prompt: str) -> list[dict]:
    """hh-rlhf's "\n\nHuman: ... \n\nAssistant: ..." transcript as chat messages (the last is the human's)."""
    import re

    parts = re.split(r"\n\n(Human|Assistant):", "\n\n" + prompt.strip())
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[parts[i]], "content": parts[i + 1].strip()} for i in range(1, len(parts) - 1, 2)
            if parts[i + 1].strip()]


def extract(rows: list[dict], batch: int = 8, chat: bool = False) -> np.ndarray:
    """(n, 2, layers, hidden): mean-pooled response hidden states of chosen (0) and rejected (1).

    chat: the prompt in the model's chat template (what a reward recipe on a chat model would read),
    else hh-rlhf's raw transcript."""
    import torch
    from tqdm import tqdm

    from align.models import load_causal_lm, load_tokenizer, preferred_dtype
    from clinalign_base.models import SMOLLM2

    tok = load_tokenizer(SMOLLM2, padding_side="right")
    model = load_causal_lm(SMOLLM2, dtype=preferred_dtype()).eval()
    pad = tok.pad_token_id
    texts = [(r["prompt"], r[side]) for r in rows for side in ("chosen", "rejected")]
    out = []
    for i in tqdm(range(0, len(texts), batch), desc="features", unit="batch"):
        enc = []
        for prompt, resp in texts[i:i + batch]:
            r = tok(("" if chat else " ") + resp.strip(), add_special_tokens=False)["input_ids"][:MAX_RESPONSE]
            if chat:
                prompt = tok.apply_chat_template(chat_messages(prompt), tokenize=False, add_generation_prompt=True)
            p = tok(prompt, add_special_tokens=False)["input_ids"][-(MAX_LEN - len(r)):]  # keep the last turns
            enc.append((p, r))
        width = max(len(p) + len(r) for p, r in enc)
        ids = torch.full((len(enc), width), pad)
        mask = torch.zeros_like(ids)
        for j, (p, r) in enumerate(enc):
            ids[j, :len(p) + len(r)] = torch.tensor(p + r)
            mask[j, :len(p) + len(r)] = 1
        with torch.no_grad():
            hidden = model(ids, attention_mask=mask, output_hidden_states=True).hidden_states
        for j, (p, r) in enumerate(enc):
            a, b = len(p), len(p) + len(r)
            out.append(np.stack([hidden[k][j, a:b].float().mean(0).numpy() for k in LAYERS]))
    return np.stack(out).reshape(len(rows), 2, len(LAYERS), -1)


def fit(x: np.ndarray, penalty: float) -> np.ndarray:
    """Bradley-Terry head without bias on differences x (chosen - rejected), L2-penalised."""
    import torch

    xt = torch.tensor(x, dtype=torch.float64)
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.softplus(-(xt @ w)).mean() + penalty * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy()


def folds(rows: list[dict], k: int = 5) -> np.ndarray:
    """Fold per pair, grouped by the first human turn so that near-duplicate prompts stay together."""
    keys = [r["prompt"].split("\n\nAssistant:")[0].strip().lower() for r in rows]
    order = {key: i for i, key in enumerate(dict.fromkeys(keys))}
    perm = np.random.default_rng(0).permutation(len(order))
    return np.array([perm[order[key]] % k for key in keys])


def cross_validate(diff: np.ndarray, fold: np.ndarray) -> dict[tuple[int, float], float]:
    acc = {}
    for li, layer in enumerate(LAYERS):
        for penalty in PENALTIES:
            correct = 0
            for f in range(fold.max() + 1):
                tr, te = diff[fold != f, li], diff[fold == f, li]
                scale = tr.std(0) + 1e-6
                correct += int(np.sum((te / scale) @ fit(tr / scale, penalty) > 0))
            acc[(layer, penalty)] = correct / len(diff)
            print(f"layer {layer:2d}  L2 {penalty:<4g}  CV accuracy {acc[(layer, penalty)]:.3f}", flush=True)
    return acc


def _features(path: str, cache: Path, chat: bool) -> np.ndarray:
    cache = cache.with_name(cache.stem + ("_chat" if chat else "") + cache.suffix)
    if cache.is_file():
        return np.load(cache)
    feats = extract(_rows(path), chat=chat)
    np.save(cache, feats)
    return feats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", required=True, help="training pairs (JSONL prompt/chosen/rejected)")
    ap.add_argument("--heldout", help="score this file once with the CV-chosen setting")
    ap.add_argument("--cache", default="runs/probe", help="folder for cached features")
    ap.add_argument("--chat", action="store_true", help="prompts in the model's chat template, not raw hh text")
    a = ap.parse_args()
    from reward_models.metrics import accuracy_with_ci, pair_outcomes
    cache = Path(a.cache)
    cache.mkdir(parents=True, exist_ok=True)
    rows = _rows(a.pairs)
    feats = _features(a.pairs, cache / (Path(a.pairs).stem + ".npy"), a.chat)
    diff = feats[:, 0] - feats[:, 1]
    acc = cross_validate(diff, folds(rows))
    (layer, penalty), best = max(acc.items(), key=lambda kv: kv[1])
    half = 1.96 * (best * (1 - best) / len(rows)) ** 0.5  # optimistic: the best of len(acc) settings
    print(f"chosen on CV: layer {layer}, L2 {penalty}: {best:.3f} (±{half:.3f}, n = {len(rows)}, "
          f"best of {len(acc)} settings)")
    if a.heldout:
        li = LAYERS.index(layer)
        scale = diff[:, li].std(0) + 1e-6
        w = fit(diff[:, li] / scale, penalty)
        held = _features(a.heldout, cache / (Path(a.heldout).stem + ".npy"), a.chat)
        # the reward is w . features; pairwise accuracy and its CI as `reward eval` computes them
        res = accuracy_with_ci(pair_outcomes((held[:, 0, li] / scale) @ w, (held[:, 1, li] / scale) @ w))
        lo, hi = res["ci95"]
        print(f"held-out {a.heldout}: accuracy {res['accuracy']:.3f} (95% CI {lo:.3f}-{hi:.3f}, n = {res['n']})")


if __name__ == "__main__":
    main()
