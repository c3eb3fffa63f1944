"""Batched reward scoring of (prompt, response) pairs with the reward model's own tokenizer.

The policy's tokenizer may differ from the reward model's, so scoring always goes through text.
PPO, GRPO/RLOO, evaluation and `clinalign reward score` all call `RewardScorer.score`. The text is
built and cut by `reward_models.formatting.encode`, the same function that tokenized the training
pairs, with the format saved beside the model: a score here is what the model was trained to give.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from reward_models.formatting import Encoded, RewardFormat, encode, prepare_tokenizer


def pad_right(batch: list[list[int]], pad_id: int, device) -> dict[str, torch.Tensor]:
    """Right padding, as TRL's DataCollatorForPreference does during training."""
    width = max(len(x) for x in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, x in enumerate(batch):
        ids[i, :len(x)] = torch.tensor(x, dtype=torch.long)
        mask[i, :len(x)] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


@torch.no_grad()
def score_ids(model, ids: Sequence[list[int]], pad_id: int, *, batch_size: int = 16, device="cpu",
              progress: Callable[[int], None] | None = None,
              collect: Callable[[list[int], dict], None] | None = None) -> list[float]:
    """Rewards for already-encoded sequences; longest-first batches waste the least padding.

    `collect(indices, inputs)` runs after each batch's forward pass (the rating heads read the
    features the forward pass left behind).
    """
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    out = [0.0] * len(ids)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            inputs = pad_right([ids[i] for i in idx], pad_id, device)
            logits = model(**inputs).logits[:, 0].float()
            if collect is not None:
                collect(idx, inputs)
            for i, v in zip(idx, logits.tolist(), strict=True):
                out[i] = v
            if progress is not None:
                progress(len(idx))
    finally:
        model.train(was_training)
    bad = [i for i, v in enumerate(out) if not math.isfinite(v)]
    if bad:
        raise ValueError(f"reward model returned non-finite scores for items {bad[:10]} (of {len(bad)})")
    return out


def _pooled_position(inputs: dict, pad_id: int | None) -> torch.Tensor:
    """The position a transformers *ForSequenceClassification decoder reads: its last token that is not
    the pad id (so an eos that doubles as pad is skipped, as in training), else the last real one."""
    ids = inputs["input_ids"]
    if pad_id is None:
        return inputs["attention_mask"].sum(1) - 1
    positions = torch.arange(ids.shape[1], device=ids.device)
    return (positions * (ids != pad_id)).argmax(-1)


class RewardScorer:
    """Scores texts with a sequence-classification reward model (num_labels=1)."""

    def __init__(self, model_path: str, *, device: str | torch.device = "cpu", max_length: int | None = None,
                 batch_size: int = 16, allow_untrained: bool = False, model=None, tokenizer=None,
                 fmt: RewardFormat | None = None, combine: bool = True):
        """Load `model_path` (a folder `clinalign reward train` wrote, or a builtin backbone with
        `allow_untrained=True`); `model`/`tokenizer`/`fmt` may be passed in-memory instead.
        A multi-objective model's `score` returns the combined scalar (`combine=False`: the plain
        preference reward); `score_detailed` returns every part."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from reward_models.backbones import check_reward_model, resolve_backbone

        self.device = torch.device(device)
        from_disk = model is None
        path = resolve_backbone(model_path) if from_disk else model_path
        if model is None and not allow_untrained:
            check_reward_model(path)
        self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(path)
        saved = fmt or RewardFormat.load(path)
        if saved is None:  # an untrained backbone: the training defaults, up to its position limit
            limit = min(512, getattr(self.tokenizer, "model_max_length", 512) or 512)
            saved = RewardFormat(max_length=limit)
        if max_length is not None:
            saved = RewardFormat(**{**saved.__dict__, "max_length": max_length})
        self.fmt = saved
        prepare_tokenizer(self.tokenizer, self.fmt)
        if model is None and (Path(path) / "adapter_config.json").is_file():
            # a LoRA reward model saved unmerged (merge_lora: false): base + adapter + saved head
            from peft import AutoPeftModelForSequenceClassification

            model = AutoPeftModelForSequenceClassification.from_pretrained(path, num_labels=1)
        elif model is None:
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
        self.model = model.to(self.device).eval()
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.heads = None  # (RatingHead, MultiObjectiveSpec) for a clinical multi-objective model
        if from_disk and (Path(path) / "multi_objective.json").is_file():
            from reward_models.multi_objective import load_head

            self.heads = load_head(path, self.model)
        self.combine = combine
        self.batch_size = batch_size
        self.max_length = self.fmt.max_length
        self.n_cut = 0  # responses cut on the right in the last score() call (too long to fit)

    def encode(self, prompt: str, response: str) -> Encoded:
        return encode(self.tokenizer, prompt, response, self.fmt)

    def score(self, prompts: Sequence[str], responses: Sequence[str], *,
              progress: Callable[[int], None] | None = None) -> list[float]:
        """One reward per (prompt, response); `progress(n)` is called after each batch of n."""
        if self.heads is not None and self.combine:
            return [d["combined"] for d in self.score_detailed(prompts, responses, progress=progress)]
        return self._score(prompts, responses, progress=progress)

    def score_detailed(self, prompts: Sequence[str], responses: Sequence[str], *,
                       progress: Callable[[int], None] | None = None) -> list[dict]:
        """{"reward", "ratings" {attribute: 1-5}, "combined"} per item (multi-objective models)."""
        from reward_models.multi_objective import combine, from_target

        if self.heads is None:
            return [{"reward": r, "ratings": {}, "combined": r}
                    for r in self._score(prompts, responses, progress=progress)]
        head, spec = self.heads
        ratings: list[dict] = [{} for _ in prompts]

        def collect(idx: list[int], inputs: dict) -> None:
            pred = head.predict(inputs["attention_mask"]).float().tolist()
            for i, row in zip(idx, pred, strict=True):
                ratings[i] = {a: from_target(v) for a, v in zip(spec.attributes, row, strict=True)}

        rewards = self._score(prompts, responses, progress=progress, collect=collect)
        return [{"reward": r, "ratings": g, "combined": combine(r, g, spec)}
                for r, g in zip(rewards, ratings, strict=True)]

    def features(self, prompts: Sequence[str], responses: Sequence[str]) -> list[list[float]]:
        """Per (prompt, response), the representation the reward is read from: the input of the
        sequence classifier's head (`score` / `classifier`, at the last real token for decoders), or a
        bi-encoder's question x answer product (its cosine's terms). Active selection weighs pairs by
        how typical the difference of their two answers' features is."""
        model = self.model
        rows: list[list[float] | None] = [None] * len(prompts)
        encoded = [self.encode(p, r).input_ids for p, r in zip(prompts, responses, strict=True)]
        if hasattr(model, "pair_features"):
            for start in range(0, len(encoded), self.batch_size):
                idx = list(range(start, min(start + self.batch_size, len(encoded))))
                inputs = pad_right([encoded[i] for i in idx], self.tokenizer.pad_token_id, self.device)
                with torch.no_grad():
                    out = model.pair_features(**inputs).float().tolist()
                for i, v in zip(idx, out, strict=True):
                    rows[i] = v
            return rows  # type: ignore[return-value]
        head = getattr(model, "score", None) or getattr(model, "classifier", None)
        if not isinstance(head, torch.nn.Module):
            raise ValueError(f"{type(model).__name__} has no score/classifier head to read features from")
        seen: dict[str, torch.Tensor] = {}
        hook = head.register_forward_pre_hook(lambda _m, args: seen.__setitem__("x", args[0]))

        def collect(idx: list[int], inputs: dict) -> None:
            x = seen["x"].float()
            if x.dim() == 3:  # a decoder's head runs on every position: keep the one it pools
                x = x[torch.arange(len(idx), device=x.device), _pooled_position(inputs, model.config.pad_token_id)]
            for i, v in zip(idx, x.tolist(), strict=True):
                rows[i] = v

        try:
            score_ids(model, encoded, self.tokenizer.pad_token_id, batch_size=self.batch_size, device=self.device,
                      collect=collect)
        finally:
            hook.remove()
        return rows  # type: ignore[return-value]

    def _score(self, prompts, responses, *, progress=None, collect=None) -> list[float]:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        encoded = [self.encode(p, r) for p, r in zip(prompts, responses, strict=True)]
        self.n_cut = sum(e.response_cut for e in encoded)
        return score_ids(self.model, [e.input_ids for e in encoded], self.tokenizer.pad_token_id,
                         batch_size=self.batch_size, device=self.device, progress=progress, collect=collect)


# -- one entry point for a model or an ensemble -----------------------------------------------------
ENSEMBLE_MANIFEST = "ensemble.json"  # written by `clinalign reward train --members k`


@runtime_checkable
class Scorer(Protocol):
    """What PPO, evaluation and `reward score` use: RewardScorer and EnsembleScorer both are one."""

    fmt: RewardFormat
    n_cut: int

    def score(self, prompts: Sequence[str], responses: Sequence[str], *,
              progress: Callable[[int], None] | None = None) -> list[float]: ...


def is_ensemble(model_path: str | Path) -> bool:
    return (Path(model_path) / ENSEMBLE_MANIFEST).is_file()


def load_scorer(model_path: str, **kwargs) -> Scorer:
    """RewardScorer for a model folder or backbone, EnsembleScorer for an ensemble folder (whose
    `score` returns the members' mean reward, with their spread attached)."""
    if is_ensemble(model_path):
        from reward_models.ensemble import EnsembleScorer

        return EnsembleScorer(model_path, **kwargs)
    return RewardScorer(model_path, **kwargs)
