"""Sampling answers from a policy: several samples per prompt, with provenance and end-of-turn flags.

One `Generator` loads a model once (a LoRA adapter is merged into a private copy, so generation runs
at the base model's speed), sorts prompts by length so batches carry little padding, and samples
`n` answers per prompt in one `generate` call (`num_return_sequences`). Each answer records whether
it ended with the end-of-turn token (`finished`) and how many tokens it used, so a judge can tell a
complete answer from one cut at `max_new_tokens`. On CPUs with AMX / AVX-512 BF16 the model runs in
bfloat16 (about 1.5x the fp32 tokens/s here); elsewhere in float32 (`dtype` overrides).

`SamplingSetting.backend` picks the engine (`align/engines`): `transformers` (above), `llamacpp`
(llama.cpp, the adapter-merged policy as a cached GGUF, continuous batching over `batch_size` slots)
or `vllm` (a vLLM server from its own venv, the adapter served as LoRA, `batch_size` requests in
flight). Every way prompts are tokenized and answers decoded by the same Hugging Face tokenizer and
turned into the same `Sample`s. Seeds: transformers seeds each `generate` call with `seed + offset`
(deterministic for a given seed and batch size); llama.cpp and vLLM give every (prompt index, sample
index) its own seeded sampler (deterministic for a given seed, whatever the batch). After `load`, `setting.backend` names
the backend that ran (a fallback to transformers rewrites it), so provenance records the truth.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch

from align.engines import parse_backend, resolve_backend
from align.models import (
    chat_prompt,
    eos_token_ids,
    generation_eos,
    load_causal_lm,
    load_tokenizer,
    preferred_dtype,
    resolve_model,
)
from align.prompts import Prompt
from annotation.records import CandidatePair


@dataclass
class SamplingSetting:
    """How one side of a pair is produced; recorded as the pair's provenance."""

    model: str
    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens: int = 128
    seed: int = 0
    adapter: str | None = None
    dtype: str = "auto"
    backend: str = "transformers"  # transformers | llamacpp[:bf16|f16|f32|q8_0] | vllm (see align/engines)

    @property
    def label(self) -> str:
        name = self.model + (f"+{self.adapter}" if self.adapter else "")
        return f"{name}@T{self.temperature:g}"


@dataclass(frozen=True)
class Sample:
    text: str
    finished: bool  # ended with the end-of-turn token (not cut at max_new_tokens)
    n_tokens: int


