"""Bradley–Terry reward-model training with TRL's RewardTrainer, from a TRL-native YAML file.

The YAML is parsed by `trl.TrlParser` into three dataclasses, as in TRL's own scripts:
`RewardScriptArguments` (data and text format), `trl.RewardConfig` (training), `trl.ModelConfig`
(backbone, LoRA). Pairs are tokenized by `reward_models.formatting.encode` (the same function the
scorer uses) before TRL sees them, so TRL's `max_length` filter has nothing left to drop: long
prompts are cut from the left and the counts are reported. The model is trained into a temporary
sibling folder and renamed into place at the end, so a failure never leaves half an output.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from annotation.atomic import swap_into_place, temp_dir_beside
from annotation.errors import ClinalignError, InputError
from annotation.manifest import build_manifest, path_sha256, ref, write_manifest
from reward_models.backbones import MINILM, resolve_backbone
from reward_models.formatting import RewardFormat, encode, prepare_tokenizer


@dataclass
class RewardScriptArguments:
    """Data and text-format arguments of `clinalign reward train` (the YAML's non-TRL keys)."""

    dataset_path: str | None = field(default=None, metadata={
        "help": "Preference dataset folder (annotation export) or JSONL with prompt/chosen/rejected."})
    eval_dataset_path: str | None = field(default=None, metadata={
        "help": "Held-out preference pairs scored after training (never trained on)."})
    eval_fraction: float = field(default=0.0, metadata={
        "help": "Fraction of dataset_path held out for evaluation when eval_dataset_path is not given."})
    max_train_pairs: int | None = field(default=None, metadata={"help": "Use at most this many pairs."})
    separator: str = field(default="\n\n", metadata={"help": "Text between prompt and response."})
    min_prompt_tokens: int = field(default=16, metadata={
        "help": "Pairs whose response leaves less room than this for the prompt are dropped."})
    use_margin: bool = field(default=True, metadata={
        "help": "Subtract the dataset's margin column inside the Bradley–Terry loss (TRL's margin)."})
    margin_scale: float = field(default=1.0, metadata={"help": "Multiplier applied to the margin column."})
    merge_lora: bool = field(default=True, metadata={
        "help": "With use_peft: save the merged model (else the adapter, loaded with its base)."})
    num_threads: int | None = field(default=None, metadata={"help": "torch CPU threads (None: torch default)."})
    overwrite: bool = field(default=True, metadata={"help": "Replace an existing output_dir."})
    multi_objective: bool = field(default=False, metadata={
        "help": "Also train rating heads (accuracy/harm/completeness) from ratings_chosen/ratings_rejected."})
    rating_loss_weight: float = field(default=1.0, metadata={"help": "Weight of the rating heads' MSE."})
    objective_weights: str = field(default='{"accuracy": 0.5, "completeness": 0.25}', metadata={
        "help": "JSON weights of the predicted ratings added to the reward in the combined scalar."})
    harm_threshold: float = field(default=3.5, metadata={
        "help": "Predicted harm (1-5, higher = more harmful) at or above which the hard penalty applies."})
    harm_penalty: float = field(default=-5.0, metadata={"help": "Combined scalar for a harmful answer."})


def _override_args(overrides: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """Overrides as CLI arguments (typed by argparse); `None` values become config defaults."""
    cli: list[str] = []
    as_defaults: dict[str, Any] = {}
    for key, value in overrides.items():
        if value is None:
            as_defaults[key] = None
        elif isinstance(value, list | tuple):
            cli += [f"--{key}", *map(str, value)]
        elif isinstance(value, dict):
            cli += [f"--{key}", json.dumps(value)]
        else:
            cli += [f"--{key}", str(value)]
    return cli, as_defaults


def parse_config(path: str, overrides: dict[str, Any] | None = None):
    """(RewardScriptArguments, RewardConfig, ModelConfig) from a YAML file plus overrides."""
    import yaml
    from trl import ModelConfig, RewardConfig, TrlParser

    cfg_path = Path(path)
    if not cfg_path.is_file():
        raise InputError("config file not found", path=path)
    try:
        config = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InputError(f"not valid YAML ({exc})", path=path) from None
    if not isinstance(config, dict):
        raise InputError("config must be a YAML mapping of argument: value", path=path)
    for key, value in (config.pop("env", None) or {}).items():
        os.environ[key] = str(value)
    cli, as_defaults = _override_args(dict(overrides or {}))
    config.update(as_defaults)
    parser = TrlParser((RewardScriptArguments, RewardConfig, ModelConfig))
    unknown = parser.set_defaults_with_config(**config)
    if unknown:
        raise InputError(f"unknown keys {unknown[::2]} (not in RewardScriptArguments, trl.RewardConfig "
                         f"or trl.ModelConfig)", path=path)
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):  # argparse prints its whole usage before exiting
            script, train_args, model_args = parser.parse_args_into_dataclasses(args=cli)
    except SystemExit:
        reason = (errors.getvalue().strip().splitlines() or ["invalid value"])[-1].split("error: ", 1)[-1]
        raise InputError(f"invalid override ({reason})", path=path) from None
    except (ValueError, TypeError) as exc:
        raise InputError(str(exc), path=path) from None
    return script, train_args, model_args


def _split(rows: list[dict], script: RewardScriptArguments, seed: int) -> tuple[list[dict], list[dict]]:
    if script.eval_dataset_path:
        from annotation.preferences import load_preference_rows

        return rows, load_preference_rows(script.eval_dataset_path)
    if not 0.0 <= script.eval_fraction < 1.0:
        raise InputError(f"eval_fraction must be in [0, 1), got {script.eval_fraction}")
    if script.eval_fraction == 0.0:
        return rows, []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(len(rows) * script.eval_fraction))
    held = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in held], [rows[i] for i in sorted(held)]


