"""Does fine-tuning the probe's top blocks beat the frozen probe? A study on the training file (issue 14).

The probe recipe (configs/demo/reward_probe.yaml) fits a linear Bradley-Terry head on the frozen
residual stream of SmolLM2-135M-Instruct after block 18 (0.653 on hh-rlhf held-out pairs). Here the
head starts from that closed-form fit and the top `--blocks` blocks below it are trained too (LoRA on
every linear layer, or in full), on the same pairs, by the same loss, with the lower blocks frozen:
their output is computed once and cached, so an epoch costs only the top blocks' forward and backward.

Validation only: grouped folds of the training file (hh's first human turn), as the probe's own CV;
each fold's probe head is fitted on the other folds. Nothing here reads shared/eval.

    .venv/bin/python scripts/reward_probe_finetune_study.py --folds 0 1 --blocks 4 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from reward_models import probe
from reward_models.probe_train import study_data

CONFIG = str(Path(__file__).resolve().parent.parent / "configs" / "demo" / "reward_probe.yaml")


def cached_inputs(backbone, seqs, pad_id: int, start_block: int, batch: int = 8) -> list[torch.Tensor]:
    """The residual stream after `start_block` blocks for every sequence (bf16, unpadded)."""
    from reward_models.scoring import pad_right

    captured = {}
    hook = backbone.layers[start_block - 1].register_forward_hook(
        lambda _m, _i, out: captured.__setitem__("h", out[0] if isinstance(out, tuple) else out))
    full = backbone.config.num_hidden_layers
    backbone.config.num_hidden_layers = start_block
    out: list[torch.Tensor | None] = [None] * len(seqs)
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    try:
        with torch.no_grad():
            for s in range(0, len(order), batch):
                idx = order[s:s + batch]
                backbone(**pad_right([seqs[i] for i in idx], pad_id, backbone.device))
                for j, i in enumerate(idx):
                    out[i] = captured["h"][j, :len(seqs[i])].to(torch.bfloat16).clone()
    finally:
        backbone.config.num_hidden_layers = full
        hook.remove()
    return out  # type: ignore[return-value]


class Top(torch.nn.Module):
    """Blocks start..end-1 of the backbone plus the probe's linear head, on cached block inputs."""

    def __init__(self, backbone, start: int, end: int, marker: list[int]):
        super().__init__()
        import copy

        self.layers = torch.nn.ModuleList([copy.deepcopy(backbone.layers[k]).float() for k in range(start, end)])
        self.rotary = copy.deepcopy(backbone.rotary_emb).float()
        self.score = torch.nn.Linear(backbone.config.hidden_size, 1)
        self.marker = marker

    def pooled(self, hs: list[torch.Tensor], ids: list[list[int]]) -> torch.Tensor:
        width = max(h.shape[0] for h in hs)
        h = torch.zeros(len(hs), width, hs[0].shape[1])
        for i, x in enumerate(hs):
            h[i, :x.shape[0]] = x.float()
        pos = torch.arange(width)[None, :]
        emb = self.rotary(h, position_ids=pos)
        for layer in self.layers:  # right padding + causal attention: real tokens never see the pads
            out = layer(h, attention_mask=None, position_ids=pos, position_embeddings=emb)
            h = out[0] if isinstance(out, tuple) else out
        input_ids = torch.zeros(len(hs), width, dtype=torch.long)
        attn = torch.zeros(len(hs), width, dtype=torch.long)
        for i, s in enumerate(ids):
            input_ids[i, :len(s)] = torch.tensor(s)
            attn[i, :len(s)] = 1
        keep = probe.response_mask(input_ids, attn, self.marker)
        w = keep.float().unsqueeze(-1)
        return (h * w).sum(1) / w.sum(1).clamp(min=1.0)

    def forward(self, hs, ids) -> torch.Tensor:
        return self.score(self.pooled(hs, ids)).squeeze(-1)


def fit_head_init(top: Top, cache, ids, train_idx, penalty: float) -> None:
    """The probe's closed-form head on the top block's (untrained) pooled output of the training pairs."""
    with torch.no_grad():
        feats = np.concatenate([top.pooled([cache[2 * i], cache[2 * i + 1]], [ids[2 * i], ids[2 * i + 1]]).numpy()[None]
                                for i in train_idx])  # (n, 2, hidden)
    w, b = probe.head_parameters(feats.reshape(-1, feats.shape[-1]), feats[:, 0] - feats[:, 1], penalty)
    top.score.weight.data[:] = torch.tensor(w, dtype=torch.float32)[None]
    top.score.bias.data.fill_(b)


