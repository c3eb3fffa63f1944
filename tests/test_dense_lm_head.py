"""The CPU dense LM head returns what TRL's fused (tiled) head returns: values and gradients."""

from __future__ import annotations

import pytest
import torch

from align.recipes.dense_lm_head import add_dense_lm_head, use_dense_lm_head_on_cpu

OUTPUTS = ("log_probs", "entropy", "mean_logits", "is_top1", "log_sum_sq_probs")


def _model():
    from transformers import AutoModelForCausalLM

    from align.models import resolve_model

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(resolve_model("builtin:smollm2-135m-instruct"), dtype=torch.float32)


def _batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(100, 5000, (3, 24), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :5] = 0  # left padding
    labels = ids.clone()
    labels[:, :10] = -100  # prompt tokens carry no label
    labels[mask == 0] = -100
    return ids, mask, labels


def _run(patch):
    from peft import LoraConfig, get_peft_model

    model = _model()
    patch(model, outputs=OUTPUTS)
    peft = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    ids, mask, labels = _batch()
    out = peft(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
    (out.loss + out.entropy.sum() * 0.01).backward()
    grads = {n: p.grad.clone() for n, p in peft.named_parameters() if p.grad is not None}
    return out, grads


@pytest.mark.slow
def test_dense_head_matches_trl_fused_head():
    from trl.trainer.utils import add_fused_lm_head

    fused, g_fused = _run(add_fused_lm_head)
    dense, g_dense = _run(add_dense_lm_head)
    for name in OUTPUTS + ("label_mask",):
        a, b = getattr(fused, name), getattr(dense, name)
        assert a.shape == b.shape and a.dtype == b.dtype, name
        torch.testing.assert_close(b.float(), a.float(), atol=2e-4, rtol=1e-4, msg=name)
    torch.testing.assert_close(dense.loss, fused.loss, atol=1e-5, rtol=1e-5)
    assert g_fused.keys() == g_dense.keys() and g_dense
    for name in g_fused:
        torch.testing.assert_close(g_dense[name], g_fused[name], atol=1e-5, rtol=1e-3, msg=name)


@pytest.mark.slow
def test_plain_forward_and_generation_are_untouched():
    model = _model()
    ids, mask, _ = _batch()
    before = model(input_ids=ids, attention_mask=mask).logits
    add_dense_lm_head(model, outputs=OUTPUTS)
    after = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(after, before)


def test_swap_is_scoped_to_the_block():
    import types

    calls = []
    module = types.SimpleNamespace(add_fused_lm_head=lambda *a, **k: calls.append("fused"))
    original = module.add_fused_lm_head
    with use_dense_lm_head_on_cpu(module):
        assert module.add_fused_lm_head is not original
    assert module.add_fused_lm_head is original
