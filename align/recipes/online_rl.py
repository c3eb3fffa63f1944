"""GRPO and RLOO through TRL 1.16's trainers, with clinalign's reward model and config conventions.

    clinalign grpo --config configs/demo/grpo.yaml [--key value ...]
    clinalign rloo --config configs/demo/rloo.yaml [--key value ...]

The YAML holds keys of `trl.GRPOConfig` / `trl.RLOOConfig`, `trl.ModelConfig` and
`OnlineRLScriptArguments` (prompts_path, reward_model_path, ... the same names PPO uses).

Reward, two routes (`reward_via`):
- `scorer` (default): a reward function wrapping `reward_models.scoring.RewardScorer`, so GRPO/RLOO
  see exactly the scores PPO and evaluation see: the text round-trip through the reward model's own
  tokenizer, with the prompt/response format and truncation it was trained with.
- `model`: TRL's native route, `reward_funcs=<seq-cls model>, reward_processing_classes=<its
  tokenizer>`. TRL 1.16 then scores `prompt + completion` as one string tokenized with
  `add_special_tokens=False` and no truncation (grpo_trainer.py `_calculate_rewards`), and applies the
  reward tokenizer's chat template to conversational prompts, so prompts go in as plain strings
  already formatted with the policy's chat template. Scores differ from the scorer route's.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from align.recipes.ppo.ppo_config import OnlineRLScriptArguments
from clinalign_base.errors import ClinalignError


@dataclass
class TRLOnlineScriptArguments(OnlineRLScriptArguments):
    reward_via: str = field(default="scorer", metadata={
        "help": "scorer: clinalign's RewardScorer as a reward function (same scores as PPO); "
                "model: TRL's reward_funcs=<seq-cls model> route."})


def _trl_classes(algorithm: str):
    import trl

    from align import stage_registry

    stage = stage_registry.get(algorithm, online=True)
    if stage.algorithm is None:  # PPO is our own trainer (align.recipes.ppo), not a TRL online trainer
        raise ClinalignError(f"'{algorithm}' is not a TRL online-RL algorithm; use `clinalign {algorithm}`")
    return stage.training_arguments_class(), getattr(trl, f"{algorithm.upper()}Trainer")


def parse(algorithm: str, config_path: str | None, overrides: dict[str, Any] | None = None,
          extra_args: list[str] | None = None):
    from trl import ModelConfig

    from align.recipes.recipe_utils import parse_recipe_config

    config_cls, _ = _trl_classes(algorithm)
    return parse_recipe_config((TRLOnlineScriptArguments, config_cls, ModelConfig), config_path, overrides,
                               extra_args)


def train_from_yaml(algorithm: str, config_path: str | None, overrides: dict[str, Any] | None = None,
                    extra_args: list[str] | None = None) -> Path:
    script_args, training_args, model_args = parse(algorithm, config_path, overrides, extra_args)
    return train(algorithm, script_args, training_args, model_args, config_path=config_path)


# ------------------------------------------------------------------------------------------ checks
def _check_batches(training_args, n_prompts: int) -> None:
    """TRL checks divisibility inside its trainer; say it in clinalign's words before anything loads."""
    g = training_args.num_generations
    if g is None or g < 2:
        raise ClinalignError(f"num_generations must be >= 2 (group baselines need several samples), got {g}")
    gen_batch = training_args.generation_batch_size
    if gen_batch % g:
        raise ClinalignError(
            f"generation batch {gen_batch} (per_device_train_batch_size={training_args.per_device_train_batch_size}"
            f" x processes x steps_per_generation={training_args.steps_per_generation}) is not divisible by "
            f"num_generations={g}; make it a multiple")
    if n_prompts < gen_batch // g:
        raise ClinalignError(f"{n_prompts} prompt(s) but one generation batch needs {gen_batch // g} distinct "
                             f"prompts ({gen_batch} completions / {g} per prompt)")


def _prompt_rows(script_args, tokenizer, max_completion_length: int, model_config, conversational: bool):
    from align.models import chat_prompt
    from align.recipes.ppo.prompts import context_length, encode_prompts, load_prompt_set

    prompts = load_prompt_set(script_args.prompts_path, script_args.max_train_samples)
    encode_prompts(prompts, tokenizer, max_prompt_length=script_args.max_prompt_length,
                   response_length=max_completion_length, context=context_length(model_config))
    if conversational:  # TRL applies the policy's chat template itself
        return prompts, [{"prompt": [{"role": "user", "content": p.text}], "question": p.text} for p in prompts]
    return prompts, [{"prompt": chat_prompt(tokenizer, p.text), "question": p.text} for p in prompts]


# ------------------------------------------------------------------------------------------ rewards
def scorer_reward_func(source):
    """A TRL reward function over the plain question (dataset column) and the completion text."""

    def clinician_reward(prompts, completions, question=None, **_: Any) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return source(list(question) if question is not None else list(prompts), texts)

    clinician_reward.__name__ = "clinician_reward"
    return clinician_reward


