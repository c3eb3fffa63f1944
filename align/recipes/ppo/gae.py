"""Generalised advantage estimation and the masked statistics PPO needs.

Tensors are (batch, response tokens); `mask` is 1 on a response's real tokens (up to and including
its EOS) and 0 on the padding after it. Padding never leaks into advantages, returns or means.
"""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp_min(1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp_min(1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    n = mask.sum()
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / std over the unmasked entries; with shift_mean=False the mean is kept (rewards)."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(x.dtype)


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
                lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages A_t = sum_l (gamma*lam)^l delta_{t+l}, delta_t = r_t + gamma V_{t+1} - V_t.

    The value after a response's last real token is 0 (the episode ends there). Returns
    (advantages, returns = advantages + values), both zero on padding.
    """
    maskf = mask.to(rewards.dtype)
    rewards, values = rewards * maskf, values * maskf
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    length = rewards.shape[1]
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        # Padding positions reset the running sum so nothing crosses a response's end.
        last = (delta + gamma * lam * last) * maskf[:, t]
        advantages[:, t] = last
    returns = (advantages + values) * maskf
    return advantages, returns


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(returns - values) / Var(returns): 1 is a perfect critic, <= 0 a useless one."""
    var_ret = masked_var(returns, mask)
    if var_ret <= 0:
        return float("nan")
    return float(1.0 - masked_var(returns - values, mask) / var_ret)