def encode_pairs(rows: list[dict], tokenizer, fmt: RewardFormat, script: RewardScriptArguments,
                 ratings: tuple[list, list] | None = None) -> tuple[dict, dict]:
    """Columns for TRL (chosen_ids, rejected_ids[, margin][, ratings_*]) and the truncation counts."""
    from rich.progress import track

    cols: dict[str, list] = {"chosen_ids": [], "rejected_ids": [], "margin": [],
                             "ratings_chosen": [], "ratings_rejected": []}
    stats = {"n_pairs": len(rows), "n_prompt_truncated": 0, "n_dropped_too_long": 0}
    for i, row in enumerate(track(rows, description="Tokenizing pairs", transient=True)):
        c = encode(tokenizer, row["prompt"], row["chosen"], fmt)
        r = encode(tokenizer, row["prompt"], row["rejected"], fmt)
        if c.too_long or r.too_long:
            stats["n_dropped_too_long"] += 1
            continue
        stats["n_prompt_truncated"] += int(c.prompt_cut or r.prompt_cut)
        cols["chosen_ids"].append(c.input_ids)
        cols["rejected_ids"].append(r.input_ids)
        cols["margin"].append(float(row.get("margin") or 0.0) * script.margin_scale)
        if ratings is not None:
            cols["ratings_chosen"].append(ratings[0][i])
            cols["ratings_rejected"].append(ratings[1][i])
    if not script.use_margin:
        del cols["margin"]
    if ratings is None:
        del cols["ratings_chosen"], cols["ratings_rejected"]
    stats["n_used"] = len(cols["chosen_ids"])
    return cols, stats


def pairwise_accuracy(model, tokenizer, fmt: RewardFormat, rows: list[dict], *, batch_size: int = 32) -> dict:
    """Held-out accuracy of an in-memory model through the scorer's own path."""
    from reward_models.scoring import RewardScorer

    scorer = RewardScorer("<in-memory>", model=model, tokenizer=tokenizer, fmt=fmt, batch_size=batch_size,
                          device=next(model.parameters()).device)
    chosen = scorer.score([r["prompt"] for r in rows], [r["chosen"] for r in rows])
    rejected = scorer.score([r["prompt"] for r in rows], [r["rejected"] for r in rows])
    wins = [1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen, rejected, strict=True)]
    return {"accuracy": sum(wins) / len(wins), "n": len(wins),
            "mean_margin": sum(c - r for c, r in zip(chosen, rejected, strict=True)) / len(wins)}


