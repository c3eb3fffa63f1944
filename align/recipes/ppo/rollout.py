"""Rollouts: sample responses from the policy, then score them through text with the reward model.

The reward model's tokenizer may differ from the policy's, so responses are decoded to text and the
reward model re-tokenizes (prompt, response) itself (`reward_models.scoring.RewardScorer`).
A plain Python callable `(prompts, responses) -> list[float]` can stand in for the reward model.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from clinalign_base.errors import ClinalignError

RewardFn = Callable[[Sequence[str], Sequence[str]], Sequence[float]]


class RewardSource:
    """One interface over a reward model (RewardScorer) or a reward function; NaN is an error."""

    def __init__(self, scorer=None, fn: RewardFn | None = None, name: str = "reward"):
        if (scorer is None) == (fn is None):
            raise ValueError("give exactly one of scorer / fn")
        self.scorer, self.fn, self.name = scorer, fn, name

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        try:
            out = self.scorer.score(prompts, responses) if self.scorer is not None else self.fn(prompts, responses)
        except ValueError as exc:
            raise ClinalignError(f"reward '{self.name}' failed: {exc}") from None
        out = [float(x) for x in out]
        if len(out) != len(prompts):
            raise ClinalignError(f"reward '{self.name}' returned {len(out)} scores for {len(prompts)} responses")
        bad = [i for i, v in enumerate(out) if not math.isfinite(v)]
        if bad:
            raise ClinalignError(f"reward '{self.name}' returned non-finite scores (NaN/inf) for items {bad[:10]}")
        return out


def import_callable(spec: str, what: str = "reward_function") -> RewardFn:
    """'package.module:function' -> the function; `what` names the config field in errors."""
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ClinalignError(f"{what} must look like 'package.module:function', got '{spec}'")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ClinalignError(f"cannot import {what} '{spec}': {exc}") from None


def make_reward_source(args, reward_fn: RewardFn | None = None, device: str | torch.device = "cpu") -> RewardSource:
    if reward_fn is not None:
        return RewardSource(fn=reward_fn, name=getattr(reward_fn, "__name__", "reward_fn"))
    if args.reward_function:
        return RewardSource(fn=import_callable(args.reward_function), name=args.reward_function)
    if args.reward_model_path:
        from reward_models.scoring import RewardScorer

        path = Path(args.reward_model_path).expanduser()
        if not args.reward_model_path.startswith("builtin:") and not path.exists():
            raise ClinalignError(
                f"reward model folder '{path}' not found: train one first (e.g. `clinalign reward train "
                f"--config configs/demo/reward.yaml`), or for a smoke run pass --reward_model_path "
                f"builtin:minilm-l6 --allow_untrained_reward true")
        scorer = RewardScorer(args.reward_model_path, device=device, max_length=args.reward_max_length,
                              batch_size=getattr(args, "local_rollout_forward_batch_size", 16),
                              allow_untrained=args.allow_untrained_reward)
        return RewardSource(scorer=scorer, name=args.reward_model_path)
    raise ClinalignError("no reward: set reward_model_path (or reward_function, or pass reward_fn)")


def preflight_reward(reward: RewardSource, prompts: Sequence[str]) -> None:
    """Score a few prompts with a stock answer before training: a NaN-producing RM fails here, not mid-run."""
    sample = list(prompts[:4])
    reward(sample, ["I am not sure; please consult a clinician."] * len(sample))


@dataclass
class RolloutBatch:
    query: torch.Tensor             # (B, P) left-padded prompt ids
    query_mask: torch.Tensor        # (B, P)
    response: torch.Tensor          # (B, R) sampled ids, pad after the first EOS
    response_mask: torch.Tensor     # (B, R) 1 up to and including the first EOS
    prompts: list[str]
    responses: list[str]
    scores: torch.Tensor            # (B,) reward model score after penalties
    raw_scores: torch.Tensor        # (B,) before penalties
    has_eos: torch.Tensor           # (B,) bool

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.query, self.response], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.query_mask, self.response_mask], dim=1)


def truncate_after_eos(response: torch.Tensor, eos_ids: set[int], pad_id: int):
    """Mask = tokens up to and including the first EOS; later tokens become padding."""
    is_eos = torch.zeros_like(response, dtype=torch.bool)
    for e in eos_ids:
        is_eos |= response == e
    has_eos = is_eos.any(dim=1)
    first = torch.where(has_eos, is_eos.float().argmax(dim=1), torch.full_like(has_eos, response.shape[1], dtype=torch.long))
    positions = torch.arange(response.shape[1]).unsqueeze(0)
    mask = (positions <= first.unsqueeze(1)).long()
    return response.masked_fill(mask == 0, pad_id), mask, has_eos


@torch.no_grad()
def generate(policy, query: torch.Tensor, query_mask: torch.Tensor, args, tokenizer, eos_ids: set[int],
             greedy: bool = False):
    """Sampled responses (PPO's rollouts), or greedy ones (temperature 0: the guard's held-out judge)."""
    sampling = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=args.temperature,
                                                         top_p=args.top_p, top_k=0)
    out = policy.generate(input_ids=query, attention_mask=query_mask, max_new_tokens=args.response_length,
                          pad_token_id=tokenizer.pad_token_id, eos_token_id=sorted(eos_ids),
                          use_cache=True, **sampling)
    response = out[:, query.shape[1]:]
    if response.shape[1] < args.response_length:  # all sequences stopped early: pad to a fixed width
        pad = torch.full((response.shape[0], args.response_length - response.shape[1]), tokenizer.pad_token_id,
                         dtype=response.dtype, device=response.device)
        response = torch.cat([response, pad], dim=1)
    return truncate_after_eos(response.cpu(), eos_ids, tokenizer.pad_token_id)


def apply_penalties(raw: torch.Tensor, has_eos: torch.Tensor, lengths: torch.Tensor, args) -> torch.Tensor:
    """Scores PPO optimises: the reward minus missing_eos_penalty (no EOS) and length_penalty."""
    scores = raw.clone()
    if args.missing_eos_penalty is not None:
        scores = scores - args.missing_eos_penalty * (~has_eos).float()
    if args.length_penalty:
        scores = scores - args.length_penalty * lengths.float() / args.response_length
    return scores


def decode_responses(tokenizer, response: torch.Tensor, mask: torch.Tensor) -> list[str]:
    return [tokenizer.decode(r[m.bool()], skip_special_tokens=True).strip() for r, m in zip(response, mask, strict=True)]
