"""`clinalign reward train` with `reward_architecture: probe`: features once, head in closed form.

No optimiser steps over the backbone, hence no Trainer and no checkpoints: one forward per training
answer (the slow part, shown with a progress bar), a grouped cross-validation over the candidate
layers and penalties (seconds), a refit on all pairs, and the same output folder, manifest and
held-out evaluation as the Trainer path (`reward_models/train.py`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from annotation.errors import ClinalignError, InputError
from reward_models import probe


def _marker(tok, fmt, encoded: list[list[int]], rows: list[dict], config_path: str) -> list[int]:
    """The separator's token ids, checked to appear as such in every training text."""
    marker = tok(fmt.separator, add_special_tokens=False)["input_ids"]
    if not marker:
        raise InputError("reward_architecture probe needs a separator that marks where the response starts "
                         "(e.g. '<|im_end|>\\n<|im_start|>assistant\\n')", path=config_path)
    for i, ids in enumerate(encoded):
        if not any(ids[j:j + len(marker)] == marker for j in range(len(ids) - len(marker) + 1)):
            raise InputError(f"training pair {i // 2} (prompt {rows[i // 2]['prompt'][:60]!r}): the separator "
                             f"{fmt.separator!r} does not tokenize to the same ids inside the text; start and "
                             f"end it with special tokens", path=config_path)
    return marker


def _check(script, train_args, model_args, config_path: str) -> None:
    if train_args.resume_from_checkpoint not in (None, False, "", "false", "False"):
        raise InputError("reward_architecture probe has no checkpoints to resume (one forward pass, then a "
                         "closed-form fit); drop resume_from_checkpoint", path=config_path)
    if script.multi_objective or model_args.use_peft:
        raise InputError("reward_architecture probe trains a linear head only (no multi_objective, no LoRA)",
                         path=config_path)
    if not script.probe_layers or min(script.probe_layers) < 1 or not script.probe_penalties:
        raise InputError("probe_layers (>= 1) and probe_penalties must be non-empty", path=config_path)


@dataclass
class StudyData:
    """A probe config's training pairs as the recipe tokenizes them (for the studies in scripts/)."""

    tokenizer: Any
    backbone: Any  # the base decoder in bf16
    rows: list[dict]  # the pairs kept (none too long)
    seqs: list[list[int]]  # chosen, rejected, chosen, ... token ids
    marker: list[int]  # the separator's ids: the response starts after them
    folds: np.ndarray  # the recipe's grouped cross-validation folds


def study_data(config_path: str, folds: int = 5) -> StudyData:
    """Load a probe config's backbone and pairs as `train_probe` does (relative dataset paths resolve
    against the repository root)."""
    from reward_models.train import load_rows, parse_config, reward_format

    script, train_args, model_args = parse_config(config_path)
    if script.dataset_path and not Path(script.dataset_path).is_absolute():
        script.dataset_path = str(Path(__file__).resolve().parent.parent / script.dataset_path)
    _, _, tok, backbone = _backbone(model_args)
    rows, _ = load_rows(script, config_path, train_args.seed)
    fmt = reward_format(script, train_args, tok, config_path)
    kept, seqs, marker, _ = _encode(rows, tok, fmt, script, config_path)
    keys = [probe.conversation_key(r) for r in kept]
    return StudyData(tok, backbone, kept, seqs, marker, probe.grouped_folds(keys, folds, train_args.seed))


