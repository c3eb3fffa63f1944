"""Sampling answers from a policy: several samples per prompt, with provenance and end-of-turn flags.

One `Generator` loads a model once (a LoRA adapter is merged into a private copy, so generation runs
at the base model's speed), sorts prompts by length so batches carry little padding, and samples
`n` answers per prompt in one `generate` call (`num_return_sequences`). Each answer records whether
it ended with the end-of-turn token (`finished`) and how many tokens it used, so a judge can tell a
complete answer from one cut at `max_new_tokens`. On CPUs with AMX / AVX-512 BF16 the model runs in
bfloat16 (about 1.5x the fp32 tokens/s here); elsewhere in float32 (`dtype` overrides).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch

from align.models import chat_prompt, load_causal_lm, load_tokenizer, preferred_dtype
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

    def load(self) -> Generator:
        self._tok = load_tokenizer(self.setting.model, padding_side="left")
        dtype = preferred_dtype() if self.setting.dtype == "auto" else self.setting.dtype
        model = load_causal_lm(self.setting.model, dtype=dtype)
        if self.setting.adapter:
            from peft import PeftModel

            # merged: the adapter's extra matmuls would cost ~30% of the tokens/s at this size
            model = PeftModel.from_pretrained(model, self.setting.adapter).merge_and_unload()
        if torch.cuda.is_available():
            model = model.to("cuda")
        self._model = model.eval()
        return self

    def share_weights(self, other: Generator) -> Generator:
        """Same model and adapter, another sampling setting: reuse the loaded weights."""
        self._model, self._tok = other._model, other._tok
        return self

    def _eos_ids(self) -> set[int]:
        ids = self._model.generation_config.eos_token_id
        ids = set(ids if isinstance(ids, list) else [ids]) if ids is not None else set()
        return ids | ({self._tok.eos_token_id} if self._tok.eos_token_id is not None else set())

    @torch.no_grad()
    def sample(self, prompts: Sequence[str], n: int = 1,
               on_batch: Callable[[int], None] | None = None) -> list[list[Sample]]:
        """`n` answers for every prompt: out[i][j] is sample j of prompt i."""
        if self._model is None:
            self.load()
        s, tok = self.setting, self._tok
        chats = [chat_prompt(tok, p) for p in prompts]
        order = sorted(range(len(chats)), key=lambda i: len(tok(chats[i], add_special_tokens=False)["input_ids"]))
        per_call = max(1, self.batch_size // n)
        out: list[list[Sample]] = [[] for _ in prompts]
        eos = self._eos_ids()
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
    gen_a = Generator(side_a, batch_size=batch_size)
    responses_a = gen_a.sample(texts, 1, progress)
    same = (side_b.model, side_b.adapter, side_b.dtype) == (side_a.model, side_a.adapter, side_a.dtype)
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
