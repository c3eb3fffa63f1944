"""The trainable module PPO optimises: the policy (LoRA or full) plus its critic, as ONE nn.Module.

One module means one `accelerator.prepare` and, under DeepSpeed, one engine holding policy and critic.
The reference policy is the same weights with the LoRA adapter disabled (no copy); only full
fine-tuning keeps a frozen copy.
"""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn


class ValueHead(nn.Module):
    """Linear head hidden -> scalar, in fp32.

    Zero init: every first value is exactly 0, so the first advantages are the plain (KL-penalised)
    returns instead of noise from a random head (whose values scale with the hidden-state norm,
    about sqrt(hidden) after the final RMSNorm). A scalar head has no symmetry to break.
    """

    def __init__(self, hidden_size: int):
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.summary.weight)
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.summary(hidden.float()).squeeze(-1)


def position_ids_for(attention_mask: torch.Tensor) -> torch.Tensor:
    # Left padding: positions count real tokens only, as during generation.
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def _base_causal_lm(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_hidden(model, input_ids, attention_mask) -> torch.Tensor:
    """Last hidden state of a causal LM (or of a bare backbone), without computing vocab logits."""
    base = _base_causal_lm(model)
    body = base.get_decoder() if hasattr(base, "get_decoder") and base.get_decoder() is not None else base
    out = body(input_ids=input_ids, attention_mask=attention_mask,
               position_ids=position_ids_for(attention_mask), use_cache=False)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def response_logits(model, hidden: torch.Tensor, context_length: int) -> torch.Tensor:
    """Logits that predict each response token: only these positions go through the vocab projection."""
    head = _base_causal_lm(model).get_output_embeddings()
    return head(hidden[:, context_length - 1:-1]).float()


class PolicyWithValue(nn.Module):
    def __init__(self, policy: nn.Module, critic: str = "value_head", critic_backbone: nn.Module | None = None):
        super().__init__()
        self.policy = policy
        cfg = _base_causal_lm(policy).config
        self.config = cfg  # DeepSpeed's "auto" bucket sizes read config.hidden_size
        hidden = cfg.get_text_config().hidden_size if hasattr(cfg, "get_text_config") else cfg.hidden_size
        self.critic_backbone = critic_backbone if critic == "critic_model" else None
        if self.critic_backbone is not None:
            ccfg = self.critic_backbone.config
            hidden = ccfg.get_text_config().hidden_size if hasattr(ccfg, "get_text_config") else ccfg.hidden_size
        self.value_head = ValueHead(hidden)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, context_length: int,
                with_values: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(response logits (B, R, V), values (B, R) for the states before each response token)."""
        hidden = decoder_hidden(self.policy, input_ids, attention_mask)
        logits = response_logits(self.policy, hidden, context_length)
        if not with_values:
            return logits, None
        if self.critic_backbone is not None:
            hidden = decoder_hidden(self.critic_backbone, input_ids, attention_mask)
        values = self.value_head(hidden[:, context_length - 1:-1])
        return logits, values


def build_policy(model, args):
    """Wrap with LoRA when use_peft; returns (policy, reference or None when the adapter is the switch)."""
    if args.use_peft:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                          target_modules=list(args.lora_target_modules), task_type="CAUSAL_LM")
        policy = get_peft_model(model, lora)
        return policy, None
    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return model, reference


@contextlib.contextmanager
def reference_mode(policy, reference):
    """Yields the model that computes reference log-probs: the adapter-less base, or the frozen copy."""
    if reference is not None:
        yield reference
        return
    with policy.disable_adapter():
        yield policy


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    # Temperature applies to training and reference alike, as in sampling (TRL's convention).
    logp = torch.log_softmax(logits / temperature, dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)
