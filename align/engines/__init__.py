"""Generation backends for `align.generate.Generator`: transformers (always there), llama.cpp, vLLM.

`generation_backend` names one of:
  transformers             `model.generate` in torch (bf16 on AMX/AVX512-BF16 CPUs, CUDA when present)
  llamacpp[:WEIGHTS]       llama.cpp through llama-cpp-python, the policy (adapter merged) converted to a
                           cached GGUF; WEIGHTS = bf16 (default) | f16 | f32 | q8_0
  vllm                     vLLM's OpenAI-compatible server from its own venv (scripts/setup-vllm.sh), the
                           base model plus the policy's LoRA adapter; the default on GPU clusters

llama.cpp and vLLM are optional (set-up compiles the one and installs the other in its own venv).
Where the chosen one is not installed, where the model cannot be converted, or where llama.cpp is asked
for on a CUDA machine (the wheel clinalign builds is CPU-only), `resolve_backend` falls back (llamacpp on
GPU: vllm when installed) and says why once.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from clinalign_base.errors import ClinalignError

BACKENDS = ("transformers", "llamacpp", "vllm")
DEFAULT_GGUF_WEIGHTS = "bf16"
BACKEND_HELP = ("generation backend: transformers | llamacpp[:bf16|f16|f32|q8_0] (llama.cpp, ~3x the "
                "tokens/s on 2 CPU cores) | vllm (vLLM server in its own venv, scripts/setup-vllm.sh; the GPU "
                "default); a missing engine falls back to transformers with a message")


@dataclass(frozen=True)
class Backend:
    name: str  # transformers | llamacpp | vllm
    weights: str | None = None  # llamacpp: the GGUF weight type
    note: str | None = None  # why a requested backend was replaced

    @property
    def label(self) -> str:
        return f"{self.name}:{self.weights}" if self.weights else self.name


def parse_backend(spec: str) -> Backend:
    """Validate a backend spec (`transformers`, `llamacpp`, `llamacpp:f32`, ...) without importing anything."""
    from align.engines.gguf_export import WEIGHT_TYPES

    name, _, weights = (spec or "transformers").strip().partition(":")
    if name not in BACKENDS:
        raise ClinalignError(f"unknown generation backend {spec!r}; known: transformers, llamacpp[:weights], vllm")
    if name in ("transformers", "vllm"):
        if weights:
            raise ClinalignError(f"backend {name} takes no weight type (got {spec!r}); use generation_dtype")
        return Backend(name)
    weights = weights or DEFAULT_GGUF_WEIGHTS
    if weights not in WEIGHT_TYPES:
        raise ClinalignError(f"unknown GGUF weight type {weights!r} in {spec!r}; known: {', '.join(WEIGHT_TYPES)}")
    return Backend("llamacpp", weights)


def llamacpp_installed() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def vllm_installed() -> bool:
    from align.engines.vllm_server import vllm_python

    return vllm_python() is not None


def resolve_backend(spec: str) -> Backend:
    """The backend that will actually run: the requested one, or another with a `note` saying why."""
    want = parse_backend(spec)
    if want.name == "transformers":
        return want
    if want.name == "vllm":
        if vllm_installed():
            return want
        from align.engines.vllm_server import INSTALL_HINT

        return Backend("transformers", note=f"generation falls back to transformers: {INSTALL_HINT}")
    import torch

    if torch.cuda.is_available():  # llama.cpp asked for on a GPU machine: the GPU engine instead
        if vllm_installed():
            return Backend("vllm", note="generation uses vLLM on the CUDA GPU (clinalign's llama.cpp build is CPU-only)")
        return Backend("transformers", note="generation uses transformers on the CUDA GPU (clinalign's llama.cpp "
                                            "build is CPU-only; for vLLM run scripts/setup-vllm.sh)")
    if not llamacpp_installed():
        from align.engines.llamacpp import INSTALL_HINT

        return Backend("transformers", note=f"generation falls back to transformers: {INSTALL_HINT}")
    return want
