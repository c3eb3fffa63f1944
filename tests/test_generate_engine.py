"""The llama.cpp generation backend against the transformers one: same model, same distribution.

Engine tests skip only where llama-cpp-python is not installed (`bash scripts/setup-llamacpp.sh .venv`);
the backend parsing and the fallback to transformers run everywhere.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from align.engines import parse_backend, resolve_backend
from align.generate import Generator, SamplingSetting
from align.models import SMOLLM2, TINY_LLAMA, chat_prompt, load_causal_lm, load_tokenizer
from clinalign_base.errors import ClinalignError, InputError
from tests.generation_support import hf_greedy

HAVE_LLAMACPP = importlib.util.find_spec("llama_cpp") is not None
needs_llamacpp = pytest.mark.skipif(not HAVE_LLAMACPP, reason="llama-cpp-python is not installed "
                                    "(bash scripts/setup-llamacpp.sh .venv)")
PROMPTS = ["What is hypertension? Answer in one sentence.", "Name one symptom of anemia.",
           "Is aspirin an antiplatelet drug? Answer yes or no."]


def test_backend_specs_are_validated():
    assert parse_backend("transformers").label == "transformers"
    assert parse_backend("llamacpp").label == "llamacpp:bf16"
    assert parse_backend("llamacpp:f32").label == "llamacpp:f32"
    for bad in ("vllm-ish", "llamacpp:q2", "transformers:bf16"):
        with pytest.raises(ClinalignError):
            parse_backend(bad)


def test_round_config_rejects_an_unknown_backend():
    from align.round_config import RoundConfig

    assert RoundConfig.load(None, {"generation_backend": "transformers"}).generation_backend == "transformers"
    with pytest.raises(InputError, match="generation backend"):
        RoundConfig.load(None, {"generation_backend": "llama"})


def test_falls_back_to_transformers_when_llamacpp_is_missing(monkeypatch, capsys):
    import align.engines as engines

    monkeypatch.setattr(engines, "llamacpp_installed", lambda: False)
    chosen = resolve_backend("llamacpp")
    assert chosen.name == "transformers" and "setup-llamacpp.sh" in chosen.note
    setting = SamplingSetting(TINY_LLAMA, 0.0, max_new_tokens=4, backend="llamacpp")
    gen = Generator(setting, batch_size=4).load()
    assert gen._engine is None and gen._model is not None
    assert setting.backend == "transformers"  # provenance records what ran
    [[sample]] = gen.sample(["Hello?"], 1)
    assert sample.n_tokens == 4 or sample.finished
    assert "setup-llamacpp.sh" in capsys.readouterr().err


def test_missing_module_error_names_the_install_step(monkeypatch):
    import sys

    from align.engines.llamacpp import llama_cpp_module

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import fails as when not installed
    monkeypatch.setitem(sys.modules, "llama_cpp.llama_cpp", None)
    with pytest.raises(ClinalignError, match="setup-llamacpp.sh"):
        llama_cpp_module()


@pytest.mark.parametrize("scale,top_p", [(1.0, 0.9), (8.0, 0.95), (0.05, 0.95), (1.0, 1.0)])
def test_numpy_sampler_draws_transformers_distribution(scale, top_p):
    """Temperature then top-p, as transformers' warpers: the draw over a grid of uniforms hits each token
    with the probability transformers gives it (peaked, flat and no-nucleus cases)."""
    import numpy as np
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    from align.engines.llamacpp import sample_rows

    logits = torch.randn(1, 64, generator=torch.Generator().manual_seed(1)) * scale
    warped = TemperatureLogitsWarper(0.7)(None, logits.clone())
    if top_p < 1.0:
        warped = TopPLogitsWarper(top_p)(None, warped)
    want = torch.softmax(warped, -1)[0].double().numpy()
    n = 20000
    grid = (np.arange(n) + 0.5) / n
    row = logits.numpy().astype(np.float32)
    draws = sample_rows(np.repeat(row, n, axis=0), 0.7, top_p, grid)
    got = np.bincount(draws, minlength=64) / n
    assert set(np.flatnonzero(got)) == set(np.flatnonzero(want > 0))  # the same nucleus
    assert abs(got - want).max() < 2.0 / n + 1e-6
    assert sample_rows(row, 0.0, top_p, [0.3]) == [int(row.argmax())]  # temperature 0: greedy


def _engine_ids(spec: str, prompts: list[str], n: int, *, temperature: float, max_new_tokens: int,
                weights: str = "f32", seed: int = 0, batch_size: int = 8, adapter: str | None = None):
    """Token ids (not text) per prompt and sample from the llama.cpp backend, and the Samples."""
    setting = SamplingSetting(spec, temperature, 0.95, max_new_tokens=max_new_tokens, seed=seed, adapter=adapter,
                              backend=f"llamacpp:{weights}")
    gen = Generator(setting, batch_size=batch_size).load()
    assert setting.backend == f"llamacpp:{weights}"
    captured: dict[tuple[int, int], list[int]] = {}
    engine = gen._engine
    original = engine.generate

    def spy(jobs, **kw):
        done = kw.pop("on_done")
        return original(jobs, on_done=lambda j, ids, fin: (captured.__setitem__((j.prompt_index, j.sample_index), ids),
                                                           done(j, ids, fin)), **kw)

    engine.generate = spy
    samples = gen.sample(prompts, n)
    engine.close()
    ids = [[captured[(i, j)] for j in range(n)] for i in range(len(prompts))]
    return ids, samples


@needs_llamacpp
def test_per_token_logprobs_match_transformers_tiny_model():
    from align.engines.gguf_export import gguf_for
    from align.engines.llamacpp import LlamaCppClient

    tok = load_tokenizer(TINY_LLAMA)
    ids = tok(chat_prompt(tok, PROMPTS[0]), add_special_tokens=False)["input_ids"]
    ids += torch.randint(0, len(tok), (16,), generator=torch.Generator().manual_seed(0)).tolist()
    client = LlamaCppClient(str(gguf_for(TINY_LLAMA, None, "f32")), n_seq=1)
    try:
        got = client.logprobs(ids)
    finally:
        client.close()
    model = load_causal_lm(TINY_LLAMA, dtype="float32").eval()
    with torch.no_grad():
        want = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1).numpy()
    # f32 weights; llama.cpp keeps its KV cache in f16, hence not bit-equal (measured max 5e-4)
    assert got.shape == want.shape
    assert abs(got - want).max() < 5e-3


@needs_llamacpp
def test_greedy_answers_equal_transformers_on_smollm2():
    want = hf_greedy(SMOLLM2, PROMPTS, 32)  # two answers end (26, 29 tokens), one is cut
    # two samples per prompt: the second one decodes from the prompt's KV copied into its own stream
    got, samples = _engine_ids(SMOLLM2, PROMPTS, 2, temperature=0.0, max_new_tokens=32, weights="f32")
    assert [g[0] for g in got] == want and [g[1] for g in got] == want
    tok = load_tokenizer(SMOLLM2)
    for ids, [s, s2] in zip(want, samples, strict=True):  # same Sample fields as the transformers path
        assert s == s2
        end = ids.index(tok.eos_token_id) if tok.eos_token_id in ids else None
        assert s.finished == (end is not None)
        assert s.n_tokens == (len(ids) if end is None else end + 1)
        assert s.text == tok.decode(ids[:end], skip_special_tokens=True).strip()
    assert any(g[0].finished for g in samples) and any(not g[0].finished for g in samples)


@needs_llamacpp
def test_seeded_sampling_is_deterministic_and_independent_of_batching():
    kw = dict(temperature=1.0, max_new_tokens=12, weights="f32")
    a, _ = _engine_ids(TINY_LLAMA, PROMPTS, 3, seed=7, batch_size=8, **kw)
    b, _ = _engine_ids(TINY_LLAMA, PROMPTS, 3, seed=7, batch_size=8, **kw)
    assert a == b
    # one seed per (prompt index, sample index): a different batch size draws the same answers
    c, _ = _engine_ids(TINY_LLAMA, PROMPTS, 3, seed=7, batch_size=2, **kw)
    assert c == a
    d, _ = _engine_ids(TINY_LLAMA, PROMPTS, 3, seed=8, batch_size=8, **kw)
    assert d != a
    assert len({tuple(x) for g in a for x in g}) > 1  # the samples of one prompt differ


@needs_llamacpp
def test_lora_policy_is_merged_into_the_engine_model(tmp_path):
    from peft import LoraConfig, get_peft_model

    from align.engines.gguf_export import gguf_for

    model = load_causal_lm(TINY_LLAMA, dtype="float32")
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"],
                                                  init_lora_weights=False))  # random B: the adapter changes outputs
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    want = hf_greedy(TINY_LLAMA, PROMPTS, 12, adapter=str(adapter))
    base = hf_greedy(TINY_LLAMA, PROMPTS, 12)
    assert want != base, "the random adapter should change greedy outputs"
    got, _ = _engine_ids(TINY_LLAMA, PROMPTS, 1, temperature=0.0, max_new_tokens=12, adapter=str(adapter))
    assert [g[0] for g in got] == want
    # cached by content: the same adapter reuses its file; other adapter weights get another one
    first = gguf_for(TINY_LLAMA, str(adapter), "f32")
    assert gguf_for(TINY_LLAMA, str(adapter), "f32") == first
    peft_model2 = get_peft_model(load_causal_lm(TINY_LLAMA, dtype="float32"),
                                 LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
    peft_model2.save_pretrained(tmp_path / "other")
    assert gguf_for(TINY_LLAMA, str(tmp_path / "other"), "f32") != first
