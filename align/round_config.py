"""The config of one round (what `clinalign demo` / `clinalign round` runs), from YAML + overrides."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from annotation.errors import InputError


@dataclass
class RoundConfig:
    name: str = "demo"
    output_dir: str = "runs/demo"
    policy: str = "builtin:smollm2-135m-instruct"
    prompt_sets: list[dict[str, Any]] = field(default_factory=lambda: [
        {"path": "data/medquad/medquad_prompts_500.jsonl", "name": "medquad", "limit": 48},
        {"path": "data/kqa/kqa_physician_answers_201.jsonl", "name": "kqa", "limit": 16}])
    eval_prompts: dict[str, Any] = field(default_factory=lambda: {
        "path": "data/medquad/medquad_prompts_500.jsonl", "offset": 400, "limit": 16})
    temperature_a: float = 0.7
    temperature_b: float = 1.1
    max_new_tokens: int = 96
    batch_size: int = 8
    seed: int = 0
    include_seeds: bool = True
    phi_mode: str = "withhold"  # PHI gate on generated pairs: block | redact | withhold
    phi_mode_export: str = "block"  # PHI gate on the exported training rows
    reward_config: str = "configs/demo/reward.yaml"
    reward_overrides: dict[str, Any] = field(default_factory=dict)
    policy_stage: str = "dpo"  # dpo | ppo
    dpo_config: str = "configs/demo/dpo.yaml"
    ppo_config: str = "configs/demo/ppo.yaml"
    dpo_overrides: dict[str, Any] = field(default_factory=dict)
    ppo_overrides: dict[str, Any] = field(default_factory=dict)
    pubmedqa_limit: int = 50
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
        if cfg.policy_stage not in ("dpo", "ppo"):
            raise InputError(f"policy_stage must be dpo or ppo, got {cfg.policy_stage!r}", path=path)
        return cfg
