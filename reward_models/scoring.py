"""Batched reward scoring of (prompt, response) pairs with the reward model's own tokenizer.

The policy's tokenizer may differ from the reward model's, so scoring always goes through text.
PPO, GRPO/RLOO, evaluation and `clinalign reward score` all call `RewardScorer.score`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


class RewardScorer:
    """Scores texts with a sequence-classification reward model (num_labels=1)."""

    def __init__(self, model_path: str, *, device: str | torch.device = "cpu", max_length: int = 512,
                 batch_size: int = 16):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from align.models import resolve_model  # lazy: reward_models must not import align at module level

        path = resolve_model(model_path) if model_path.startswith("builtin:") else model_path
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1).to(device).eval()
        self.device = torch.device(device)
        self.max_length = max_length
        self.batch_size = batch_size

    def format(self, prompt: str, response: str) -> tuple[str, str]:
        """Text pair the reward model reads: prompt and response as the tokenizer's two segments."""
        return prompt, response

    @torch.no_grad()
    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        out: list[float] = []
        for start in range(0, len(prompts), self.batch_size):
            p = list(prompts[start:start + self.batch_size])
            r = list(responses[start:start + self.batch_size])
            enc = self.tokenizer(p, r, truncation="only_first" if self._fits_response(r) else True,
                                 max_length=self.max_length, padding=True, return_tensors="pt").to(self.device)
            logits = self.model(**enc).logits[:, 0].float()
            out.extend(logits.tolist())
        bad = [i for i, v in enumerate(out) if not math.isfinite(v)]
        if bad:
            raise ValueError(f"reward model returned non-finite scores for items {bad[:10]}")
        return out

    def _fits_response(self, responses: list[str]) -> bool:
        # Truncate the prompt (its start) first, the response only when it alone is too long.
        longest = max(len(self.tokenizer(x, add_special_tokens=False)["input_ids"]) for x in responses)
        return longest < self.max_length - 8
