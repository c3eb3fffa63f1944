"""The frozen-probe reward: a linear Bradley–Terry head on a frozen chat model's hidden states.

A cross-encoder head fine-tuned on 1000 hh-rlhf pairs forgets more than it learns; an instruct model
already separates harmless from harmful answers in its residual stream (scripts/reward_probe_study.py:
SmolLM2-135M-Instruct, 0.65 on held-out pairs against MiniLM's 0.60). This architecture keeps the
backbone frozen and fits only the head, in closed form:

1. every training answer passes once through the backbone (cut after the deepest candidate layer);
   the residual stream after each candidate layer is mean-pooled over the *response* tokens;
2. the layer and the L2 penalty are chosen by k-fold cross-validation on the training pairs, grouped
   by conversation (hh-rlhf's first human turn, a `group` or `prompt_id` field otherwise);
3. the head is refitted on all training pairs and saved with the first L layers of the backbone as a
   one-output sequence classifier, so every scorer, PPO and `reward eval` load it like any other.

The response starts after the last occurrence of the reward format's separator tokens (a chat
marker such as `<|im_end|>\\n<|im_start|>assistant\\n`); without one the whole text is pooled.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

PROBE_TYPE = "clinalign_probe"


def response_mask(input_ids, attention_mask, marker: Sequence[int]):
    """(batch, length) bool: the tokens after the last `marker` subsequence, within the attention mask."""
    import torch

    mask = attention_mask.bool() if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
    n, width = input_ids.shape
    start = torch.zeros(n, dtype=torch.long, device=input_ids.device)
    m = len(marker)
    if m and width >= m:
        windows = input_ids.unfold(1, m, 1)  # (batch, width - m + 1, m)
        hit = (windows == torch.tensor(list(marker), device=input_ids.device)).all(-1)
        hit &= mask.unfold(1, m, 1).all(-1)
        pos = torch.arange(hit.shape[1], device=input_ids.device).expand_as(hit)
        last = torch.where(hit, pos, torch.full_like(pos, -1)).max(1).values
        start = torch.where(last >= 0, last + m, start)
    return mask & (torch.arange(width, device=input_ids.device)[None, :] >= start[:, None])


def _pool(hidden, keep):
    w = keep.to(hidden.dtype).unsqueeze(-1)
    return (hidden * w).sum(1) / w.sum(1).clamp(min=1.0)


@functools.cache
def probe_classes():
    """(config class, model class), built on first use: torch/transformers load only when needed."""
    import torch
    from transformers import LlamaConfig, LlamaModel, LlamaPreTrainedModel
    from transformers.modeling_outputs import SequenceClassifierOutput

    class ProbeRewardConfig(LlamaConfig):
        model_type = PROBE_TYPE

        def __init__(self, response_marker: list[int] | None = None, probe_layer: int | None = None, **kwargs):
            super().__init__(**kwargs)
            self.response_marker = list(response_marker or [])  # token ids after which the response starts
            self.probe_layer = probe_layer  # = num_hidden_layers: the backbone layer the head reads

    class ProbeForSequenceClassification(LlamaPreTrainedModel):
        config_class = ProbeRewardConfig
        _keep_in_fp32_modules_strict = ["score"]  # a bf16 backbone, but rewards with fp32 resolution (fewer ties)

        def __init__(self, config):
            super().__init__(config)
            self.num_labels = 1
            self.model = LlamaModel(config)
            self.model.norm = torch.nn.Identity()  # the head reads the residual stream itself, as fitted
            self.score = torch.nn.Linear(config.hidden_size, 1)
            self.post_init()

        def forward(self, input_ids=None, attention_mask=None, labels=None, **_: object):
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            keep = response_mask(input_ids, attention_mask, self.config.response_marker)
            pooled = _pool(hidden.to(self.score.weight.dtype), keep)
            return SequenceClassifierOutput(logits=self.score(pooled))

    return ProbeRewardConfig, ProbeForSequenceClassification


def layer_features(backbone, seqs: Sequence[list[int]], pad_id: int, layers: Sequence[int],
                   marker: Sequence[int], *, batch_size: int = 8,
                   progress: Callable[[int], None] | None = None) -> np.ndarray:
    """(n, len(layers), hidden) float32: response-mean residual stream after each of `layers`.

    `backbone` is a base decoder (e.g. LlamaModel) whose `layers` are its blocks; the forward stops
    after the deepest requested layer."""
    import torch

    from reward_models.scoring import pad_right

    deepest = max(layers)
    captured: dict[int, Any] = {}
    hooks = [backbone.layers[k - 1].register_forward_hook(
        lambda _m, _i, out, k=k: captured.__setitem__(k, out[0] if isinstance(out, tuple) else out))
        for k in layers]
    full = backbone.config.num_hidden_layers
    backbone.config.num_hidden_layers = deepest  # LlamaModel runs layers[:num_hidden_layers]
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    out = np.zeros((len(seqs), len(layers), backbone.config.hidden_size), dtype=np.float32)
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                inputs = pad_right([seqs[i] for i in idx], pad_id, backbone.device)
                backbone(**inputs)
                keep = response_mask(inputs["input_ids"], inputs["attention_mask"], marker)
                for j, k in enumerate(layers):
                    out[idx, j] = _pool(captured[k].float(), keep).cpu().numpy()
                if progress is not None:
                    progress(len(idx))
    finally:
        backbone.config.num_hidden_layers = full
        for h in hooks:
            h.remove()
    return out


def fit_head(diff: np.ndarray, penalty: float) -> np.ndarray:
    """Bradley–Terry weights (no bias: it cancels in a pair) on differences chosen - rejected, L2-penalised."""
    import torch

    x = torch.tensor(diff, dtype=torch.float64)
    w = torch.zeros(diff.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.softplus(-(x @ w)).mean() + penalty * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy()


def conversation_key(row: dict) -> str:
    """What groups near-duplicate pairs: a group / prompt_id field, else the prompt's first turn."""
    key = row.get("group") or row.get("prompt_id")
    if key:
        return str(key)
    return str(row["prompt"]).split("\n\nAssistant:")[0].strip().lower()


