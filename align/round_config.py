"""The config of one round (what `clinalign demo` / `clinalign round` runs), from YAML + overrides."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from annotation.errors import InputError

EVAL_SPLITS = ("test", "rm_val")


@dataclass
class RoundConfig:
    name: str = "demo"
    output_dir: str = "runs/demo"
    policy: str = "builtin:smollm2-135m-instruct"
    # every prompt of these sets is split by prompt (near-duplicates grouped, stratified by source)
    prompt_sets: list[dict[str, Any]] = field(default_factory=lambda: [
        {"path": "data/medquad/medquad_prompts_500.jsonl", "name": "medquad"},
        {"path": "data/kqa/kqa_physician_answers_201.jsonl", "name": "kqa"}])
    split_fractions: dict[str, float] = field(default_factory=lambda: {"train": 0.6, "rm_val": 0.1, "test": 0.3})
    split_seed: int = 0
    # how many prompts of each split this round uses (a stratified, seeded subset; None = all)
    train_prompts: int | None = 64
    rm_val_prompts: int | None = 16
    test_prompts: int | None = 64
    eval_split: str = "test"  # rm_val for pilots: tune there, never on the test split
    # on-policy candidates: `samples_per_prompt` answers per training prompt at one temperature
    samples_per_prompt: int = 4
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 128
    min_gap: float = 0.05  # best-vs-worst pairs need at least this judge gap
    generation_batch_size: int = 64
    generation_dtype: str = "auto"
    seed: int = 0
    phi_mode: str = "withhold"  # PHI gate on generated pairs: block | redact | withhold
    phi_mode_export: str = "block"  # PHI gate on the exported training rows
    phi_scan_references: bool = True  # also scan reference answers (off for public references: eponyms)
    # SFT on experts' answers (training prompts) and clinicians' corrections, before DPO/PPO
    sft: bool = True
    sft_config: str = "configs/demo/sft.yaml"
    sft_overrides: dict[str, Any] = field(default_factory=dict)
    sft_max_answer_words: int = 60
    reward_config: str = "configs/demo/reward.yaml"
    reward_overrides: dict[str, Any] = field(default_factory=dict)
    policy_stage: str = "dpo"  # dpo | ppo
    dpo_config: str = "configs/demo/dpo.yaml"
    ppo_config: str = "configs/demo/ppo.yaml"
    dpo_overrides: dict[str, Any] = field(default_factory=dict)
    ppo_overrides: dict[str, Any] = field(default_factory=dict)
    ppo_reward: str = "simulated"  # simulated (the simulated clinician) | reward_model
    # evaluation: k samples per test prompt for policy and base; the simulated clinician judges
    eval_samples: int = 2
    eval_temperature: float = 0.7
    tie_eps: float = 1e-6
    pubmedqa_limit: int | None = None  # None: all 500 official test items
    pubmedqa_with_abstract: bool = True  # False: the question alone (PubMedQA's reasoning-required setting)
    pubmedqa_margin: float = 0.02  # non-inferiority margin of the paired PubMedQA test
    min_win_rate: float = 0.5  # promotion needs the win-rate's CI lower bound above this
    num_threads: int | None = None

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
        if self.policy_stage not in ("dpo", "ppo"):
            raise InputError(f"policy_stage must be dpo or ppo, got {self.policy_stage!r}", path=path)
        if self.eval_split not in EVAL_SPLITS:
            raise InputError(f"eval_split must be one of {EVAL_SPLITS}, got {self.eval_split!r}", path=path)
        if self.ppo_reward not in ("simulated", "reward_model"):
            raise InputError(f"ppo_reward must be simulated or reward_model, got {self.ppo_reward!r}", path=path)
        if self.samples_per_prompt < 2 or self.eval_samples < 2:
            raise InputError("samples_per_prompt and eval_samples must be at least 2", path=path)
