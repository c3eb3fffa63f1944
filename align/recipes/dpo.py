"""DPO recipe: TRL's DPOTrainer, offline, on a clinalign preference dataset, LoRA by default.

    clinalign dpo --config configs/demo/dpo.yaml [--key value ...]

The YAML holds keys of `trl.DPOConfig`, `trl.ModelConfig` and `DPOScriptArguments` below, so a
TRL user's config works as is. DeepSpeed: set `deepspeed: configs/deepspeed/zero3.json`.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from align.models import load_tokenizer, resolve_model
from align.recipes.recipe_utils import (
    keep_bf16_where_it_pays,
    last_metrics,
    model_ref,
    parse_recipe_config,
    set_threads,
)
from annotation.errors import InputError
from annotation.manifest import build_manifest, ref, write_manifest
from annotation.preferences import load_preference_rows


@dataclass
class DPOScriptArguments:
    dataset_path: str = field(default="runs/demo/preferences",
                              metadata={"help": "Preference dataset folder or JSONL (prompt/chosen/rejected)."})
    eval_fraction: float = field(default=0.0, metadata={"help": "Share of pairs held out for evaluation."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use at most this many pairs."})
    num_threads: int | None = field(default=None, metadata={"help": "torch CPU threads (None: OMP_NUM_THREADS)."})
    lora_top_layers: float | None = field(default=None, metadata={
        "help": "LoRA only in the top share of decoder layers (e.g. 0.5): backward stops below the lowest "
                "adapted layer, so a step is cheaper and the lower layers keep what the base knows. None: all."})
    dense_lm_head: bool = field(default=True, metadata={
        "help": "On a CPU, compute TRL's fused LM head densely over the labelled positions only "
                "(align/recipes/dense_lm_head.py: a 1.5x faster step here); false keeps TRL's tiled head."})


def parse(config_path: str | None, overrides: dict[str, Any] | None = None, extra_args: list[str] | None = None):
    from trl import DPOConfig, ModelConfig

    return parse_recipe_config((DPOScriptArguments, DPOConfig, ModelConfig), config_path, overrides, extra_args)


def to_conversational(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Plain prompt/chosen/rejected → chat messages, so TRL applies the policy's chat template."""
    return [{"prompt": [{"role": "user", "content": r["prompt"]}],
             "chosen": [{"role": "assistant", "content": r["chosen"]}],
             "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows]


def top_layers_only(peft_config, model, share: float | None):
    """Restrict a LoRA config to the top `share` of the model's decoder layers."""
    if peft_config is None or share is None:
        return peft_config
    if not 0 < share <= 1:
        raise InputError(f"lora_top_layers must be in (0, 1], got {share}")
    n = model.config.num_hidden_layers
    peft_config.layers_to_transform = list(range(n - max(1, round(n * share)), n))
    return peft_config


def train_from_yaml(config_path: str | None, overrides: dict[str, Any] | None = None,
                    extra_args: list[str] | None = None) -> Path:
    script_args, training_args, model_args = parse(config_path, overrides, extra_args)
    return train(script_args, training_args, model_args, config_path=config_path)


def train(script_args: DPOScriptArguments, training_args, model_args, *, config_path: str | None = None) -> Path:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOTrainer, get_peft_config
    from trl.trainer import dpo_trainer as dpo_trainer_module

    from align.recipes.dense_lm_head import use_dense_lm_head_on_cpu

    set_threads(script_args.num_threads)
    keep_bf16_where_it_pays(training_args)
    rows = load_preference_rows(script_args.dataset_path)
    if script_args.max_train_samples:
        rows = rows[: script_args.max_train_samples]
    spec = model_args.model_name_or_path or "builtin:smollm2-135m-instruct"
    resolved = resolve_model(spec)
    tokenizer = load_tokenizer(spec, padding_side="left")
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(model_args.dtype or "", torch.float32)
    model = AutoModelForCausalLM.from_pretrained(resolved, dtype=dtype)

    dataset = Dataset.from_list(to_conversational(rows))
    train_ds, eval_ds = dataset, None
    if script_args.eval_fraction > 0 and len(dataset) >= 10:
        split = dataset.train_test_split(test_size=script_args.eval_fraction, seed=training_args.seed)
        train_ds, eval_ds = split["train"], split["test"]

    head = use_dense_lm_head_on_cpu(dpo_trainer_module) if script_args.dense_lm_head else contextlib.nullcontext()
    with head:  # TRL's tiled head is slow without Triton
        trainer = DPOTrainer(model=model, args=training_args, train_dataset=train_ds, eval_dataset=eval_ds,
                             processing_class=tokenizer,
                             peft_config=top_layers_only(get_peft_config(model_args), model,
                                                         script_args.lora_top_layers))
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    metrics = last_metrics(trainer.state.log_history)
    if eval_ds is not None:
        metrics.update({f"final_{k}": v for k, v in trainer.evaluate().items()})
    out = Path(training_args.output_dir)
    trainer.save_model(str(out))
    tokenizer.save_pretrained(str(out))
    if trainer.accelerator.is_main_process:
        inputs = [ref("preferences", script_args.dataset_path), model_ref(spec, resolved)]
        if config_path:
            inputs.append(ref("config", config_path))
        write_manifest(out, build_manifest(
            "policy_adapter" if model_args.use_peft else "policy", out.name, inputs=inputs,
            config={"script": asdict(script_args), "model": asdict(model_args),
                    "training": training_args.to_dict()},
            metrics={**metrics, "train_pairs": len(train_ds)}))
    return out
