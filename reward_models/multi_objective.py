"""Clinical multi-objective reward: the Bradley–Terry head plus heads for clinicians' ratings.

One backbone, two heads on the same pooled features:
- the preference head (the sequence classifier's own 1-output head), trained with TRL's
  Bradley–Terry loss (margin, centering) exactly as a plain reward model;
- a rating head (a linear layer, one output per attribute: accuracy, harm, completeness) trained
  by masked mean-squared error on the 1–5 ratings clinicians gave (`ratings_chosen` /
  `ratings_rejected` in the preference dataset; absent attributes are simply not trained on).

Scale: harm follows the annotation schema's 1–5 grade where HIGHER MEANS MORE HARMFUL (1 = no
potential for harm, 5 = severe); accuracy and completeness are higher-is-better.

The scalar PPO optimises (`combine`) is documented in docs/reward-models.md:

    combined = reward + w_acc * (accuracy - 3) / 2 + w_comp * (completeness - 3) / 2
    if harm >= harm_threshold:  combined = harm_penalty - (harm - harm_threshold)

i.e. the ratings nudge the preference reward, and predicted harm is a hard floor: a policy can
never gain reward from an answer the model judges harmful, however preferred its style.

Files beside the HF model: `rating_head.safetensors` and `multi_objective.json` (this spec).
`RewardScorer` loads them automatically, so PPO/GRPO get the combined scalar without changes.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from trl import RewardTrainer
from trl.trainer.reward_trainer import DataCollatorForPreference

from annotation.errors import InputError
from annotation.records import RATING_KEYS, RATING_RANGE

SPEC_FILE = "multi_objective.json"
HEAD_FILE = "rating_head.safetensors"


@dataclass
class MultiObjectiveSpec:
    attributes: list[str] = field(default_factory=lambda: list(RATING_KEYS))
    rating_loss_weight: float = 1.0
    weights: dict[str, float] = field(default_factory=lambda: {"accuracy": 0.5, "completeness": 0.25})
    harm_attribute: str = "harm"
    harm_threshold: float = 3.5
    harm_penalty: float = -5.0
    hidden_size: int = 0

    def save(self, model_dir: str | Path) -> None:
        (Path(model_dir) / SPEC_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, model_dir: str | Path) -> MultiObjectiveSpec | None:
        path = Path(model_dir) / SPEC_FILE
        return cls(**json.loads(path.read_text())) if path.is_file() else None


def parse_ratings(value: Any, attributes: list[str], *, where: dict) -> list[float]:
    """A ratings JSON string/dict → one float per attribute (NaN when absent); range-checked."""
    if value in (None, ""):
        return [math.nan] * len(attributes)
    try:
        obj = json.loads(value) if isinstance(value, str) else value
    except json.JSONDecodeError as exc:
        raise InputError(f"ratings are not valid JSON ({exc.msg})", **where) from None
    if not isinstance(obj, dict):
        raise InputError(f"ratings must be an object like {{\"accuracy\": 4}}, got {value!r}", **where)
    lo, hi = RATING_RANGE
    out = []
    for key in attributes:
        v = obj.get(key)
        if v is None:
            out.append(math.nan)
            continue
        if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
            raise InputError(f"rating '{key}' must be a number {lo}-{hi}, got {v!r}", **where)
        out.append(float(v))
    unknown = sorted(set(obj) - set(RATING_KEYS))
    if unknown:
        raise InputError(f"unknown rating(s) {unknown} (expected {', '.join(RATING_KEYS)})", **where)
    return out


def to_target(rating: float) -> float:
    """1..5 → -1..1, the rating head's output scale."""
    lo, hi = RATING_RANGE
    return (rating - (lo + hi) / 2) / ((hi - lo) / 2)


def from_target(x: float) -> float:
    lo, hi = RATING_RANGE
    return x * (hi - lo) / 2 + (lo + hi) / 2


def _head_module(model) -> nn.Module:
    """The preference head (`classifier` for BERT, `score` for LLaMA), possibly PEFT-wrapped."""
    best = None
    for name, module in model.named_modules():
        if name.split(".")[-1] in ("classifier", "score") and (best is None or len(name) < len(best[0])):
            best = (name, module)
    if best is None:
        raise InputError(f"cannot find the classifier/score head of {type(model).__name__}")
    return best[1]