def accuracy(top: Top, cache, ids, idx, batch: int = 16) -> float:
    top.eval()
    right = 0.0
    with torch.no_grad():
        for s in range(0, len(idx), batch):
            part = idx[s:s + batch]
            r = top([cache[2 * i + k] for i in part for k in (0, 1)], [ids[2 * i + k] for i in part for k in (0, 1)])
            m = r[0::2] - r[1::2]
            right += float((m > 0).sum() + 0.5 * (m == 0).sum())
    return right / len(idx)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folds", type=int, nargs="+", default=[0])
    ap.add_argument("--n-folds", type=int, default=5)
    ap.add_argument("--layer", type=int, default=18)
    ap.add_argument("--penalty", type=float, default=0.3)
    ap.add_argument("--blocks", type=int, default=4, help="top blocks below --layer that are trained")
    ap.add_argument("--mode", choices=["lora", "full"], default="lora")
    ap.add_argument("--lora-r", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--head-lr", type=float, default=1e-4)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16, help="pairs per step")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.manual_seed(args.seed)

    data = study_data(CONFIG, args.n_folds)
    backbone, tok, kept, ids, marker, folds = (data.backbone, data.tokenizer, data.rows, data.seqs, data.marker,
                                                data.folds)
    start = args.layer - args.blocks
    t0 = time.perf_counter()
    cache = cached_inputs(backbone, ids, tok.pad_token_id, start)
    print(f"cached block-{start} outputs of {len(ids)} answers in {time.perf_counter() - t0:.0f} s", flush=True)

    results = []
    for fold in args.folds:
        train_idx = [i for i in range(len(kept)) if folds[i] != fold]
        val_idx = [i for i in range(len(kept)) if folds[i] == fold]
        top = Top(backbone, start, args.layer, marker)
        fit_head_init(top, cache, ids, train_idx, args.penalty)
        base = accuracy(top, cache, ids, val_idx)
        if args.mode == "lora":
            from peft import LoraConfig, get_peft_model

            top = get_peft_model(top, LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0,
                                                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                 "gate_proj", "up_proj", "down_proj"],
                                                 modules_to_save=["score"]))
        body = [p for n, p in top.named_parameters() if p.requires_grad and "score" not in n]
        head = [p for n, p in top.named_parameters() if p.requires_grad and "score" in n]
        opt = torch.optim.AdamW([{"params": body, "lr": args.lr}, {"params": head, "lr": args.head_lr}],
                                weight_decay=0.0)
        steps = args.epochs * math.ceil(len(train_idx) / args.batch)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s, steps=steps: max(0.0, 1 - s / steps))
        curve = [base]
        rng = np.random.default_rng(args.seed + fold)
        t1 = time.perf_counter()
        for epoch in range(args.epochs):
            top.train()
            order = rng.permutation(train_idx)
            losses = []
            for s in range(0, len(order), args.batch):
                part = order[s:s + args.batch]
                r = top([cache[2 * i + k] for i in part for k in (0, 1)], [ids[2 * i + k] for i in part for k in (0, 1)])
                loss = torch.nn.functional.softplus(-(r[0::2] - r[1::2])).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                losses.append(float(loss.detach()))
            curve.append(accuracy(top, cache, ids, val_idx))
            print(f"fold {fold} epoch {epoch + 1}: train loss {np.mean(losses):.4f}, validation {curve[-1]:.3f} "
                  f"(probe {base:.3f}); {time.perf_counter() - t1:.0f} s", flush=True)
        results.append({"fold": fold, "n_val": len(val_idx), "probe": base, "curve": curve})
    summary = {"args": vars(args), "results": results,
               "mean_probe": float(np.mean([r["probe"] for r in results])),
               "mean_by_epoch": [float(np.mean([r["curve"][e] for r in results])) for e in range(args.epochs + 1)]}
    print(json.dumps({k: v for k, v in summary.items() if k != "results"}))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
