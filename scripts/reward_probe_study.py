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


def cross_validated(rows: list[dict], diff: np.ndarray) -> dict[tuple[int, float], float]:
    """Grouped 5-fold CV of every (layer, penalty), with `reward_architecture: probe`'s own functions."""
    from reward_models.probe import conversation_key, cross_validate, grouped_folds

    acc = cross_validate(diff, grouped_folds([conversation_key(r) for r in rows], 5, seed=0), LAYERS, PENALTIES)
    for (layer, penalty), a in acc.items():
        print(f"layer {layer:2d}  L2 {penalty:<4g}  CV accuracy {a:.3f}", flush=True)
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
    from reward_models.probe import fit_head
    cache = Path(a.cache)
    cache.mkdir(parents=True, exist_ok=True)
    rows = _rows(a.pairs)
    feats = _features(a.pairs, cache / (Path(a.pairs).stem + ".npy"), a.chat)
    diff = feats[:, 0] - feats[:, 1]
    acc = cross_validated(rows, diff)
    (layer, penalty), best = max(acc.items(), key=lambda kv: kv[1])
    half = 1.96 * (best * (1 - best) / len(rows)) ** 0.5  # optimistic: the best of len(acc) settings
    print(f"chosen on CV: layer {layer}, L2 {penalty}: {best:.3f} (±{half:.3f}, n = {len(rows)}, "
          f"best of {len(acc)} settings)")
    if a.heldout:
        li = LAYERS.index(layer)
        scale = diff[:, li].std(0) + 1e-6
        w = fit_head(diff[:, li] / scale, penalty)
        held = _features(a.heldout, cache / (Path(a.heldout).stem + ".npy"), a.chat)
        # the reward is w . features; pairwise accuracy and its CI as `reward eval` computes them
        res = accuracy_with_ci(pair_outcomes((held[:, 0, li] / scale) @ w, (held[:, 1, li] / scale) @ w))
        lo, hi = res["ci95"]
        print(f"held-out {a.heldout}: accuracy {res['accuracy']:.3f} (95% CI {lo:.3f}-{hi:.3f}, n = {res['n']})")


if __name__ == "__main__":
    main()
