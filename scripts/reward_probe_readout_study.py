"""Which readout of the frozen probe separates hh-rlhf pairs best? Grouped CV on the training file only.

The probe recipe (configs/demo/reward_probe.yaml) pools the residual stream over the response tokens.
A decoder reward model usually reads the last token instead; the state just before the response (the
chat marker's last token) says what the model expected. This study compares, with the recipe's own
tokenization, folds and penalties: response mean, last token, both concatenated, mean minus the
pre-response state, and mean plus it, at layers 10-26. Nothing here reads shared/eval.

    OMP_NUM_THREADS=2 .venv/bin/python scripts/reward_probe_readout_study.py   # ~3 min of forward passes on 2 threads
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from reward_models import probe
from reward_models.probe_train import study_data
from reward_models.scoring import pad_right

ROOT = Path(__file__).resolve().parent.parent
CONFIG = str(ROOT / "configs" / "demo" / "reward_probe.yaml")
LAYERS = [10, 14, 18, 22, 26]
PENALTIES = [3.0, 1.0, 0.3, 0.1]


def features(bb, seqs: list[list[int]], pad_id: int, marker: list[int]) -> dict[str, np.ndarray]:
    """(n, layers, hidden) per readout: response mean, last token, the pre-response (marker) state."""
    cap: dict[int, torch.Tensor] = {}
    hooks = [bb.layers[k - 1].register_forward_hook(
        lambda _m, _i, o, k=k: cap.__setitem__(k, o[0] if isinstance(o, tuple) else o)) for k in LAYERS]
    bb.config.num_hidden_layers = max(LAYERS)
    shape = (len(seqs), len(LAYERS), bb.config.hidden_size)
    out = {name: np.zeros(shape, np.float32) for name in ("mean", "last", "marker")}
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    with torch.no_grad():
        for s in range(0, len(order), 8):
            idx = order[s:s + 8]
            inp = pad_right([seqs[i] for i in idx], pad_id, "cpu")
            bb(**inp)
            keep = probe.response_mask(inp["input_ids"], inp["attention_mask"], marker)
            rows = torch.arange(len(idx))
            last = inp["attention_mask"].sum(1) - 1
            before = keep.float().argmax(1) - 1
            for j, k in enumerate(LAYERS):
                h = cap[k].float()
                out["mean"][idx, j] = probe._pool(h, keep).numpy()
                out["last"][idx, j] = h[rows, last].numpy()
                out["marker"][idx, j] = h[rows, before].numpy()
    for h in hooks:
        h.remove()
    return out


def main() -> None:
    data = study_data(CONFIG)
    kept, seqs, folds = data.rows, data.seqs, data.folds
    t0 = time.perf_counter()
    f = features(data.backbone, seqs, data.tokenizer.pad_token_id, data.marker)
    print(f"features of {len(seqs)} answers: {time.perf_counter() - t0:.0f} s", flush=True)
    readouts = {"response mean (the recipe)": f["mean"], "last token": f["last"],
                "mean + last": np.concatenate([f["mean"], f["last"]], -1),
                "mean - pre-response state": f["mean"] - f["marker"],
                "mean + pre-response state": np.concatenate([f["mean"], f["marker"]], -1)}
    for name, x in readouts.items():
        x = x.reshape(len(kept), 2, len(LAYERS), -1)
        acc = probe.cross_validate(x[:, 0] - x[:, 1], folds, LAYERS, PENALTIES)
        best = probe.select(acc)
        per_layer = ", ".join(f"{k}: {max(acc[(k, p)] for p in PENALTIES):.3f}" for k in LAYERS)
        print(f"{name}: best layer {best[0]}, L2 {best[1]:g}: CV {acc[best]:.3f}  (per layer {per_layer})", flush=True)


if __name__ == "__main__":
    main()