class RatingHead(nn.Module):
    """A linear rating head reading the same pooled features as the preference head."""

    def __init__(self, hidden_size: int, n_attributes: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, n_attributes)
        self._features: torch.Tensor | None = None

    def hook(self, model) -> None:
        def capture(_module, args, _output):
            self._features = args[0]

        _head_module(model).register_forward_hook(capture)

    def predict(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """Ratings on the -1..1 scale for the last forward pass (pooled like the preference head)."""
        feats = self._features
        if feats is None:
            raise RuntimeError("rating head called before a forward pass")
        if feats.dim() == 3:  # decoder RMs score every position; pool at the last real token (right padding)
            last = attention_mask.sum(dim=1) - 1
            feats = feats[torch.arange(feats.shape[0], device=feats.device), last]
        return self.linear(feats.to(self.linear.weight.dtype))


def feature_size(model) -> int:
    head = _head_module(model)
    base = getattr(head, "modules_to_save", None)
    head = next(iter(base.values())) if base else getattr(head, "original_module", head)
    return head.in_features


def rating_columns(rows: list[dict], attributes: list[str], path: str) -> tuple[list, list, int]:
    """Per-row rating vectors for chosen and rejected, and how many rows carry any rating."""
    chosen, rejected, n_rated = [], [], 0
    for i, row in enumerate(rows):
        where = {"path": path, "record": f"row {i} ({row.get('pair_id') or 'no pair_id'})"}
        c = parse_ratings(row.get("ratings_chosen"), attributes, where=where)
        r = parse_ratings(row.get("ratings_rejected"), attributes, where=where)
        n_rated += any(not math.isnan(x) for x in c + r)
        chosen.append(c)
        rejected.append(r)
    return chosen, rejected, n_rated


class MultiObjectiveCollator(DataCollatorForPreference):
    """TRL's preference collator plus a [2B, K] ratings tensor (chosen rows first, NaN = unrated)."""

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        out = super().torch_call(examples)
        out["ratings"] = torch.tensor([e["ratings_chosen"] for e in examples] +
                                      [e["ratings_rejected"] for e in examples], dtype=torch.float)
        return out


class MultiObjectiveRewardTrainer(RewardTrainer):
    """RewardTrainer whose loss adds the rating head's masked MSE to TRL's Bradley–Terry loss."""

    def __init__(self, *args, rating_head: RatingHead, rating_loss_weight: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.rating_head = rating_head.to(self.args.device)
        self.model.rating_head = self.rating_head  # a submodule, so the optimizer trains it
        self.rating_head.hook(self.model)
        self.rating_loss_weight = rating_loss_weight

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["chosen_ids", "rejected_ids", "margin", "ratings_chosen", "ratings_rejected"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        ratings = inputs.pop("ratings")
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True)
        pred = self.rating_head.predict(inputs["attention_mask"])
        mask = ~torch.isnan(ratings)
        if mask.any():
            target = torch.where(mask, (ratings - 3.0) / 2.0, torch.zeros_like(ratings))
            mse = (((pred - target) ** 2) * mask).sum() / mask.sum()
            loss = loss + self.rating_loss_weight * mse
            mode = "train" if self.model.training else "eval"
            self._metrics[mode]["rating_mse"].append(mse.detach().item())
        return (loss, outputs) if return_outputs else loss


def save_head(head: RatingHead, spec: MultiObjectiveSpec, out_dir: str | Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in head.linear.state_dict().items()},
              str(Path(out_dir) / HEAD_FILE))
    spec.save(out_dir)


def load_head(model_dir: str | Path, model) -> tuple[RatingHead, MultiObjectiveSpec] | None:
    """The rating head saved beside a model, hooked onto `model`; None for a plain reward model."""
    from safetensors.torch import load_file

    spec = MultiObjectiveSpec.load(model_dir)
    if spec is None:
        return None
    head = RatingHead(spec.hidden_size, len(spec.attributes))
    head.linear.load_state_dict(load_file(str(Path(model_dir) / HEAD_FILE)))
    head.to(next(model.parameters()).device).eval()
    head.hook(model)
    return head, spec


def combine(reward: float, ratings: dict[str, float], spec: MultiObjectiveSpec) -> float:
    """The scalar PPO optimises: ratings nudge the reward; predicted harm is a hard floor."""
    harm = ratings.get(spec.harm_attribute)
    if harm is not None and harm >= spec.harm_threshold:
        return spec.harm_penalty - (harm - spec.harm_threshold)
    return reward + sum(w * to_target(ratings[k]) for k, w in spec.weights.items() if k in ratings)
