"""Candidate pairs: two responses per prompt (two models, or one model with two sampling settings)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch

from align.models import chat_prompt, load_causal_lm, load_tokenizer
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

    @property
    def label(self) -> str:
        name = self.model + (f"+{self.adapter}" if self.adapter else "")
        return f"{name}@T{self.temperature:g}"


@dataclass
class Generator:
    """Batched chat generation with one loaded model; deterministic for a given seed."""

    setting: SamplingSetting
    batch_size: int = 8
    _model: object = field(default=None, init=False, repr=False)
    _tok: object = field(default=None, init=False, repr=False)

    def load(self) -> Generator:
        self._tok = load_tokenizer(self.setting.model, padding_side="left")
        model = load_causal_lm(self.setting.model)
        if self.setting.adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, self.setting.adapter)
        self._model = model.eval()
        return self

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], on_batch: Callable[[int], None] | None = None) -> list[str]:
        if self._model is None:
            self.load()
        s, tok, out = self.setting, self._tok, []
        for start in range(0, len(prompts), self.batch_size):
            batch = [chat_prompt(tok, p) for p in prompts[start:start + self.batch_size]]
            enc = tok(batch, return_tensors="pt", padding=True, add_special_tokens=False)
            torch.manual_seed(s.seed + start)
            gen = self._model.generate(
                **enc, max_new_tokens=s.max_new_tokens, do_sample=s.temperature > 0,
                temperature=s.temperature if s.temperature > 0 else None, top_p=s.top_p if s.temperature > 0 else None,
                pad_token_id=tok.pad_token_id)
            new = gen[:, enc["input_ids"].shape[1]:]
            out.extend(t.strip() for t in tok.batch_decode(new, skip_special_tokens=True))
            if on_batch:
                on_batch(len(batch))
        return out


@dataclass
class PairStats:
    made: int = 0
    skipped_identical: int = 0
    skipped_empty: int = 0


def make_pairs(prompts: Sequence[Prompt], side_a: SamplingSetting, side_b: SamplingSetting, *,
               batch_size: int = 8, source: str = "generated", progress: Callable[[int], None] | None = None,
               ) -> tuple[list[CandidatePair], PairStats]:
    """Generate both sides for every prompt; pairs whose responses are empty or identical are skipped."""
    texts = [p.text for p in prompts]
    gen_a = Generator(side_a, batch_size=batch_size)
    responses_a = gen_a.generate(texts, progress)
    if side_b.model == side_a.model and side_b.adapter == side_a.adapter:
        gen_b = Generator(side_b, batch_size=batch_size)
        gen_b._model, gen_b._tok = gen_a._model, gen_a._tok  # same weights: load once
    else:
        gen_b = Generator(side_b, batch_size=batch_size)
    responses_b = gen_b.generate(texts, progress)
    pairs, stats = [], PairStats()
    params = {"a": asdict(side_a), "b": asdict(side_b)}
    for prompt, ra, rb in zip(prompts, responses_a, responses_b, strict=True):
        if not ra.strip() or not rb.strip():
            stats.skipped_empty += 1
            continue
        if ra.strip() == rb.strip():
            stats.skipped_identical += 1
            continue
        pairs.append(CandidatePair(prompt=prompt.text, response_a=ra, response_b=rb, model_a=side_a.label,
                                   model_b=side_b.label, generation=params, prompt_id=prompt.id,
                                   reference=prompt.reference, source=source))
        stats.made += 1
    return pairs, stats
