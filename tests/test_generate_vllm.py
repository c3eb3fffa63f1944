"""The vLLM generation backend (a real vLLM server from its own venv) against the transformers one.

The engine tests share one server (SmolLM2, float32, `--enforce-eager` so it starts in about a minute)
and skip only where `scripts/setup-vllm.sh` has not made the vLLM venv (`make setup` does); the
fallback and the spec parsing run everywhere.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
import torch

from align.engines import parse_backend, resolve_backend, vllm_server
from align.engines.vllm_server import VllmServer, shared_server, stop_servers, vllm_python
from align.generate import Generator, SamplingSetting
from align.models import SMOLLM2, load_causal_lm, load_tokenizer, resolve_model
from clinalign_base.errors import ClinalignError
from tests.generation_support import hf_greedy

needs_vllm = pytest.mark.skipif(vllm_python() is None, reason="vLLM venv missing (bash scripts/setup-vllm.sh)")
PROMPTS = ["What is hypertension? Answer in one sentence.", "Name one symptom of anemia.",
           "Is aspirin an antiplatelet drug? Answer yes or no."]


@pytest.fixture(scope="module")
def eager(request):
    mp = pytest.MonkeyPatch()
    mp.setenv("CLINALIGN_VLLM_EAGER", "1")
    yield
    stop_servers()
    mp.undo()


def _setting(**kw) -> SamplingSetting:
    base = dict(model=SMOLLM2, temperature=0.0, max_new_tokens=32, dtype="float32", backend="vllm")
    return SamplingSetting(**(base | kw))


def test_vllm_spec_parses_and_takes_no_weight_type():
    assert parse_backend("vllm").label == "vllm"
    with pytest.raises(ClinalignError, match="no weight type"):
        parse_backend("vllm:bf16")


def test_falls_back_to_transformers_when_vllm_is_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("CLINALIGN_VLLM_VENV", str(tmp_path / "none"))
    chosen = resolve_backend("vllm")
    assert chosen.name == "transformers" and "setup-vllm.sh" in chosen.note
    with pytest.raises(ClinalignError, match="setup-vllm.sh"):
        VllmServer(resolve_model(SMOLLM2), dtype="float32")


@needs_vllm
def test_greedy_answers_equal_transformers_on_smollm2(eager):
    want_ids = hf_greedy(SMOLLM2, PROMPTS, 32)
    setting = _setting()
    samples = Generator(setting, batch_size=8).sample(PROMPTS, 2)
    assert setting.backend == "vllm"  # provenance: what ran
    want = Generator(_setting(backend="transformers"), batch_size=8).sample(PROMPTS, 1)
    tok = load_tokenizer(SMOLLM2)
    for ids, [s, s2], [w] in zip(want_ids, samples, want, strict=True):
        assert s == s2 == w  # text, finished flag and token count, sample for sample
        end = ids.index(tok.eos_token_id) if tok.eos_token_id in ids else None
        assert s.n_tokens == (len(ids) if end is None else end + 1)
    assert any(g[0].finished for g in samples) and any(not g[0].finished for g in samples)


@needs_vllm
def test_seeded_sampling_is_deterministic_and_independent_of_batching(eager):
    draw = dict(temperature=1.0, max_new_tokens=12, seed=7)
    a = Generator(_setting(**draw), batch_size=8).sample(PROMPTS, 3)
    assert Generator(_setting(**draw), batch_size=8).sample(PROMPTS, 3) == a
    # one seed per (prompt index, sample index): one request in flight draws the same answers
    assert Generator(_setting(**draw), batch_size=1).sample(PROMPTS, 3) == a
    assert Generator(_setting(**(draw | {"seed": 8})), batch_size=8).sample(PROMPTS, 3) != a
    assert len({s.text for g in a for s in g}) > 1  # the samples of one prompt differ


@needs_vllm
def test_lora_adapter_is_served_beside_the_base(eager, tmp_path):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)  # the random adapter, and so the answers it changes, are the same every run
    model = load_causal_lm(SMOLLM2, dtype="float32")
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"],
                                                  init_lora_weights=False))
    with torch.no_grad():  # a moderate random change: the answers move but stay words
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.mul_(0.3)
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    want = Generator(_setting(adapter=str(adapter), backend="transformers"), batch_size=8).sample(PROMPTS, 1)
    base = Generator(_setting(backend="transformers"), batch_size=8).sample(PROMPTS, 1)
    assert want != base, "the random adapter should change greedy outputs"
    stop_servers()  # from here on, as in a round's evaluation: the policy side starts the server
    got = Generator(_setting(adapter=str(adapter)), batch_size=8).sample(PROMPTS, 1)
    assert got == want
    # one server for both sides: the LoRA server also answers as the base model for a side without it
    [server] = vllm_server._SERVERS.values()
    assert server.lora and list(server._adapters) == [str(adapter.resolve())]
    assert Generator(_setting(), batch_size=8).sample(PROMPTS, 1) == base
    assert list(vllm_server._SERVERS.values()) == [server]


def test_a_side_without_adapter_never_gets_lora_switched_on(monkeypatch):
    started = []

    class Recorder:
        def __init__(self, model, *, dtype, lora):
            started.append(lora)
            self.lora = lora

        def alive(self):
            return True

    monkeypatch.setattr(vllm_server, "VllmServer", Recorder)
    monkeypatch.setattr(vllm_server, "_SERVERS", {})
    base = shared_server("/m", "bfloat16")
    assert started == [False] and shared_server("/m", "bfloat16") is base
    with_lora = shared_server("/m", "bfloat16", lora=True)  # an adapter needs a LoRA server
    assert started == [False, True] and with_lora is not base
    assert shared_server("/m", "bfloat16") is base  # the faster one (compiled, no LoRA) for the base side


@needs_vllm
def test_server_refuses_requests_without_its_key_and_listens_on_loopback_only(eager):
    server = shared_server(resolve_model(SMOLLM2), "float32")
    req = urllib.request.Request(f"http://127.0.0.1:{server.port}/v1/completions",
                                 data=json.dumps({"model": "base", "prompt": "hi", "max_tokens": 2}).encode(),
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    assert err.value.code == 401
    cmd = open(f"/proc/{server._proc.pid}/cmdline", "rb").read().split(b"\0")
    assert cmd[cmd.index(b"--host") + 1] == b"127.0.0.1"
    assert server._key.encode() not in b" ".join(cmd)  # /proc/PID/cmdline is world-readable


@needs_vllm
def test_stop_servers_ends_the_process(eager):
    server = shared_server(resolve_model(SMOLLM2), "float32")
    assert server.alive()
    stop_servers()
    assert not server.alive()
    assert not vllm_server._SERVERS  # the next request starts a new one


@needs_vllm
def test_a_server_that_cannot_start_names_the_model_and_shows_its_log(eager, tmp_path):
    bad = tmp_path / "not-a-model"
    bad.mkdir()
    (bad / "config.json").write_text("{}")
    with pytest.raises(ClinalignError, match="exited") as err:
        VllmServer(str(bad), dtype="float32", start_timeout=600)
    assert str(bad) in str(err.value)


@pytest.mark.gpu
@needs_vllm
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_the_default_backend_is_vllm_and_answers_like_transformers(eager):
    chosen = resolve_backend("llamacpp")  # the round's default spec
    assert chosen.name == "vllm", chosen.note
    setting = _setting(backend="llamacpp")
    samples = Generator(setting, batch_size=8).sample(PROMPTS, 1)
    assert setting.backend == "vllm"
    want = Generator(_setting(backend="transformers"), batch_size=8).sample(PROMPTS, 1)
    # float32 on both sides; GPU kernels may break a near-tie differently, so compare the first answer
    # and the bookkeeping of all of them
    assert samples[0] == want[0]
    assert all(s.finished or s.n_tokens == 32 for [s] in samples)
