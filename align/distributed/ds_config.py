"""Check DeepSpeed JSON configs the way a launch on the cluster would see them, before the launch.

The shipped JSONs leave batch sizes, learning rate, precision and bucket sizes as "auto", which the
Hugging Face Trainer (and so TRL) fills from the stage YAML at start-up. Here the same filling is done
by the same code (`transformers.integrations.deepspeed.HfTrainerDeepSpeedConfig`) with the YAML's
values at the *target* world size, then the result goes through `deepspeed.runtime.config.
DeepSpeedConfig`, DeepSpeed's own parser and sanity checks. Batch arithmetic
(train_batch_size = micro × grad_accum × world) is checked first so a mistake reads as one line.

A stage YAML's target world size comes from its first line, the command that runs it
(`clinalign launch ... --nodes N --gpus-per-node G`), so the config and its header cannot disagree.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from clinalign_base.errors import ClinalignError, InputError
from clinalign_base.mapping_files import read_json_object, read_yaml_mapping

REPO_ROOT = Path(__file__).resolve().parents[2]
DS_CONFIG_DIR = REPO_ROOT / "configs" / "deepspeed"
MODEL_CONFIG_DIRS = ("me-llama-13b", "me-llama-70b")
STANDALONE_WORLD_SIZES = (1, 8, 64)
# Training arguments the HF integration reads when it fills "auto" values.
HF_KEYS = ("per_device_train_batch_size", "gradient_accumulation_steps", "max_grad_norm", "learning_rate",
           "adam_beta1", "adam_beta2", "adam_epsilon", "weight_decay", "fp16", "fp16_full_eval", "bf16",
           "bf16_full_eval", "save_on_each_node", "warmup_steps")


def shipped_ds_configs() -> list[Path]:
    return sorted(DS_CONFIG_DIR.glob("*.json"))


def shipped_stage_configs() -> list[Path]:
    """The per-model stage YAMLs that name a DeepSpeed config."""
    out = []
    for name in MODEL_CONFIG_DIRS:
        for path in sorted((REPO_ROOT / "configs" / name).glob("*.yaml")):
            if "deepspeed" in (yaml.safe_load(path.read_text()) or {}):
                out.append(path)
    return out


def load_ds_json(path: str | Path) -> dict[str, Any]:
    return read_json_object(path, what="DeepSpeed config", expected="a DeepSpeed config must be a JSON object")


def load_stage_yaml(path: str | Path) -> dict[str, Any]:
    return read_yaml_mapping(path, expected="a stage config must be a YAML mapping")


def header_command(path: str | Path) -> list[str]:
    """The command on a config's first line (`# <command>`), split like a shell would."""
    first = Path(path).read_text().splitlines()[:1]
    if not first or not first[0].startswith("#"):
        raise InputError("first line must be a comment with the command that runs this file", path=str(path),
                         line=1)
    return shlex.split(first[0].lstrip("#").strip())


def target_world_size(path: str | Path) -> tuple[int, int]:
    """(nodes, GPUs per node) from the `clinalign launch` command heading a stage YAML."""
    argv = header_command(path)
    found: dict[str, int] = {}
    for flag in ("--nodes", "--gpus-per-node"):
        if flag in argv and argv.index(flag) + 1 < len(argv) and argv[argv.index(flag) + 1].isdigit():
            found[flag] = int(argv[argv.index(flag) + 1])
    if len(found) != 2:
        raise InputError("the header command must be `clinalign launch ... --nodes N --gpus-per-node G`",
                         path=str(path), line=1)
    return found["--nodes"], found["--gpus-per-node"]


def _stage_of(path: str | Path) -> str:
    argv = header_command(path)
    if "--stage" in argv:
        return argv[argv.index("--stage") + 1]
    return Path(path).stem


def _config_class(stage: str):
    """The stage's TrainingArguments class; `reward_medical` reads as `reward`; unknown: TrainingArguments."""
    from align import stage_registry

    known = stage_registry.for_config(stage)
    if known is not None:
        return known.training_arguments_class()
    from transformers import TrainingArguments

    return TrainingArguments