def _multi_objective_setup(script: RewardScriptArguments, rows: list[dict], model, config_path: str):
    from reward_models.multi_objective import MultiObjectiveSpec, feature_size, rating_columns

    try:
        weights = json.loads(script.objective_weights)
    except json.JSONDecodeError as exc:
        raise InputError(f"objective_weights is not JSON ({exc.msg})", path=config_path) from None
    spec = MultiObjectiveSpec(rating_loss_weight=script.rating_loss_weight, weights=weights,
                              harm_threshold=script.harm_threshold, harm_penalty=script.harm_penalty,
                              hidden_size=feature_size(model))
    unknown = sorted(set(weights) - set(spec.attributes))
    if unknown:
        raise InputError(f"objective_weights names unknown attributes {unknown}", path=config_path)
    chosen, rejected, n_rated = rating_columns(rows, spec.attributes, script.dataset_path)
    if n_rated == 0:
        raise InputError("multi_objective is set but no pair carries ratings_chosen/ratings_rejected",
                         path=script.dataset_path)
    return spec, (chosen, rejected)


def _count_rated(ratings: tuple[list, list]) -> int:
    import math

    return sum(any(not math.isnan(x) for x in c + r) for c, r in zip(*ratings, strict=True))


def _rating_eval(model_dir: Path, rows: list[dict], spec) -> dict:
    """Held-out error of the rating heads (on rated eval pairs) and accuracy of the combined scalar."""
    import math

    from reward_models.multi_objective import rating_columns
    from reward_models.scoring import RewardScorer

    scorer = RewardScorer(str(model_dir))
    prompts = [r["prompt"] for r in rows]
    det_c = scorer.score_detailed(prompts, [r["chosen"] for r in rows])
    det_r = scorer.score_detailed(prompts, [r["rejected"] for r in rows])
    truth_c, truth_r, _ = rating_columns(rows, spec.attributes, "eval")
    out: dict[str, Any] = {"eval_combined_accuracy": sum(
        1.0 if c["combined"] > r["combined"] else 0.5 if c["combined"] == r["combined"] else 0.0
        for c, r in zip(det_c, det_r, strict=True)) / len(rows)}
    for j, attr in enumerate(spec.attributes):
        errs = [abs(d["ratings"][attr] - t[j]) for dets, truths in ((det_c, truth_c), (det_r, truth_r))
                for d, t in zip(dets, truths, strict=True) if not math.isnan(t[j])]
        if errs:
            out[f"eval_{attr}_mae"] = sum(errs) / len(errs)
    return out


def _load_backbone(model_args, train_args):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    spec = model_args.model_name_or_path or MINILM
    path = resolve_backbone(spec)
    dtype = getattr(torch, model_args.dtype) if model_args.dtype not in (None, "auto") else "auto"
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=train_args.trust_remote_code)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=1, dtype=dtype, trust_remote_code=train_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation)
    return spec, path, tok, model


