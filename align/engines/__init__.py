"""Generation backends for `align.generate.Generator`: transformers (always there) and llama.cpp.

`generation_backend` names one of:
  transformers             `model.generate` in torch (bf16 on AMX/AVX512-BF16 CPUs, CUDA when present)
  llamacpp[:WEIGHTS]       llama.cpp through llama-cpp-python, the policy (adapter merged) converted to a
                           cached GGUF; WEIGHTS = bf16 (default) | f16 | f32 | q8_0

The llama.cpp engine is optional (it compiles at set-up). Where it is not installed, where the model
cannot be converted, or where a CUDA GPU is present (the wheel clinalign builds is CPU-only),
`resolve_backend` falls back to transformers and says why once.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from clinalign_base.errors import ClinalignError

BACKENDS = ("transformers", "llamacpp")
DEFAULT_GGUF_WEIGHTS = "bf16"
BACKEND_HELP = ("generation backend: transformers | llamacpp[:bf16|f16|f32|q8_0] (llama.cpp, ~3x the "
                "tokens/s on 2 CPU cores; falls back to transformers with a message when llama-cpp-python is not "
                "installed or a CUDA GPU is present)")


@dataclass(frozen=True)
class Backend:
    name: str  # transformers | llamacpp
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
        raise ClinalignError(f"unknown generation backend {spec!r}; known: transformers, llamacpp[:weights]")
    if name == "transformers":
        if weights:
            raise ClinalignError(f"backend transformers takes no weight type (got {spec!r}); use generation_dtype")
        return Backend("transformers")
    weights = weights or DEFAULT_GGUF_WEIGHTS
    if weights not in WEIGHT_TYPES:
        raise ClinalignError(f"unknown GGUF weight type {weights!r} in {spec!r}; known: {', '.join(WEIGHT_TYPES)}")
    return Backend("llamacpp", weights)


def llamacpp_installed() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def resolve_backend(spec: str) -> Backend:
    """The backend that will actually run: the requested one, or transformers with a `note` saying why."""
    want = parse_backend(spec)
    if want.name == "transformers":
        return want
    from align.engines.llamacpp import INSTALL_HINT

    if not llamacpp_installed():
        return Backend("transformers", note=f"generation falls back to transformers: {INSTALL_HINT}")
    import torch

    if torch.cuda.is_available():
        return Backend("transformers", note="generation uses transformers on the CUDA GPU (clinalign's llama.cpp "
                                            "build is CPU-only; on GPU clusters use vLLM)")
    return want