def training_values(stage: str, stage_yaml: dict[str, Any] | None = None) -> dict[str, Any]:
    """The training arguments the HF integration reads: the stage config class's defaults + the YAML."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(_config_class(stage)):
        if f.name in HF_KEYS:
            values[f.name] = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    values.update({k: v for k, v in (stage_yaml or {}).items() if k in HF_KEYS})
    return values


@dataclass
class _TrainerArgs:
    """The slice of TrainingArguments `HfTrainerDeepSpeedConfig` reads, at a world size we choose."""

    world_size: int
    values: dict[str, Any]

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None

    def get_warmup_steps(self, num_training_steps: int) -> int:
        w = self.values.get("warmup_steps") or 0  # TrainingArguments: >= 1 steps, < 1 a ratio
        return int(w) if w >= 1 else math.ceil(num_training_steps * w)


def check_batch_arithmetic(micro: int, accum: int, world: int, train_batch_size: int | None = None,
                           *, source: str = "") -> int:
    """train_batch_size = micro × grad_accum × world; returns it or raises a one-line ClinalignError."""
    where = f"{source}: " if source else ""
    for name, value in (("per_device_train_batch_size (train_micro_batch_size_per_gpu)", micro),
                        ("gradient_accumulation_steps", accum), ("world size", world)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ClinalignError(f"{where}{name} must be a positive integer, got {value!r}")
    expected = micro * accum * world
    if train_batch_size is not None and train_batch_size != expected:
        raise ClinalignError(
            f"{where}train_batch_size {train_batch_size} != micro-batch {micro} × gradient_accumulation_steps "
            f"{accum} × world size {world} = {expected}; set train_batch_size to \"auto\" or to {expected}")
    return expected


def _explicit_int(ds: dict[str, Any], key: str) -> int | None:
    value = ds.get(key)
    return None if value in (None, "auto") else value


def fill_auto(ds: dict[str, Any], values: dict[str, Any], *, world_size: int, hidden_size: int,
              num_training_steps: int = 1000, source: str = "") -> dict[str, Any]:
    """Replace "auto" exactly as the HF Trainer would at `world_size`; mismatches become errors."""
    import transformers.integrations.deepspeed as hf_ds
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    micro, accum = values["per_device_train_batch_size"], values["gradient_accumulation_steps"]
    for key, yaml_value in (("train_micro_batch_size_per_gpu", micro), ("gradient_accumulation_steps", accum)):
        explicit = _explicit_int(ds, key)
        if explicit is not None and explicit != yaml_value:
            raise ClinalignError(f"{source}: DeepSpeed {key}={explicit} but the stage config says {yaml_value}; "
                                 f"set it to \"auto\" in the JSON")
    check_batch_arithmetic(micro, accum, world_size, _explicit_int(ds, "train_batch_size"), source=source)
    args = _TrainerArgs(world_size, values)
    saved = hf_ds._hf_deepspeed_config_weak_ref  # the HF config is a process-wide weakref: restore it
    try:
        hf = HfTrainerDeepSpeedConfig(copy.deepcopy(ds))
        hf.trainer_config_process(args)
        model = type("M", (), {"config": type("C", (), {"hidden_size": hidden_size})()})()
        hf.trainer_config_finalize(args, model, num_training_steps)
    except ValueError as exc:
        raise ClinalignError(f"{source}: {exc}") from None
    finally:
        hf_ds._hf_deepspeed_config_weak_ref = saved
    left = [k for k, v in _walk(hf.config) if v == "auto"]
    if left:
        raise ClinalignError(f"{source}: no value for \"auto\" key(s) {', '.join(left)}")
    return hf.config


def _walk(d: dict[str, Any], prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _walk(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def deepspeed_config(filled: dict[str, Any], world_size: int, *, source: str = ""):
    """Run DeepSpeed's own parser + checks on a filled config as if `world_size` ranks had started."""
    from deepspeed.runtime.config import DeepSpeedConfig

    class AtWorldSize(DeepSpeedConfig):
        # DeepSpeedConfig takes the world size from the live process group (1 without one); set the
        # target before it derives and checks the batch sizes from it.
        def _initialize_params(self, param_dict):
            self.world_size = world_size
            super()._initialize_params(param_dict)

    try:
        cfg = AtWorldSize(copy.deepcopy(filled))
    except (AssertionError, ValueError, TypeError) as exc:
        raise ClinalignError(f"{source}: DeepSpeed rejects the config at world size {world_size}: {exc}") from None
    if cfg.world_size != world_size:  # guards the override above against a DeepSpeed upgrade
        raise ClinalignError(f"{source}: DeepSpeedConfig used world size {cfg.world_size}, not {world_size}")
    return cfg