def _place(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished folder into place (an old one only with overwrite: true)."""
    if out.exists() and not overwrite:
        raise ClinalignError(f"output_dir '{out}' exists (set overwrite: true to replace it)")
    swap_into_place(tmp, out)


def train_from_yaml(path: str, overrides: dict[str, Any] | None = None) -> Path:
    """Train a reward model as configured in `path` (+ CLI-style overrides); return its folder."""
    import torch
    from datasets import Dataset
    from trl import RewardTrainer, get_peft_config

    from annotation.preferences import load_preference_rows

    script, train_args, model_args = parse_config(path, overrides)
    if not script.dataset_path:
        raise InputError("dataset_path is not set", path=path)
    if script.num_threads:
        torch.set_num_threads(script.num_threads)
    if not torch.cuda.is_available() and train_args.activation_checkpointing:
        # 3-4x slower on CPU and saves nothing we need (transformers 5 mirrors the old name)
        train_args.activation_checkpointing = train_args.gradient_checkpointing = False
    if not torch.cuda.is_available():
        train_args.dataloader_pin_memory = False  # nothing to pin for; avoids a warning per epoch

    rows = load_preference_rows(script.dataset_path)
    if script.max_train_pairs:
        rows = rows[:script.max_train_pairs]
    train_rows, eval_rows = _split(rows, script, train_args.seed)

    spec, backbone_path, tok, model = _load_backbone(model_args, train_args)
    max_length = train_args.max_length or min(512, tok.model_max_length)
    fmt = RewardFormat(separator=script.separator, eos_token=train_args.eos_token, max_length=max_length,
                       min_prompt_tokens=script.min_prompt_tokens)
    try:
        prepare_tokenizer(tok, fmt)
    except ValueError as exc:
        raise InputError(str(exc), path=path) from None
    fmt = dataclasses.replace(fmt, eos_token=tok.eos_token)
    train_args.eos_token, train_args.max_length = tok.eos_token, max_length
    mo_spec, ratings = None, None
    if script.multi_objective:
        mo_spec, ratings = _multi_objective_setup(script, train_rows, model, path)
    cols, stats = encode_pairs(train_rows, tok, fmt, script, ratings)
    if stats["n_used"] < 1:
        raise InputError(f"no training pairs left after cutting to max_length={max_length} "
                         f"({stats['n_dropped_too_long']} dropped as too long)", path=script.dataset_path)

    peft_config = None
    if model_args.use_peft:
        if model_args.lora_task_type == "CAUSAL_LM":
            model_args.lora_task_type = "SEQ_CLS"  # a reward model is a sequence classifier
        peft_config = get_peft_config(model_args)

    out = Path(train_args.output_dir)
    tmp = temp_dir_beside(out)
    try:
        train_args.output_dir = str(tmp)
        kwargs = dict(model=model, args=train_args, train_dataset=Dataset.from_dict(cols), processing_class=tok,
                      peft_config=peft_config)
        if mo_spec is None:
            trainer = RewardTrainer(**kwargs)
        else:
            from reward_models.multi_objective import (
                MultiObjectiveCollator,
                MultiObjectiveRewardTrainer,
                RatingHead,
            )

            head = RatingHead(mo_spec.hidden_size, len(mo_spec.attributes))
            trainer = MultiObjectiveRewardTrainer(
                **kwargs, rating_head=head, rating_loss_weight=script.rating_loss_weight,
                data_collator=MultiObjectiveCollator(pad_token_id=tok.pad_token_id))
        started = time.perf_counter()
        result = trainer.train()
        elapsed = time.perf_counter() - started
        final = trainer.model
        if model_args.use_peft and script.merge_lora:
            final = final.merge_and_unload()
        metrics: dict[str, Any] = {
            **stats, "train_loss": result.training_loss, "global_step": result.global_step,
            "train_seconds": round(elapsed, 2),
            "seconds_per_step": round(elapsed / max(result.global_step, 1), 4)}
        for key in ("accuracy", "margin", "rating_mse"):  # TRL's running train metrics, last logged value
            logged = [h[key] for h in trainer.state.log_history if key in h]
            if logged:
                metrics[f"train_{key}_last_log"] = logged[-1]
        for holder in {id(trainer.model): trainer.model, id(final): final}.values():
            if "rating_head" in getattr(holder, "_modules", {}):
                del holder.rating_head  # saved on its own, beside the HF model
        if eval_rows:
            held = pairwise_accuracy(final, tok, fmt, eval_rows)
            metrics.update({"eval_accuracy": held["accuracy"], "eval_n": held["n"],
                            "eval_mean_margin": held["mean_margin"]})
        final.config.pad_token_id = tok.pad_token_id
        final.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        fmt.save(tmp)
        if mo_spec is not None:
            from reward_models.multi_objective import save_head

            save_head(trainer.rating_head, mo_spec, tmp)
            metrics["n_rated_pairs"] = _count_rated(ratings)
            if eval_rows:
                metrics.update(_rating_eval(tmp, eval_rows, mo_spec))
        _write_manifest(tmp, out, path, script, train_args, model_args, spec, backbone_path, metrics)
        _place(tmp, out, script.overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _write_manifest(tmp: Path, out: Path, config_path: str, script, train_args, model_args, spec: str,
                    backbone_path: str, metrics: dict) -> None:
    inputs = [ref("config", config_path), ref("train_data", script.dataset_path)]
    if script.eval_dataset_path:
        inputs.append(ref("eval_data", script.eval_dataset_path))
    if not spec.startswith("builtin:") or spec == MINILM:
        inputs.append(ref("base_model", backbone_path))
    train_cfg = {k: v for k, v in train_args.to_dict().items() if not k.startswith("_")}
    train_cfg["output_dir"] = str(out)
    manifest = build_manifest(
        "reward_model", out.name, inputs=inputs,
        outputs=[{"role": "reward_model", "path": str(out), "sha256": path_sha256(tmp)}],
        config={"script": dataclasses.asdict(script), "training": train_cfg,
                "model": dataclasses.asdict(model_args)},
        metrics=metrics, annotations={"base_model": spec, "trainer": "trl.RewardTrainer (Bradley-Terry)"})
    write_manifest(tmp, manifest)