def _native_reward_model(script_args):
    """(seq-cls model, tokenizer) for TRL's own route, checked for finite scores on a sample."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from reward_models.backbones import check_reward_model, resolve_backbone

    path = resolve_backbone(script_args.reward_model_path)
    if not script_args.allow_untrained_reward:
        check_reward_model(path)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1).eval()
    sample = tok(["Human: what is asthma?\n\nAssistant: a chronic airway disease."], return_tensors="pt",
                 add_special_tokens=False)
    with torch.no_grad():
        if not torch.isfinite(model(**sample).logits).all():
            raise ClinalignError(f"reward model '{script_args.reward_model_path}' returned non-finite scores "
                                 f"(NaN/inf) on a sample")
    return model, tok


# ------------------------------------------------------------------------------------------ training
def train(algorithm: str, script_args, training_args, model_args, *, config_path: str | None = None) -> Path:
    from datasets import Dataset
    from transformers import AutoConfig
    from trl import get_peft_config

    from align.models import load_causal_lm, load_tokenizer, resolve_model
    from align.recipes.ppo.rollout import make_reward_source, preflight_reward
    from align.recipes.recipe_utils import set_threads

    set_threads(script_args.num_threads)
    _, trainer_cls = _trl_classes(algorithm)
    if script_args.reward_via not in ("scorer", "model"):
        raise ClinalignError(f"reward_via must be scorer or model, got {script_args.reward_via!r}")
    spec = model_args.model_name_or_path or "builtin:smollm2-135m-instruct"
    tokenizer = load_tokenizer(spec, padding_side="left")
    model_config = AutoConfig.from_pretrained(resolve_model(spec))
    prompts, rows = _prompt_rows(script_args, tokenizer, training_args.max_completion_length, model_config,
                                 conversational=script_args.reward_via == "scorer")
    _check_batches(training_args, len(prompts))

    if script_args.reward_via == "scorer":
        source = make_reward_source(script_args)
        preflight_reward(source, [p.text for p in prompts])
        reward_funcs, reward_tok, reward_name = scorer_reward_func(source), None, source.name
    else:
        if not script_args.reward_model_path:
            raise ClinalignError("reward_via: model needs reward_model_path")
        reward_funcs, reward_tok = _native_reward_model(script_args)
        reward_name = script_args.reward_model_path

    dtype = model_args.dtype if model_args.dtype in ("float32", "bfloat16", "float16") else "float32"
    model = load_causal_lm(spec, dtype=dtype)
    trainer = trainer_cls(model=model, reward_funcs=reward_funcs, args=training_args,
                          train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                          reward_processing_classes=reward_tok, peft_config=get_peft_config(model_args))
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    out = Path(training_args.output_dir)
    trainer.save_model(str(out))
    if trainer.accelerator.is_main_process:
        tokenizer.save_pretrained(str(out))
        _write_outputs(algorithm, out, trainer.state.log_history, script_args, training_args, model_args,
                       spec, reward_name, config_path)
    return out


def _write_outputs(algorithm, out: Path, history, script_args, training_args, model_args, spec, reward_name,
                   config_path) -> None:
    from align.models import resolve_model
    from align.recipes.ppo.metrics import METRICS_NAME, plot_curves
    from align.recipes.ppo.ppo_trainer import input_ref
    from align.recipes.ppo.prompts import resolve_prompts_path
    from align.recipes.recipe_utils import last_metrics, model_ref
    from clinalign_base.manifest import build_manifest, write_manifest

    rows = [{"step": h["step"], **{k: v for k, v in h.items() if isinstance(v, (int, float))}}
            for h in history if "step" in h and "reward" in h]
    (out / METRICS_NAME).write_text("".join(json.dumps(r) + "\n" for r in rows))
    plot_curves(rows, out / "reward_kl_curves.png", title=f"{algorithm.upper()} {spec}",
                panels=[("reward", "reward (mean over completions)"), ("kl", "KL to reference"),
                        ("entropy", "entropy")])
    metrics = last_metrics(history)
    if rows:
        metrics["reward_mean"] = rows[-1].get("reward", math.nan)
        metrics["first_reward"] = rows[0].get("reward", math.nan)
        if "kl" in rows[-1]:
            metrics["objective/kl"] = rows[-1]["kl"]
    inputs = [input_ref("prompts", str(resolve_prompts_path(script_args.prompts_path))),
              model_ref(spec, resolve_model(spec))]
    if script_args.reward_model_path:
        inputs.append(input_ref("reward_model", script_args.reward_model_path))
    if config_path:
        inputs.append(input_ref("config", config_path))
    write_manifest(out, build_manifest(
        "policy_adapter" if model_args.use_peft else "policy", out.name, inputs=inputs,
        config={"script": asdict(script_args), "model": asdict(model_args), "training": training_args.to_dict()},
        metrics=metrics, annotations={"trainer": f"trl.{algorithm.upper()}Trainer", "reward": reward_name,
                                      "reward_via": script_args.reward_via}))