def hidden_size_for(model_path: str | None, config_path: str | Path) -> int:
    """From the model's config.json when it is here; else from the Me LLaMA name in the paths."""
    from align.distributed.plan import KNOWN_MODELS

    if model_path and (Path(model_path).expanduser() / "config.json").is_file():
        return int(json.loads((Path(model_path).expanduser() / "config.json").read_text())["hidden_size"])
    for name, arch in KNOWN_MODELS.items():
        if name in str(config_path) or (model_path and name in model_path.lower()):
            return arch.hidden
    if model_path and model_path.startswith("builtin:"):
        from align.models import resolve_model

        return hidden_size_for(resolve_model(model_path), config_path)
    raise ClinalignError(f"{config_path}: cannot tell the model's hidden size (model '{model_path}' is not "
                         f"a local folder and not a known Me LLaMA model)")


@dataclass
class Validated:
    ds_path: Path
    stage_path: Path | None
    world_size: int
    train_batch_size: int
    zero_stage: int
    config: Any  # DeepSpeedConfig


def validate_stage(stage_path: str | Path, *, nodes: int | None = None, gpus_per_node: int | None = None,
                   overrides: dict[str, Any] | None = None) -> Validated:
    """A stage YAML + the DeepSpeed JSON it names, at its header's world size (or the one given)."""
    stage_path = Path(stage_path)
    data = load_stage_yaml(stage_path) | (overrides or {})
    if "deepspeed" not in data:
        raise InputError("no `deepspeed:` key (the JSON config to run under)", path=str(stage_path))
    if nodes is None or gpus_per_node is None:
        nodes, gpus_per_node = target_world_size(stage_path)
    ds_path = Path(data["deepspeed"])
    ds_path = ds_path if ds_path.is_absolute() else REPO_ROOT / ds_path
    world = nodes * gpus_per_node
    values = training_values(_stage_of(stage_path), data)
    source = f"{stage_path} + {ds_path.name} at world size {world}"
    filled = fill_auto(load_ds_json(ds_path), values, world_size=world, source=source,
                       hidden_size=hidden_size_for(data.get("model_name_or_path"), stage_path))
    cfg = deepspeed_config(filled, world, source=source)
    return Validated(ds_path, stage_path, world, cfg.train_batch_size, cfg.zero_optimization_stage, cfg)


def validate_json(ds_path: str | Path, world_size: int, *, stage: str = "dpo", hidden_size: int = 5120,
                  values: dict[str, Any] | None = None) -> Validated:
    """A DeepSpeed JSON alone, with the stage config class's defaults standing in for a YAML."""
    ds_path = Path(ds_path)
    vals = training_values(stage) | (values or {})
    source = f"{ds_path} at world size {world_size}"
    filled = fill_auto(load_ds_json(ds_path), vals, world_size=world_size, hidden_size=hidden_size, source=source)
    cfg = deepspeed_config(filled, world_size, source=source)
    return Validated(ds_path, None, world_size, cfg.train_batch_size, cfg.zero_optimization_stage, cfg)


def validate_all() -> list[Validated]:
    """Every shipped DS JSON at 1/8/64 ranks, and every per-model stage YAML at its target world size."""
    out = [validate_json(p, w) for p in shipped_ds_configs() for w in STANDALONE_WORLD_SIZES]
    out += [validate_stage(p) for p in shipped_stage_configs()]
    return out


def describe(v: Validated) -> str:
    name = v.stage_path.relative_to(REPO_ROOT) if v.stage_path else v.ds_path.relative_to(REPO_ROOT)
    return re.sub(r"\s+", " ", f"{name} ({v.ds_path.name}) world={v.world_size} ZeRO-{v.zero_stage} "
                              f"train_batch_size={v.train_batch_size}")
