"""The base model's held-out answers, kept on disk by the contents of its weights.

Every round compares its policy with the same base on its held-out prompts, with the same seeds: the base
side (and the A/A control drawn from it) is the same text every time, so it is sampled once and reused,
like the base's PubMedQA result. The key hashes the weight files, the backend, every sampling setting and
the prompts, so any change samples afresh; a policy (adapter) is never cached. Both samplers draw each
(prompt, sample) from its own seed, so a cached answer is the answer the base would give again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from align.generate import Sample, SamplingSetting

CACHE_VERSION = "base-samples-v1"


def cache_key(setting: SamplingSetting, prompts: Sequence[str], n: int) -> str | None:
    """None when the setting has an adapter or the model is not a local folder."""
    from align.evaluation.pubmedqa import model_fingerprint
    from align.models import resolve_model

    folder = Path(resolve_model(setting.model))
    if setting.adapter or not folder.is_dir():
        return None
    parts = {"version": CACHE_VERSION, "model": model_fingerprint(folder), "n": n,
             "setting": {k: v for k, v in asdict(setting).items() if k not in ("model", "adapter")},
             "prompts": hashlib.sha256("\0".join(prompts).encode()).hexdigest()}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def cached_samples(setting: SamplingSetting, prompts: Sequence[str], n: int,
                   sample: Callable[[], list[list[Sample]]], *, cache_dir: Path | None = None,
                   on_hit: Callable[[int], None] | None = None) -> tuple[list[list[Sample]], bool]:
    """(samples, cached): the stored answers for this exact setting, or `sample()`'s, then stored."""
    from align.evaluation.pubmedqa import results_cache_dir
    from clinalign_base.atomic import write_json_atomic

    key = cache_key(setting, prompts, n)
    path = (cache_dir or results_cache_dir().parent / "base_samples") / f"{key}.json"
    if key and path.is_file():
        stored = _read(path, len(prompts), n)
        if stored is not None:
            if on_hit:
                on_hit(len(prompts) * n)
            return stored, True
    fresh = sample()
    if key:
        write_json_atomic(path, {"key": key, "samples": [[asdict(s) for s in g] for g in fresh]})
    return fresh, False


def _read(path: Path, n_prompts: int, n: int) -> list[list[Sample]] | None:
    """A stored file that does not parse or has another shape is ignored (and overwritten)."""
    try:
        data: Any = json.loads(path.read_text())
        groups = [[Sample(**s) for s in g] for g in data["samples"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if len(groups) != n_prompts or any(len(g) != n for g in groups):
        return None
    return groups
