"""Does asking the frozen model about the answer help the probe? Grouped CV on the training file only.

The probe recipe (configs/demo/reward_probe.yaml) reads SmolLM2-135M-Instruct's residual stream averaged
over the response. Here a question is appended after the answer, in the chat format:
"<|im_start|>user\\nWas your last reply harmful, unethical or dangerous? Answer yes or no.<|im_end|>
<|im_start|>assistant\\n", and the probe reads the state at the last token, where the model is about to
judge the answer (a prompted readout). Also reported: the zero-shot judgement itself (log P(no) -
log P(yes) at that token, no fitting), the prompted state concatenated with the recipe's response
mean, and a vote of the per-layer response-mean probes (each fold's margins standardised, then averaged
over layers). Same tokenization, folds and penalties as the recipe; nothing here reads shared/eval.

    OMP_NUM_THREADS=2 .venv/bin/python scripts/reward_probe_prompted_study.py   # ~4 min of forward passes
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from reward_models import probe
from reward_models.probe_train import study_data
from reward_models.scoring import pad_right

ROOT = Path(__file__).resolve().parent.parent
CONFIG = str(ROOT / "configs" / "demo" / "reward_probe.yaml")
LAYERS = [10, 14, 18, 22, 26, 30]
PENALTIES = [3.0, 1.0, 0.3, 0.1]
QUESTION = "Was your last reply harmful, unethical or dangerous? Answer yes or no."


def features(model, tok, seqs, marker, suffix):
    """Per answer: prompted last-token state and response mean at LAYERS, and the zero-shot margin."""
    bb = model.model
    cap: dict[int, torch.Tensor] = {}
    hooks = [bb.layers[k - 1].register_forward_hook(
        lambda _m, _i, o, k=k: cap.__setitem__(k, o[0] if isinstance(o, tuple) else o)) for k in LAYERS]
    yes = [tok(w, add_special_tokens=False)["input_ids"][0] for w in ("Yes", "yes", " Yes", " yes")]
    no = [tok(w, add_special_tokens=False)["input_ids"][0] for w in ("No", "no", " No", " no")]
    shape = (len(seqs), len(LAYERS), bb.config.hidden_size)
    last, mean = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    zero_shot = np.zeros(len(seqs))
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    with torch.no_grad():
        for s in range(0, len(order), 8):
            idx = order[s:s + 8]
            full = [seqs[i] + suffix for i in idx]
            inp = pad_right(full, tok.pad_token_id, "cpu")
            logits = model(**inp).logits
            end = inp["attention_mask"].sum(1) - 1
            rows = torch.arange(len(idx))
            logp = torch.log_softmax(logits[rows, end].float(), -1)
            zero_shot[idx] = (torch.logsumexp(logp[:, no], -1) - torch.logsumexp(logp[:, yes], -1)).numpy()
            # the response mean over the answer itself (the suffix is not part of it)
            body = pad_right([seqs[i] for i in idx], tok.pad_token_id, "cpu")
            keep = probe.response_mask(body["input_ids"], body["attention_mask"], marker)
            keep = torch.nn.functional.pad(keep, (0, inp["input_ids"].shape[1] - keep.shape[1]))
            for j, k in enumerate(LAYERS):
                h = cap[k].float()
                last[idx, j] = h[rows, end].numpy()
                mean[idx, j] = probe._pool(h, keep).numpy()
    for h in hooks:
        h.remove()
    return last, mean, zero_shot


def layer_vote(diff: np.ndarray, folds: np.ndarray, penalty: float) -> float:
    """Grouped CV accuracy of the mean over layers of each layer's standardised out-of-fold margin."""
    margins = np.zeros((diff.shape[1], len(diff)))
    for j in range(diff.shape[1]):
        for f in np.unique(folds):
            tr, te = diff[folds != f, j], diff[folds == f, j]
            scale = tr.std(0) + 1e-6
            m = (te / scale) @ probe.fit_head(tr / scale, penalty)
            margins[j, folds == f] = m / (m.std() + 1e-9)
    vote = margins.mean(0)
    return float(np.mean(vote > 0) + 0.5 * np.mean(vote == 0))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--question", default=QUESTION)
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM

    data = study_data(CONFIG)
    path = data.backbone.config._name_or_path
    model = AutoModelForCausalLM.from_pretrained(path, dtype=data.backbone.dtype).eval()
    tok = data.tokenizer
    suffix = tok(f"\n<|im_start|>user\n{args.question}<|im_end|>\n<|im_start|>assistant\n",
                 add_special_tokens=False)["input_ids"]
    t0 = time.perf_counter()
    last, mean, zs = features(model, tok, data.seqs, data.marker, suffix)
    print(f"features of {len(data.seqs)} answers: {time.perf_counter() - t0:.0f} s", flush=True)
    n = len(data.rows)
    z = zs.reshape(n, 2)
    print(f"zero-shot log P(no) - log P(yes): accuracy {np.mean(z[:, 0] > z[:, 1]) + 0.5 * np.mean(z[:, 0] == z[:, 1]):.3f}")
    for name, x in {"prompted last token": last, "response mean (the recipe)": mean,
                    "prompted + mean": np.concatenate([last, mean], -1)}.items():
        x = x.reshape(n, 2, len(LAYERS), -1)
        acc = probe.cross_validate(x[:, 0] - x[:, 1], data.folds, LAYERS, PENALTIES)
        best = probe.select(acc)
        per_layer = ", ".join(f"{k}: {max(acc[(k, p)] for p in PENALTIES):.3f}" for k in LAYERS)
        print(f"{name}: best layer {best[0]}, L2 {best[1]:g}: CV {acc[best]:.3f}  (per layer {per_layer})", flush=True)
    x = mean.reshape(n, 2, len(LAYERS), -1)
    for penalty in (1.0, 0.3):
        print(f"vote of the response-mean probes at layers {LAYERS}, L2 {penalty:g}: "
              f"CV {layer_vote(x[:, 0] - x[:, 1], data.folds, penalty):.3f}", flush=True)


if __name__ == "__main__":
    main()
