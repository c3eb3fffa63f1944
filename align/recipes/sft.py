"""SFT recipe: TRL's SFTTrainer + LoRA on experts' answers and clinicians' corrections.

    clinalign sft --config configs/demo/sft.yaml [--key value ...]

Expert answers (MedQuAD / K-QA references of the round's *training* prompts) and the `correction`
fields clinicians wrote are supervised targets, a stage of their own before DPO/PPO: mixed into a
preference set as "chosen" against a model draft they are off-policy, longer than the policy's
answers and dominate a small set. Targets are cut at a sentence boundary to `max_answer_words`, so the
model learns complete answers that end, not fragments cut by a token limit. The loss is on the
answer only (TRL's prompt/completion format). `merge_into` writes base + adapter as one model, the
reference and starting point of the DPO/PPO stage that follows.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from align.models import load_tokenizer, resolve_model
from align.prompts import Prompt
from align.recipes.recipe_utils import last_metrics, model_ref, parse_recipe_config, set_threads
from annotation.records import CandidatePair, Feedback
from clinalign_base.errors import InputError
from clinalign_base.jsonl import read_jsonl
from clinalign_base.manifest import build_manifest, ref, write_manifest

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass
class SFTScriptArguments:
    dataset_path: str = field(default="runs/demo/sft_data/sft.jsonl", metadata={
        "help": "JSONL of {prompt, completion, source} rows (what `build_sft_rows` writes)."})
    merge_into: str | None = field(default=None, metadata={
        "help": "Also write base + adapter merged into this folder (the next stage's base model)."})
    num_threads: int | None = field(default=None, metadata={"help": "torch CPU threads (None: OMP_NUM_THREADS)."})


def first_sentences(text: str, max_words: int) -> str:
    """Whole sentences from the start of `text`, at most `max_words` words (at least one sentence)."""
    kept: list[str] = []
    words = 0
    for sentence in _SENTENCE_END.split(" ".join(text.split())):
        n = len(sentence.split())
        if kept and words + n > max_words:
            break
        kept.append(sentence)
        words += n
    return " ".join(kept)


def build_sft_rows(prompts: Iterable[Prompt], pairs: Sequence[CandidatePair] = (), feedback: Sequence[Feedback] = (),
                   *, max_answer_words: int = 60) -> list[dict[str, Any]]:
    """Expert answers of `prompts` and clinicians' corrections (human feedback only) as SFT rows."""
    rows = [{"prompt": p.text, "completion": first_sentences(p.reference, max_answer_words),
             "source": "expert_answer", "prompt_id": p.id} for p in prompts if p.reference]
    by_id = {p.id: p for p in pairs}
    for fb in feedback:
        if fb.correction and not fb.simulated and fb.pair_id in by_id:
            rows.append({"prompt": by_id[fb.pair_id].prompt, "completion": fb.correction.strip(),
                         "source": f"correction:{fb.annotator_id}", "prompt_id": by_id[fb.pair_id].prompt_id})
    return rows


def load_sft_rows(path: str) -> list[dict[str, Any]]:
    rows = []
    for line, obj in read_jsonl(path):
        for key in ("prompt", "completion"):
            if not isinstance(obj.get(key), str) or not obj[key].strip():
                raise InputError(f"field '{key}' must be a non-empty string", path=path, line=line)
        rows.append(obj)
    if not rows:
        raise InputError("no SFT rows", path=path)
    return rows


def parse(config_path: str | None, overrides: dict[str, Any] | None = None, extra_args: list[str] | None = None):
    from trl import ModelConfig, SFTConfig

    return parse_recipe_config((SFTScriptArguments, SFTConfig, ModelConfig), config_path, overrides, extra_args)


def train_from_yaml(config_path: str | None, overrides: dict[str, Any] | None = None,
                    extra_args: list[str] | None = None) -> Path:
    script_args, training_args, model_args = parse(config_path, overrides, extra_args)
    return train(script_args, training_args, model_args, config_path=config_path)


def train(script_args: SFTScriptArguments, training_args, model_args, *, config_path: str | None = None) -> Path:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTTrainer, get_peft_config

    set_threads(script_args.num_threads)
    rows = load_sft_rows(script_args.dataset_path)
    spec = model_args.model_name_or_path or "builtin:smollm2-135m-instruct"
    resolved = resolve_model(spec)
    tokenizer = load_tokenizer(spec, padding_side="right")
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(model_args.dtype or "", torch.float32)
    model = AutoModelForCausalLM.from_pretrained(resolved, dtype=dtype)
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}],
                                  "completion": [{"role": "assistant", "content": r["completion"]}]} for r in rows])
    trainer = SFTTrainer(model=model, args=training_args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=get_peft_config(model_args))
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    out = Path(training_args.output_dir)
    trainer.save_model(str(out))
    tokenizer.save_pretrained(str(out))
    if not trainer.accelerator.is_main_process:
        return out
    inputs = [ref("sft_data", script_args.dataset_path), model_ref(spec, resolved)]
    if config_path:
        inputs.append(ref("config", config_path))
    sources: dict[str, int] = {}
    for r in rows:
        sources[r.get("source", "unknown")] = sources.get(r.get("source", "unknown"), 0) + 1
    write_manifest(out, build_manifest(
        "policy_adapter" if model_args.use_peft else "policy", out.name, inputs=inputs,
        config={"script": asdict(script_args), "model": asdict(model_args), "training": training_args.to_dict()},
        metrics={**last_metrics(trainer.state.log_history), "sft_rows": len(rows)},
        annotations={"rows_by_source": sources}))
    if script_args.merge_into and model_args.use_peft:
        merge_adapter(trainer.model, tokenizer, out, Path(script_args.merge_into))
    return out


def merge_adapter(peft_model, tokenizer, adapter_dir: Path, target: Path) -> Path:
    """Base + adapter as one float32 model folder, with a manifest pointing at the adapter."""
    import torch

    from clinalign_base.atomic import atomic_dir

    merged = peft_model.merge_and_unload().to(torch.float32)
    with atomic_dir(target) as tmp:
        merged.save_pretrained(str(tmp))
        tokenizer.padding_side = "left"
        tokenizer.save_pretrained(str(tmp))
        write_manifest(tmp, build_manifest("policy", target.name, inputs=[ref("sft_adapter", adapter_dir)],
                                           annotations={"merged": "base model + SFT LoRA adapter"}))
    return target
