"""The base model's held-out answers are reused only for the exact same weights, setting and prompts."""

from __future__ import annotations

from dataclasses import replace

from align.evaluation.base_samples import cache_key, cached_samples
from align.generate import Sample, SamplingSetting

BASE = SamplingSetting("builtin:smollm2-135m-instruct", temperature=0.7, max_new_tokens=16, seed=1000,
                       backend="llamacpp:bf16")
PROMPTS = ["What is gout?", "How is asthma treated?"]


def _sampler(calls: list[int], tag: str):
    def sample():
        calls.append(1)
        return [[Sample(f"{tag} {p} {j}", j == 0, 3 + j) for j in range(2)] for p in PROMPTS]
    return sample


def test_second_call_reuses_the_stored_answers(tmp_path):
    calls: list[int] = []
    first, cached1 = cached_samples(BASE, PROMPTS, 2, _sampler(calls, "a"), cache_dir=tmp_path)
    again, cached2 = cached_samples(BASE, PROMPTS, 2, _sampler(calls, "b"), cache_dir=tmp_path)
    assert (cached1, cached2, len(calls)) == (False, True, 1)
    assert again == first and again[1][0] == Sample("a How is asthma treated? 0", True, 3)


def test_any_change_samples_afresh(tmp_path):
    calls: list[int] = []
    cached_samples(BASE, PROMPTS, 2, _sampler(calls, "a"), cache_dir=tmp_path)
    for setting, prompts in ((replace(BASE, seed=1001), PROMPTS), (replace(BASE, temperature=0.8), PROMPTS),
                             (replace(BASE, backend="transformers"), PROMPTS), (BASE, PROMPTS[::-1])):
        assert cache_key(setting, prompts, 2) != cache_key(BASE, PROMPTS, 2)
    _, cached = cached_samples(replace(BASE, seed=1001), PROMPTS, 2, _sampler(calls, "b"), cache_dir=tmp_path)
    assert not cached and len(calls) == 2


def test_a_policy_with_an_adapter_is_never_cached(tmp_path):
    calls: list[int] = []
    policy = replace(BASE, adapter=str(tmp_path / "adapter"))
    assert cache_key(policy, PROMPTS, 2) is None
    for _ in range(2):
        _, cached = cached_samples(policy, PROMPTS, 2, _sampler(calls, "p"), cache_dir=tmp_path)
        assert not cached
    assert len(calls) == 2 and not list(tmp_path.glob("*.json"))


def test_a_damaged_file_is_resampled(tmp_path):
    calls: list[int] = []
    cached_samples(BASE, PROMPTS, 2, _sampler(calls, "a"), cache_dir=tmp_path)
    (stored,) = tmp_path.glob("*.json")
    stored.write_text('{"samples": [[{"text": "cut')
    result, cached = cached_samples(BASE, PROMPTS, 2, _sampler(calls, "b"), cache_dir=tmp_path)
    assert not cached and result[0][0].text.startswith("b ") and len(calls) == 2