def _backbone(model_args):
    """(spec, path, tokenizer, base decoder in the config's dtype; auto: bf16 where the CPU has it)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from clinalign_base.models import preferred_dtype
    from reward_models.backbones import resolve_backbone

    spec = model_args.model_name_or_path
    path = resolve_backbone(spec)
    dtype = getattr(torch, preferred_dtype() if model_args.dtype in (None, "auto") else model_args.dtype)
    return spec, path, AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path, dtype=dtype).eval()


def _encode(rows: list[dict], tok, fmt, script, config_path: str) -> tuple[list[dict], list[list[int]], list[int], dict]:
    """(pairs kept, their chosen/rejected ids interleaved, the separator's ids, truncation counts)."""
    from reward_models.train import encode_pairs

    cols, stats = encode_pairs(rows, tok, fmt, script, keep_index=True)
    if stats["n_used"] < 2:
        raise InputError(f"{stats['n_used']} training pairs left after cutting to max_length={fmt.max_length}; "
                         f"a probe needs at least 2", path=script.dataset_path or config_path)
    kept = [rows[i] for i in stats.pop("kept")]
    seqs = [s for pair in zip(cols["chosen_ids"], cols["rejected_ids"], strict=True) for s in pair]
    return kept, seqs, _marker(tok, fmt, seqs, kept, config_path), stats


def train_probe(config_path: str, script, train_args, model_args) -> Path:
    """Fit, save and evaluate a probe reward model; returns its folder."""
    from rich.progress import Progress

    from reward_models.train import (
        load_rows,
        pairwise_accuracy,
        reward_format,
        save_model_folder,
        split_rows,
        work_dir,
    )

    _check(script, train_args, model_args, config_path)
    out = Path(train_args.output_dir)
    if out.exists() and not script.overwrite:
        raise ClinalignError(f"output_dir '{out}' exists (set overwrite: true to replace it)")
    spec, path, tok, backbone = _backbone(model_args)
    if max(script.probe_layers) > backbone.config.num_hidden_layers:
        raise InputError(f"probe_layers {script.probe_layers}: the backbone has "
                         f"{backbone.config.num_hidden_layers} layers", path=config_path)
    rows, built = load_rows(script, config_path, train_args.seed)
    train_rows, eval_rows = split_rows(rows, script, train_args.seed)
    fmt = reward_format(script, train_args, tok, config_path)
    kept, seqs, marker, stats = _encode(train_rows, tok, fmt, script, config_path)

    started = time.perf_counter()
    with Progress(transient=True) as bar:
        task = bar.add_task("Probe features (one forward per answer)", total=len(seqs))
        feats = probe.layer_features(backbone, seqs, tok.pad_token_id, script.probe_layers, marker,
                                     batch_size=script.probe_batch_size,
                                     progress=lambda n: bar.advance(task, n))
    feature_seconds = time.perf_counter() - started
    feats = feats.reshape(len(kept), 2, len(script.probe_layers), -1)
    diff = feats[:, 0] - feats[:, 1]
    folds = probe.grouped_folds([probe.conversation_key(r) for r in kept],
                                min(script.probe_folds, len(kept)), train_args.seed)
    acc = probe.cross_validate(diff, folds, script.probe_layers, script.probe_penalties)
    layer, penalty = probe.select(acc)
    j = list(script.probe_layers).index(layer)
    weight, bias = probe.head_parameters(feats[:, :, j].reshape(2 * len(kept), -1), diff[:, j], penalty)
    model = probe.build_model(backbone, layer, weight, bias, marker, tok.pad_token_id)
    elapsed = time.perf_counter() - started
    metrics: dict[str, Any] = {
        **stats, **built, "probe_layer": layer, "probe_penalty": penalty, "probe_cv_accuracy": acc[(layer, penalty)],
        "probe_cv_folds": int(folds.max()) + 1, "probe_cv": {f"layer {k[0]}, L2 {k[1]:g}": v for k, v in acc.items()},
        "train_seconds": round(elapsed, 2), "feature_seconds": round(feature_seconds, 2),
        "seconds_per_pair": round(feature_seconds / len(kept), 4), "global_step": 0, "resumed_from": None}
    if eval_rows:
        held = pairwise_accuracy(model, tok, fmt, eval_rows)
        metrics.update({"eval_accuracy": held["accuracy"], "eval_n": held["n"],
                        "eval_mean_margin": held["mean_margin"]})
    save_model_folder(None, model, tok, fmt, out, work_dir(out), metrics, None, None, eval_rows,
                      (config_path, script, train_args, model_args, spec, path),
                      trainer_name="linear Bradley-Terry probe on frozen hidden states (closed form)")
    return out
