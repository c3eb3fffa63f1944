"""Small pieces every training recipe shares: YAML + overrides parsing, threads, metrics, manifests."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from clinalign_base.errors import ClinalignError, InputError
from clinalign_base.mapping_files import read_yaml_mapping


def overrides_to_args(overrides: dict[str, Any] | None) -> list[str]:
    args: list[str] = []
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            args += [f"--{key}", *map(str, value)]
        else:
            args += [f"--{key}", str(value)]
    return args


def parse_recipe_config(dataclass_types: tuple, config_path: str | None, overrides: dict[str, Any] | None,
                        extra_args: list[str] | None = None) -> tuple:
    """Parse a TRL-native YAML into the recipe's dataclasses (TrlParser), overrides applied after."""
    from trl import TrlParser

    args: list[str] = []
    if config_path:
        read_yaml_mapping(config_path, expected="config must be a YAML mapping of argument names to values")
        args += ["--config", str(config_path)]
    args += overrides_to_args(overrides) + list(extra_args or [])
    try:
        return TrlParser(dataclass_types).parse_args_and_config(args=args)
    except SystemExit as exc:  # argparse exits on unknown / ill-typed arguments
        raise ClinalignError(f"bad arguments for {config_path or 'recipe'}: {args}") from exc
    except ValueError as exc:
        raise ClinalignError(f"{config_path}: {exc}") from None


def set_threads(n: int | None) -> None:
    import torch

    n = n or int(os.environ.get("OMP_NUM_THREADS", 0) or 0) or None
    if n:
        torch.set_num_threads(n)


def last_metrics(log_history: list[dict[str, Any]]) -> dict[str, float]:
    """The final training metrics TRL logged, plus the train summary."""
    out: dict[str, float] = {}
    for entry in log_history:
        for key, value in entry.items():
            if isinstance(value, (int, float)):
                out[key] = float(value)
    return out


def model_ref(spec: str, resolved: str) -> dict[str, str]:
    """A base model is identified by spec, path and its config's hash (weights may be 140 GB)."""
    from clinalign_base.manifest import file_sha256

    cfg = Path(resolved) / "config.json"
    return {"role": "base_model", "path": resolved, "spec": spec,
            "sha256": file_sha256(cfg) if cfg.is_file() else ""}


def keep_bf16_where_it_pays(training_args) -> None:
    """bf16 autocast on a CPU only where it has AMX / AVX512-BF16 (there ~1.5x fp32); elsewhere fp32."""
    import torch

    from align.models import cpu_has_bf16

    if getattr(training_args, "bf16", False) and not torch.cuda.is_available() and not cpu_has_bf16():
        print("clinalign: this CPU has no AMX / AVX512-BF16: training in float32 instead of bf16")
        training_args.bf16 = False


def key_value_args(extra: list[str], *, typed: bool = False) -> dict[str, Any]:
    """Trailing `--key value` pairs (the override syntax of every recipe, as TRL's parser reads them).

    typed: values read as YAML scalars (`--seed 3` → 3) for configs that are not parsed by TrlParser.
    """
    out: dict[str, Any] = {}
    i = 0
    while i < len(extra):
        key = extra[i]
        if not key.startswith("--") or len(key) < 3:
            raise InputError(f"unexpected argument {key!r} (overrides are --key value)")
        if i + 1 >= len(extra) or extra[i + 1].startswith("--"):
            raise InputError(f"override {key} has no value")
        value = extra[i + 1]
        out[key[2:].replace("-", "_")] = yaml.safe_load(value) if typed and value.strip() else value
        i += 2
    return out

