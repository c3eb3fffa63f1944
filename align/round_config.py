"""The config of one round (what `clinalign demo` / `clinalign round` runs), from YAML + overrides."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from annotation.errors import ClinalignError, InputError

EVAL_SPLITS = ("test", "rm_val")


def _f(default: Any, help: str) -> Any:  # noqa: A002  (the dataclass metadata key TrlParser reads)
    """A field with help text; mutable defaults are copied per instance."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class RoundConfig:
    """One round: split, [SFT], on-policy candidates, simulated feedback, export, reward model,
    DPO/PPO, held-out evaluation. `clinalign demo --config F [--set key=value]`."""

    name: str = _f("demo", "Name of the round (manifests, model card).")
    output_dir: str = _f("runs/demo", "Folder of the round's outputs; must be empty or a previous round's.")
    policy: str = _f("builtin:smollm2-135m-instruct", "Base policy: a builtin:* spec or a local HF folder.")
    prompt_sets: list[dict[str, Any]] = _f(
        [{"path": "data/medquad/medquad_prompts_500.jsonl", "name": "medquad"},
         {"path": "data/kqa/kqa_physician_answers_201.jsonl", "name": "kqa"}],
        "Prompt files ({path, name}); every prompt is split by prompt, near-duplicates grouped, "
        "stratified by source.")
    split_fractions: dict[str, float] = _f({"train": 0.6, "rm_val": 0.1, "test": 0.3},
                                           "Fractions of prompt groups per split (train / rm_val / test).")
    split_seed: int = _f(0, "Seed of the split (fixed across rounds, so test prompts stay test prompts).")
    train_prompts: int | None = _f(64, "Training prompts this round uses (a stratified, seeded subset; None = all).")
    rm_val_prompts: int | None = _f(16, "Reward-validation prompts this round uses (None = all).")
    test_prompts: int | None = _f(64, "Held-out prompts the evaluation uses (None = all).")
    eval_split: str = _f("test", "Split the evaluation uses: test, or rm_val for pilots (tune there, never on test).")
    samples_per_prompt: int = _f(4, "On-policy answers sampled per training prompt (pairs are built from them).")
    temperature: float = _f(0.8, "Sampling temperature of the candidates.")
    top_p: float = _f(0.95, "Nucleus sampling of candidates and held-out answers.")
    max_new_tokens: int = _f(128, "Longest answer in tokens (candidates and held-out answers).")
    min_gap: float = _f(0.05, "Best-vs-worst pairs need at least this gap in the simulated clinician's score.")
    generation_batch_size: int = _f(64, "Sequences generated together (transformers: per generate call; "
                                        "llama.cpp: parallel slots; vLLM: requests in flight).")
    generation_dtype: str = _f("auto", "auto (bf16 where the CPU/GPU has it) | float32 | bfloat16 (transformers).")
    generation_backend: str = _f(
        "llamacpp",
        "llamacpp[:bf16|f16|f32|q8_0] (llama.cpp on a cached GGUF of policy + merged adapter; ~3x transformers' "
        "tokens/s on 2 CPU cores) | vllm (a vLLM server from its own venv, scripts/setup-vllm.sh, adapter served "
        "as LoRA; the GPU default: llamacpp resolves to it on a CUDA machine) | transformers. A backend that is "
        "not installed falls back to transformers with a message.")
    seed: int = _f(0, "Seed of sampling, pairing and training.")
    phi_mode: str = _f("withhold", "PHI gate on generated pairs: block | redact | withhold.")
    phi_mode_export: str = _f("block", "PHI gate on the exported training rows: block | redact | withhold.")
    phi_scan_references: bool = _f(True, "Also scan reference answers (off for public references, whose "
                                         "eponyms read as names).")
    sft: bool = _f(True, "Run SFT on experts' answers and clinicians' corrections before DPO/PPO.")
    sft_config: str = _f("configs/demo/sft.yaml", "SFT recipe config (align/recipes/sft.py).")
    sft_overrides: dict[str, Any] = _f({}, "Keys of the SFT config to override for this round.")
    sft_max_answer_words: int = _f(60, "Experts' answers are cut at a sentence boundary after this many words.")
    reward_config: str = _f("configs/demo/reward_medical.yaml", "Reward-model recipe config (reward_models/train.py); "
                                                                "default: the medical recipe.")
    reward_overrides: dict[str, Any] = _f({}, "Keys of the reward config to override for this round.")
    reward_rated: str | None = _f(None, "JSONL of expert-graded answers (question, answer, grade): the round "
                                        "reports the reward model's Spearman against the grades (evaluation "
                                        "only; e.g. ../shared/eval/liveqa_medquad_judged_answers.jsonl).")
    policy_stage: str = _f("dpo", "dpo | ppo.")
    dpo_config: str = _f("configs/demo/dpo.yaml", "DPO recipe config (align/recipes/dpo.py).")
    ppo_config: str = _f("configs/demo/ppo.yaml", "PPO recipe config (align/recipes/ppo/).")
    dpo_overrides: dict[str, Any] = _f({}, "Keys of the DPO config to override for this round.")
    ppo_overrides: dict[str, Any] = _f({}, "Keys of the PPO config to override for this round.")
    ppo_reward: str = _f("simulated", "PPO reward: simulated (the simulated clinician) | reward_model.")
    eval_samples: int = _f(2, "Answers per held-out prompt from policy and base (same seeds), each judged alone.")
    eval_temperature: float = _f(0.7, "Sampling temperature of the held-out answers.")
    tie_eps: float = _f(1e-6, "Judge-score gap at or below which two answers tie (identical texts always tie).")
    pubmedqa_limit: int | None = _f(None, "PubMedQA items (None: all 500 official test items; 0: skip).")
    pubmedqa_with_abstract: bool = _f(True, "Give the abstract (False: the question alone, PubMedQA's "
                                            "reasoning-required setting).")
    pubmedqa_margin: float = _f(0.03, "Non-inferiority margin of the paired PubMedQA test: at the discordance seen "
                                      "in pilots (b+c ~ 6% of 500) 0.03 gives ~85% power to pass a policy with no "
                                      "tax; 0.02 gave ~57% (docs/experimental-design.md).")
    pubmedqa_gate: str = _f("prior_aligned", "prior_aligned (the policy's mean yes/no/maybe log-odds aligned with "
                                             "the base's: a shift of its default answer is reported, item-level "
                                             "losses gate) | raw (each model's own argmax).")
    pubmedqa_dtype: str = _f("float32", "Scoring precision of the paired PubMedQA test. float32: in bf16, rounding "
                                        "alone flipped 4 of 96 answers of one model, noise the paired test reads "
                                        "as discordance; with the shared-prefix cache float32 costs ~25 s.")
    min_win_rate: float = _f(0.5, "Promotion needs the win-rate's 95% CI lower bound above this.")
    num_threads: int | None = _f(None, "torch CPU threads (None: OMP_NUM_THREADS or torch's default).")

    @classmethod
    def load(cls, path: str | None, overrides: dict[str, Any] | None = None) -> RoundConfig:
        data: dict[str, Any] = {}
        if path:
            p = Path(path)
            if not p.is_file():
                raise InputError("round config not found", path=path)
            try:
                data = yaml.safe_load(p.read_text()) or {}
            except yaml.YAMLError as exc:
                raise InputError(f"invalid YAML: {exc}", path=path) from None
            if not isinstance(data, dict):
                raise InputError("round config must be a YAML mapping", path=path)
        data.update(overrides or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown keys {unknown} (known: {sorted(known)})", path=path)
        cfg = cls(**data)
        cfg.check(path)
        return cfg

    def check(self, path: str | None) -> None:
        from align.stage_registry import names

        if self.policy_stage not in names(round_policy=True):
            raise InputError(f"policy_stage must be one of {', '.join(names(round_policy=True))}, "
                             f"got {self.policy_stage!r}", path=path)
        if self.eval_split not in EVAL_SPLITS:
            raise InputError(f"eval_split must be one of {EVAL_SPLITS}, got {self.eval_split!r}", path=path)
        if self.ppo_reward not in ("simulated", "reward_model"):
            raise InputError(f"ppo_reward must be simulated or reward_model, got {self.ppo_reward!r}", path=path)
        from align.engines import parse_backend

        try:
            parse_backend(self.generation_backend)
        except ClinalignError as exc:
            raise InputError(str(exc), path=path) from None
        if self.pubmedqa_dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise InputError(f"pubmedqa_dtype must be auto, float32, bfloat16 or float16, got {self.pubmedqa_dtype!r}",
                             path=path)
        if self.pubmedqa_gate not in ("prior_aligned", "raw"):
            raise InputError(f"pubmedqa_gate must be prior_aligned or raw, got {self.pubmedqa_gate!r}", path=path)
        if self.samples_per_prompt < 2 or self.eval_samples < 2:
            raise InputError("samples_per_prompt and eval_samples must be at least 2", path=path)
        if self.reward_rated and not Path(self.reward_rated).is_file():  # fail before the round's first stage
            raise InputError(f"reward_rated: graded answers file not found: {self.reward_rated}", path=path)
