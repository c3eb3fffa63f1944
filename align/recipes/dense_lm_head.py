"""A dense LM head for TRL's fused-head contract, for CPUs.

TRL's trainers patch the policy with `add_fused_lm_head`: `model(..., labels=, fused_lm_head=True)` returns
per-token log-probabilities (and entropy, mean logit, top-1 flags for the metrics) computed in vocabulary
tiles, so a GPU never holds the (tokens × vocab) logits. Without Triton (any CPU) those tiles run as
many small torch ops over *every* position, prompt and padding included. Profiled on the demo's DPO
stage (SmolLM2-135M, 2 cores) that head took ~40% of the step. On a CPU the logits of the scored
positions fit in memory easily (740 tokens × 49k vocab ≈ 150 MB), so this head projects only the
positions that have a label, once, densely, and lets autograd do the backward: the same outputs, the
same loss. `use_dense_lm_head_on_cpu` swaps it in while a TRL trainer is built.
"""

from __future__ import annotations

import contextlib
import functools
import types
from collections.abc import Iterator

import torch


def add_dense_lm_head(model, temperature: float = 1.0, cast_lm_head_to_fp32: bool = False,
                      outputs: tuple[str, ...] = ("log_probs",)) -> None:
    """Patch `model.forward` like `trl.trainer.utils.add_fused_lm_head`, computing the head densely."""
    from trl.trainer.utils import FusedCausalLMOutput

    original_forward = model.forward

    @functools.wraps(type(model).forward)
    def _dense_forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None,
                       **kwargs):
        if not fused_lm_head:
            extra = {k: v for k, v in (("labels", labels), ("shift_labels", shift_labels),
                                       ("num_items_in_batch", num_items_in_batch)) if v is not None}
            return original_forward(*args, **kwargs, **extra)
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state
        if shift_labels is None:
            hidden, labels = hidden[:, :-1], labels[:, 1:]
        else:
            labels = shift_labels
        mask = labels != -100
        head = self.get_output_embeddings()
        picked = hidden[mask]  # only positions with a label: prompt and padding are never projected
        ctx = torch.autocast(picked.device.type, enabled=False) if cast_lm_head_to_fp32 else contextlib.nullcontext()
        with ctx:
            logits = head(picked.float() if cast_lm_head_to_fp32 else picked).float() / temperature
        logp_all = logits.log_softmax(-1)
        targets = labels[mask]
        fields = {"log_probs": logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)}
        if "entropy" in outputs:
            fields["entropy"] = -(logp_all.exp() * logp_all).sum(-1)
        with torch.no_grad():
            if "mean_logits" in outputs:
                fields["mean_logits"] = logits.mean(-1)
            if "is_top1" in outputs:  # argmax takes the first maximum, as TRL's kernel counts it
                fields["is_top1"] = logits.argmax(-1) == targets
            if "log_sum_sq_probs" in outputs:
                fields["log_sum_sq_probs"] = torch.logsumexp(2 * logp_all, dim=-1)
        per_token = {k: v.new_zeros(mask.shape).masked_scatter(mask, v) for k, v in fields.items()}
        log_probs = per_token["log_probs"]
        denom = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(loss=-log_probs.sum() / denom, log_probs=log_probs,
                                   entropy=per_token.get("entropy"), log_sum_sq_probs=per_token.get("log_sum_sq_probs"),
                                   mean_logits=per_token.get("mean_logits"), is_top1=per_token.get("is_top1"),
                                   label_mask=mask)

    model.forward = types.MethodType(_dense_forward, model)


def _plain_head(model) -> bool:
    """The dense head covers models whose logits are hidden @ W (+ b): no soft-capping, no logit scale."""
    cfg = model.config.get_text_config()
    scaled = any(getattr(cfg, k, None) not in (None, 1.0) for k in
                 ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling"))
    return not scaled and getattr(cfg, "output_router_logits", False) is False


@contextlib.contextmanager
def use_dense_lm_head_on_cpu(trainer_module) -> Iterator[None]:
    """While a TRL trainer from `trainer_module` is constructed, models on a CPU get the dense head (others,
    and models it does not cover, keep TRL's fused head)."""
    fused = trainer_module.add_fused_lm_head

    def choose(model, *args, **kwargs):
        on_cpu = next(model.parameters()).device.type == "cpu"
        return (add_dense_lm_head if on_cpu and _plain_head(model) else fused)(model, *args, **kwargs)

    trainer_module.add_fused_lm_head = choose
    try:
        yield
    finally:
        trainer_module.add_fused_lm_head = fused