@dataclass
class Generator:
    """Batched chat sampling with one loaded model; deterministic for a given seed and batch size."""

    setting: SamplingSetting
    batch_size: int = 64  # sequences per generate call (prompts x samples)
    _model: object = field(default=None, init=False, repr=False)
    _tok: object = field(default=None, init=False, repr=False)
    _engine: object = field(default=None, init=False, repr=False)
    _eos: set = field(default_factory=set, init=False, repr=False)

    def load(self) -> Generator:
        from align.engines.gguf_export import UnsupportedModel

        self._tok = load_tokenizer(self.setting.model, padding_side="left")
        backend = resolve_backend(self.setting.backend)
        if backend.name == "llamacpp":
            try:
                return self._load_llamacpp(backend.weights)
            except UnsupportedModel as exc:
                backend = type(backend)("transformers", note=f"generation falls back to transformers: {exc}")
        if backend.note:
            from align.progress import console

            console.print(f"note: {backend.note}", style="yellow")
        if backend.name == "vllm":
            return self._load_vllm()
        self.setting.backend = backend.label
        dtype = preferred_dtype() if self.setting.dtype == "auto" else self.setting.dtype
        model = load_causal_lm(self.setting.model, dtype=dtype)
        if self.setting.adapter:
            from peft import PeftModel

            # merged: the adapter's extra matmuls would cost ~30% of the tokens/s at this size
            model = PeftModel.from_pretrained(model, self.setting.adapter).merge_and_unload()
        if torch.cuda.is_available():
            model = model.to("cuda")
        self._model = model.eval()
        self._eos = eos_token_ids(self._tok, model.generation_config.eos_token_id)
        return self

    def _load_llamacpp(self, weights: str) -> Generator:
        from align.engines.gguf_export import gguf_for
        from align.engines.llamacpp import LlamaCppClient

        path = gguf_for(self.setting.model, self.setting.adapter, weights)
        self._engine = LlamaCppClient(str(path), n_seq=max(1, self.batch_size))
        self._eos = eos_token_ids(self._tok, generation_eos(self.setting.model))
        self.setting.backend = f"llamacpp:{weights}"
        return self

    def _load_vllm(self) -> Generator:
        from align.engines.vllm_server import VllmClient

        dtype = preferred_dtype() if self.setting.dtype == "auto" else self.setting.dtype
        self._engine = VllmClient(resolve_model(self.setting.model), self.setting.adapter, dtype=dtype,
                                  n_seq=self.batch_size)
        self._eos = eos_token_ids(self._tok, generation_eos(self.setting.model))
        self.setting.backend = "vllm"
        return self

    @property
    def backend(self) -> str:
        """The backend that runs (after `load`): transformers | llamacpp:<weights> | vllm."""
        return self.setting.backend

    def share_weights(self, other: Generator) -> Generator:
        """Same model and adapter, another sampling setting: reuse the loaded weights (and engine)."""
        self._model, self._tok, self._engine, self._eos = other._model, other._tok, other._engine, other._eos
        self.setting.backend = other.setting.backend
        return self

    @torch.no_grad()
    def sample(self, prompts: Sequence[str], n: int = 1,
               on_batch: Callable[[int], None] | None = None) -> list[list[Sample]]:
        """`n` answers for every prompt: out[i][j] is sample j of prompt i."""
        if self._model is None and self._engine is None:
            self.load()
        if self._engine is not None:
            return self._sample_engine(prompts, n, on_batch)
        s, tok = self.setting, self._tok
        chats = [chat_prompt(tok, p) for p in prompts]
        order = sorted(range(len(chats)), key=lambda i: len(tok(chats[i], add_special_tokens=False)["input_ids"]))
        per_call = max(1, self.batch_size // n)
        out: list[list[Sample]] = [[] for _ in prompts]
        eos = self._eos
        device = next(self._model.parameters()).device
        for start in range(0, len(order), per_call):
            idx = order[start:start + per_call]
            enc = tok([chats[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            torch.manual_seed(s.seed + start)
            gen = self._model.generate(
                **enc, max_new_tokens=s.max_new_tokens, do_sample=s.temperature > 0, num_return_sequences=n,
                temperature=s.temperature if s.temperature > 0 else None, top_p=s.top_p if s.temperature > 0 else None,
                top_k=None, pad_token_id=tok.pad_token_id)
            new = gen[:, enc["input_ids"].shape[1]:].tolist()
            for row, ids in enumerate(new):
                out[idx[row // n]].append(_to_sample(tok, ids, eos))
            if on_batch:
                on_batch(len(idx) * n)
        return out

    def _sample_engine(self, prompts: Sequence[str], n: int,
                       on_batch: Callable[[int], None] | None) -> list[list[Sample]]:
        """llama.cpp or vLLM: token ids in and out, one seeded draw per (prompt, sample)."""
        from align.engines.llamacpp import Job, sample_seed

        s, tok = self.setting, self._tok
        ids = [tok(chat_prompt(tok, p), add_special_tokens=False)["input_ids"] for p in prompts]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        jobs = [Job(i, j, ids[i], sample_seed(s.seed, i, j)) for i in order for j in range(n)]
        out: list[list[Sample | None]] = [[None] * n for _ in prompts]

        def done(job: Job, new: list[int], _finished: bool) -> None:
            out[job.prompt_index][job.sample_index] = _to_sample(tok, new, self._eos)
            if on_batch:
                on_batch(1)

        self._engine.generate(jobs, temperature=s.temperature, top_p=s.top_p, max_new_tokens=s.max_new_tokens,
                              eos=self._eos, on_done=done)
        return out  # type: ignore[return-value]

    def generate(self, prompts: Sequence[str], on_batch: Callable[[int], None] | None = None) -> list[str]:
        """One answer per prompt (texts only)."""
        return [samples[0].text for samples in self.sample(prompts, 1, on_batch)]


def _to_sample(tok, ids: list[int], eos: set[int]) -> Sample:
    end = next((k for k, t in enumerate(ids) if t in eos), None)
    kept = ids if end is None else ids[:end]
    return Sample(tok.decode(kept, skip_special_tokens=True).strip(), end is not None, len(kept) + (end is not None))


@dataclass
class PairStats:
    made: int = 0
    skipped_identical: int = 0
    skipped_empty: int = 0
    skipped_small_gap: int = 0


def make_pairs(prompts: Sequence[Prompt], side_a: SamplingSetting, side_b: SamplingSetting, *,
               batch_size: int = 64, source: str = "generated", progress: Callable[[int], None] | None = None,
               ) -> tuple[list[CandidatePair], PairStats]:
    """Generate both sides for every prompt; pairs whose responses are empty or identical are skipped."""
    texts = [p.text for p in prompts]
    same = ((side_b.model, side_b.adapter, side_b.dtype, parse_backend(side_b.backend))
            == (side_a.model, side_a.adapter, side_a.dtype, parse_backend(side_a.backend)))
    gen_a = Generator(side_a, batch_size=batch_size)
    responses_a = gen_a.sample(texts, 1, progress)
    gen_b = Generator(side_b, batch_size=batch_size)
    if same:
        gen_b.share_weights(gen_a)  # same weights: load once
    responses_b = gen_b.sample(texts, 1, progress)
    pairs, stats = [], PairStats()
    params = {"a": asdict(side_a), "b": asdict(side_b)}
    for prompt, [ra], [rb] in zip(prompts, responses_a, responses_b, strict=True):
        pair = _pair(prompt, ra, rb, side_a.label, side_b.label, params, source, stats)
        if pair:
            pairs.append(pair)
    return pairs, stats


def _pair(prompt: Prompt, ra: Sample, rb: Sample, label_a: str, label_b: str, params: dict, source: str,
          stats: PairStats) -> CandidatePair | None:
    if not ra.text or not rb.text:
        stats.skipped_empty += 1
        return None
    if ra.text == rb.text:
        stats.skipped_identical += 1
        return None
    stats.made += 1
    gen = params | {"finished": {"a": ra.finished, "b": rb.finished},
                    "n_tokens": {"a": ra.n_tokens, "b": rb.n_tokens}}
    return CandidatePair(prompt=prompt.text, response_a=ra.text, response_b=rb.text, model_a=label_a,
                         model_b=label_b, generation=gen, prompt_id=prompt.id, reference=prompt.reference,
                         source=source)


def pairs_from_samples(prompts: Sequence[Prompt], samples: Sequence[Sequence[Sample]], setting: SamplingSetting, *,
                       score: Callable[[Prompt, Sample], float] | None = None, min_gap: float = 0.0,
                       source: str = "generated", seed: int = 0) -> tuple[list[CandidatePair], PairStats]:
    """One pair per prompt from its on-policy samples.

    With `score` (the demo's simulated clinician): the best and the worst sample, kept only if their
    scores differ by at least `min_gap`. Without it (pairs for real clinicians): two distinct samples
    chosen by a seeded draw. Either way the sides are shuffled (seeded), so position carries no signal.
    """
    rng = random.Random(seed)
    pairs, stats = [], PairStats()
    label = setting.label
    for i, (prompt, group) in enumerate(zip(prompts, samples, strict=True)):
        usable = [s for s in group if s.text]
        distinct = list({s.text: s for s in usable}.values())
        if len(distinct) < 2:
            stats.skipped_empty += len(usable) < 2
            stats.skipped_identical += len(usable) >= 2
            continue
        if score is not None:
            ranked = sorted(distinct, key=lambda s: score(prompt, s))
            a, b = ranked[-1], ranked[0]
            if score(prompt, a) - score(prompt, b) < min_gap:
                stats.skipped_small_gap += 1
                continue
        else:
            a, b = rng.sample(distinct, 2)
        if rng.random() < 0.5:
            a, b = b, a
        params = {"a": asdict(setting), "b": asdict(setting), "samples_per_prompt": len(group), "prompt_index": i}
        pair = _pair(prompt, a, b, label, label, params, source, stats)
        if pair:
            pairs.append(pair)
    return pairs, stats
