"""PPO arithmetic against hand-worked examples: GAE, whitening, the KL controllers, EOS masking."""

import pytest
import torch

from align.recipes.ppo.gae import compute_gae, explained_variance, masked_mean, masked_whiten
from align.recipes.ppo.kl_controller import AdaptiveKLController, FixedKLController, make_kl_controller
from align.recipes.ppo.rollout import truncate_after_eos


def close(actual: torch.Tensor, expected: list) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=1e-6, rtol=1e-6)


def test_gae_gamma_one_lambda_one_is_return_minus_value():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.5, 0.5]])
    adv, ret = compute_gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=1.0)
    # every state's return is the final reward 1; advantage = 1 - 0.5
    close(adv, [[0.5, 0.5, 0.5]])
    close(ret, [[1.0, 1.0, 1.0]])


def test_gae_hand_worked_discounting():
    # gamma=0.9, lam=0.5, V=0.5 everywhere, reward 1 at the end:
    # t2: delta = 1 - 0.5 = 0.5                      A2 = 0.5
    # t1: delta = 0 + 0.9*0.5 - 0.5 = -0.05           A1 = -0.05 + 0.45*0.5   = 0.175
    # t0: delta = -0.05                               A0 = -0.05 + 0.45*0.175 = 0.02875
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.5, 0.5]])
    adv, ret = compute_gae(rewards, values, torch.ones(1, 3), gamma=0.9, lam=0.5)
    close(adv, [[0.02875, 0.175, 0.5]])
    close(ret, [[0.52875, 0.675, 1.0]])


def test_gae_padding_never_leaks():
    # The response ends after 2 tokens; the padding position carries junk reward 9 and value 7.
    # t1: delta = 2 + 0 - 1 = 1 (value after the end is 0)   A1 = 1
    # t0: delta = 0 + 1 - 1 = 0                              A0 = 0 + 1*1 = 1
    rewards = torch.tensor([[0.0, 2.0, 9.0]])
    values = torch.tensor([[1.0, 1.0, 7.0]])
    mask = torch.tensor([[1, 1, 0]])
    adv, ret = compute_gae(rewards, values, mask, gamma=1.0, lam=1.0)
    close(adv, [[1.0, 1.0, 0.0]])
    close(ret, [[2.0, 2.0, 0.0]])


def test_gae_rows_are_independent():
    r = torch.tensor([[0.0, 1.0], [3.0, 0.0]])
    v = torch.zeros(2, 2)
    mask = torch.tensor([[1, 1], [1, 0]])
    adv, _ = compute_gae(r, v, mask, gamma=1.0, lam=1.0)
    close(adv, [[1.0, 1.0], [3.0, 0.0]])


def test_masked_whiten_ignores_padding():
    x = torch.tensor([[1.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 0]])
    w = masked_whiten(x, mask)
    # mean 2, unbiased var 2 -> (x - 2) / sqrt(2); padding stays 0
    close(w, [[-1 / 2 ** 0.5, 1 / 2 ** 0.5, 0.0]])
    assert float(masked_mean(x, mask)) == pytest.approx(2.0)
    kept = masked_whiten(x, mask, shift_mean=False)
    assert float(masked_mean(kept, mask)) == pytest.approx(2.0)


def test_explained_variance_perfect_and_useless_critic():
    ret = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    mask = torch.ones(1, 4)
    assert explained_variance(ret, ret, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full_like(ret, 2.5), ret, mask) == pytest.approx(0.0, abs=1e-6)


def test_adaptive_kl_controller_hand_worked():
    ctl = AdaptiveKLController(value=0.1, target=6.0, horizon=10000)
    # KL 9 is 50% over target: error clipped to +0.2; beta *= 1 + 0.2 * 1000/10000 = 1.02
    assert ctl.update(9.0, 1000) == pytest.approx(0.102)
    # KL 3 is 50% under: error clipped to -0.2; beta *= 0.98
    assert ctl.update(3.0, 1000) == pytest.approx(0.102 * 0.98)
    # KL 6.6 is 10% over (not clipped); 2000 episodes: beta *= 1 + 0.1 * 0.2 = 1.02
    assert ctl.update(6.6, 2000) == pytest.approx(0.102 * 0.98 * 1.02)
    # on target: unchanged
    before = ctl.value
    assert ctl.update(6.0, 5000) == pytest.approx(before)


def test_kl_controller_state_round_trip_and_fixed():
    ctl = make_kl_controller(0.05, adaptive=True, target=1.0, horizon=100)
    ctl.update(5.0, 50)
    other = make_kl_controller(0.05, adaptive=True, target=1.0, horizon=100)
    other.load_state_dict(ctl.state_dict())
    assert other.value == ctl.value != 0.05
    fixed = make_kl_controller(0.05, adaptive=False, target=1.0, horizon=100)
    assert isinstance(fixed, FixedKLController)
    assert fixed.update(100.0, 10**6) == 0.05
    with pytest.raises(ValueError):
        make_kl_controller(-1.0, adaptive=False, target=1.0, horizon=100)
    with pytest.raises(ValueError):
        AdaptiveKLController(0.1, target=0.0, horizon=10)


def test_truncate_after_first_eos():
    eos, pad = 2, 0
    resp = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [2, 9, 9, 9]])
    out, mask, has_eos = truncate_after_eos(resp, {eos}, pad)
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert out.tolist() == [[5, 2, 0, 0], [5, 6, 7, 8], [2, 0, 0, 0]]
    assert has_eos.tolist() == [True, False, True]