def grouped_folds(keys: Sequence[str], k: int, seed: int) -> np.ndarray:
    """A fold per pair; pairs with the same key share a fold."""
    uniq = list(dict.fromkeys(keys))
    perm = np.random.default_rng(seed).permutation(len(uniq))
    where = {key: perm[i] % k for i, key in enumerate(uniq)}
    return np.array([where[key] for key in keys])


def cross_validate(diff: np.ndarray, folds: np.ndarray, layers: Sequence[int],
                   penalties: Sequence[float]) -> dict[tuple[int, float], float]:
    """Grouped k-fold accuracy (ties count ½) of every (layer, penalty); diff is (n, len(layers), hidden)."""
    acc = {}
    for j, layer in enumerate(layers):
        for penalty in penalties:
            score = 0.0
            for f in np.unique(folds):
                tr, te = diff[folds != f, j], diff[folds == f, j]
                scale = tr.std(0) + 1e-6
                margin = (te / scale) @ fit_head(tr / scale, penalty)
                score += float(np.sum(margin > 0) + 0.5 * np.sum(margin == 0))
            acc[(layer, penalty)] = score / len(diff)
    return acc


def select(acc: dict[tuple[int, float], float]) -> tuple[int, float]:
    """The best (layer, penalty); among equals the shallower layer and the stronger penalty (cheaper, safer)."""
    return max(acc, key=lambda lp: (acc[lp], -lp[0], lp[1]))


def head_parameters(feats: np.ndarray, diff: np.ndarray, penalty: float) -> tuple[np.ndarray, float]:
    """(weight, bias) on raw features: fitted on standardised differences, the scale folded into the
    weight, and the bias centring the training answers' rewards at 0 (PPO reads rewards as they are)."""
    scale = diff.std(0) + 1e-6
    w = fit_head(diff / scale, penalty) / scale
    return w, -float((feats @ w).mean())


def build_model(backbone, layer: int, weight: np.ndarray, bias: float, marker: Sequence[int], pad_id: int):
    """The saved reward model: the backbone's first `layer` blocks and the fitted head."""
    import torch

    config_cls, model_cls = probe_classes()
    base = backbone.config.to_dict()
    for key in ("model_type", "architectures", "transformers_version", "_name_or_path", "id2label", "label2id",
                "num_hidden_layers", "pad_token_id", "dtype", "torch_dtype", "layer_types"):
        base.pop(key, None)
    config = config_cls(response_marker=list(marker), probe_layer=layer, num_hidden_layers=layer, num_labels=1,
                        pad_token_id=pad_id, **base)
    model = model_cls(config).to(next(backbone.parameters()).dtype)
    model.score.float()
    state = {k: v for k, v in backbone.state_dict().items()
             if not k.startswith(("norm.", "layers.")) or (k.startswith("layers.") and int(k.split(".")[1]) < layer)}
    missing, unexpected = model.model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"probe backbone does not match: missing {missing[:5]}, unexpected {unexpected[:5]}")
    with torch.no_grad():
        model.score.weight.copy_(torch.tensor(weight, dtype=model.score.weight.dtype)[None, :])
        model.score.bias.fill_(bias)
    return model.eval()
