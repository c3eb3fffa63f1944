"""Reward-hacking guard (align/recipes/ppo/guard.py) and the PPO fixes that came with it (value init, missing EOS).

Unit tests drive `RewardGuard.update` with hand-made statistics; the end-to-end tests run real PPO on
the random tiny Llama with a reward that pays for length, so the policy learns to stop ending its turn.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from align.recipes.ppo.guard import (
    EOS_RATE_DROP,
    KL_OVER_BUDGET,
    LENGTH_DRIFT,
    REPETITION,
    REWARD_JUDGE_DIVERGENCE,
    GuardConfig,
    GuardStats,
    RewardGuard,
    distinct_n,
)
from align.recipes.ppo.ppo_config import PPOConfig
from clinalign_base.errors import ClinalignError

TINY = "builtin:tiny-llama"
PROMPTS = ["What is asthma?", "How is type 2 diabetes treated?", "What causes gout?",
           "Is aspirin safe in pregnancy?"]
HELD_OUT = ["What is a stroke?", "How is anaemia diagnosed?", "What does a statin do?"]
OFF = dict(max_length_drift=None, max_eos_drop=None, min_distinct2=None)


def stats(step: int, **kw) -> GuardStats:
    base = dict(score=0.0, kl=0.0, length_mean=10.0, eos_rate=0.9, distinct_2=0.8)
    base.update(kw)
    return GuardStats(step=step, **base)


# ------------------------------------------------------------------------------------------ unit: thresholds
def test_distinct_2_counts_unique_word_bigrams():
    assert distinct_n(["a b c", "a b d"]) == pytest.approx(3 / 4)  # (a b) twice, (b c), (b d)
    assert distinct_n(["a a a a a"]) == pytest.approx(1 / 4)
    assert distinct_n(["", "one"]) == 1.0  # no bigrams: nothing repeats


def test_kl_flag_fires_exactly_above_the_budget():
    g = RewardGuard(GuardConfig(kl_budget=2.0, **OFF))
    assert g.update(stats(1, kl=1.0)) == []
    assert g.update(stats(2, kl=2.0)) == []  # at the budget is within it
    assert g.update(stats(3, kl=2.01)) == [KL_OVER_BUDGET]
    assert g.update(stats(4, kl=0.5)) == []
    assert g.flags == {KL_OVER_BUDGET: 3}
    assert RewardGuard(GuardConfig(**OFF)).update(stats(1, kl=1e9)) == []  # None: no budget


def test_length_drift_is_relative_to_the_first_update():
    g = RewardGuard(GuardConfig(max_length_drift=0.5, max_eos_drop=None, min_distinct2=None))
    assert g.update(stats(1, length_mean=10.0)) == []
    assert g.update(stats(2, length_mean=15.0)) == []  # exactly +50%
    assert g.length_drift(15.0) == pytest.approx(0.5)
    assert g.update(stats(3, length_mean=15.1)) == [LENGTH_DRIFT]
    assert g.update(stats(4, length_mean=30.0)) == [LENGTH_DRIFT]
    assert g.flags == {LENGTH_DRIFT: 3}  # first sighting kept


def test_eos_drop_is_absolute_from_the_baseline():
    g = RewardGuard(GuardConfig(max_eos_drop=0.25, max_length_drift=None, min_distinct2=None))
    g.update(stats(1, eos_rate=0.75))
    assert g.update(stats(2, eos_rate=0.5)) == []  # exactly 0.25 down
    assert g.update(stats(3, eos_rate=0.49)) == [EOS_RATE_DROP]
    assert g.update(stats(4, eos_rate=1.0)) == []


def test_repetition_fires_below_min_distinct2():
    g = RewardGuard(GuardConfig(min_distinct2=0.3, max_length_drift=None, max_eos_drop=None))
    assert g.update(stats(1, distinct_2=0.3)) == []
    assert g.update(stats(2, distinct_2=0.29)) == [REPETITION]


def test_baseline_of_three_updates_sets_the_thresholds():
    g = RewardGuard(GuardConfig(baseline_updates=3, max_length_drift=0.5, max_eos_drop=0.25, min_distinct2=None))
    # no drift check until the baseline is complete, however far the numbers move
    for step, (length, eos) in enumerate([(2.0, 1.0), (18.0, 0.25), (10.0, 1.0)], start=1):
        assert g.length_drift(length) is None
        assert g.update(stats(step, length_mean=length, eos_rate=eos)) == []
    # baseline: length (2 + 18 + 10) / 3 = 10, eos (1 + 0.25 + 1) / 3 = 0.75
    assert g.update(stats(4, length_mean=15.0, eos_rate=0.5)) == []
    assert g.update(stats(5, length_mean=15.5, eos_rate=0.5)) == [LENGTH_DRIFT]
    assert g.update(stats(6, length_mean=10.0, eos_rate=0.49)) == [EOS_RATE_DROP]
    assert g.flags == {LENGTH_DRIFT: 5, EOS_RATE_DROP: 6}


def test_reward_judge_divergence_needs_reward_up_and_judge_down():
    g = RewardGuard(GuardConfig(judge_every=2, judge_min_reward_rise=0.25, judge_min_score_drop=0.5, **OFF))
    assert g.update(stats(1, judge_reward=1.0, judge_score=5.0)) == []  # first judged update: the baseline
    assert g.update(stats(2)) == []  # not judged this update
    assert g.update(stats(3, judge_reward=1.5, judge_score=5.5)) == []  # both rose: fine
    assert g.update(stats(4, judge_reward=0.5, judge_score=4.0)) == []  # both fell: not hacking
    assert g.update(stats(5, judge_reward=1.25, judge_score=4.5)) == []  # rise 0.25, drop 0.5: not above either
    assert g.update(stats(6, judge_reward=1.5, judge_score=4.5)) == []  # drop still not above 0.5
    assert g.update(stats(7, judge_reward=1.5, judge_score=4.25)) == [REWARD_JUDGE_DIVERGENCE]
    assert g.judge_due(0) and not g.judge_due(1) and g.judge_due(2)
    assert not RewardGuard(GuardConfig()).judge_due(0)  # judge_every 0: off


def test_flag_action_continues_and_stop_action_stops():
    seq = [stats(1, kl=1.0), stats(2, kl=5.0), stats(3, kl=1.0)]
    flag = RewardGuard(GuardConfig(kl_budget=2.0, action="flag", **OFF))
    stop = RewardGuard(GuardConfig(kl_budget=2.0, action="stop", **OFF))
    decisions = []
    for s in seq:
        flag.update(s)
        stop.update(s)
        decisions.append((flag.should_stop, stop.should_stop))
    assert decisions == [(False, False), (False, True), (False, False)]
    assert flag.summary()["stopped_early"] is False and flag.summary()["stopped_at_update"] is None
    summary = stop.summary()
    assert summary["stopped_early"] is True and summary["stopped_at_update"] == 2
    assert summary["flags"] == {KL_OVER_BUDGET: 2} and summary["config"]["action"] == "stop"


def test_state_survives_a_resume_without_the_stop_decision():
    g = RewardGuard(GuardConfig(kl_budget=1.0, action="stop"))
    g.update(stats(1, length_mean=5.0, judge_reward=0.1, judge_score=0.2))
    g.update(stats(2, length_mean=5.0, kl=3.0))
    h = RewardGuard(GuardConfig(kl_budget=1.0, action="stop"))
    h.load_state_dict(json.loads(json.dumps(g.state_dict())))
    assert h.flags == {KL_OVER_BUDGET: 2} and h.judge_baseline == (0.1, 0.2)
    assert h.length_drift(10.0) == pytest.approx(1.0)  # baseline 5 restored
    assert not h.should_stop and h.stopped_at_update is None


def test_bad_guard_settings_are_refused_by_the_config(tmp_path):
    with pytest.raises(ClinalignError, match="guard_action"):
        PPOConfig(output_dir=str(tmp_path), guard_action="halt")
    with pytest.raises(ClinalignError, match="guard_baseline_updates"):
        PPOConfig(output_dir=str(tmp_path), guard_baseline_updates=0)
    cfg = PPOConfig(output_dir=str(tmp_path), guard_kl_budget=3.0, guard_action="stop").guard_config()
    assert cfg.kl_budget == 3.0 and cfg.action == "stop" and cfg.max_length_drift == 0.5


# ------------------------------------------------------------------------------------------ tiny-model runs
def tiny_args(tmp_path: Path, **kw) -> PPOConfig:
    base = dict(output_dir=str(tmp_path / "ppo"), model_name_or_path=TINY, per_device_train_batch_size=16,
                num_mini_batches=1, max_steps=6, response_length=16, save_steps=0, report_to="none", seed=0,
                learning_rate=5e-3, lora_r=8, lora_alpha=16, temperature=1.0, kl_coef=0.0)
    base.update(kw)
    return PPOConfig(**base)


def _tokens(texts) -> list[int]:
    from align.models import load_tokenizer

    tok = load_tokenizer(TINY)
    return [len(tok.encode(t, add_special_tokens=False)) for t in texts]


def length_reward(prompts, responses):
    """The exploit: pays per response token (16 = the response_length the runs use), never for ending."""
    return [n / 16 for n in _tokens(responses)]


def neg_length_judge(prompts, responses):
    """A judge that disagrees with the training reward: longer is worse."""
    return [-x for x in length_reward(prompts, responses)]


def eos_like_an_instruct_model(trainer, bias: float = 9.0, scale: float = 3.0) -> None:
    """Give the random model a learnable habit of ending its turn, as an instruct model has.

    The tiny model's EOS row is its (zero) padding embedding, so EOS is never sampled and nothing
    can drift. A hook on the output layer sets EOS's logit to bias + h . v for a fixed direction v
    (|h . v| ~ scale): about 1 in 5 tokens is EOS at temperature 1, and LoRA can move h along v.
    The base weights are shared by the reference (adapter off), so the reference has the habit too.
    """
    policy = trainer.accelerator.unwrap_model(trainer.model).policy
    head = policy.get_base_model().get_output_embeddings()
    eos = trainer.tokenizer.eos_token_id
    v = torch.randn(head.in_features, generator=torch.Generator().manual_seed(0)) * scale / head.in_features ** 0.5

    def hook(module, inputs, out):
        out = out.clone()
        out[..., eos] = bias + inputs[0].float() @ v
        return out

    head.register_forward_hook(hook)


def test_guard_stops_a_length_exploit_in_a_real_ppo_run(tmp_path):
    from align.evaluation.model_card import _section_guard
    from align.recipes.ppo.ppo_trainer import PPOTrainer
    from clinalign_base.manifest import read_manifest

    # Thresholds sampling noise cannot reach on 16 responses: twice as long, EOS rate down by half.
    args = tiny_args(tmp_path, guard_action="stop", guard_max_length_drift=1.0, guard_max_eos_drop=0.5)
    tr = PPOTrainer(args, reward_fn=length_reward, prompts=PROMPTS * 4)
    eos_like_an_instruct_model(tr)
    out = tr.train()

    rows = tr.metrics.rows()
    first, last = rows[0], rows[-1]
    assert first["guard/eos_rate"] > 0.8 and first["guard/length_mean"] < 6  # the habit: short, ended turns
    assert first["guard/flags"] == []
    assert {LENGTH_DRIFT, EOS_RATE_DROP} & set(last["guard/flags"]), last
    assert all(r["guard/flags"] == [] for r in rows[:-1])  # stopped at the first flag
    assert len(rows) < args.max_steps and tr.step == len(rows)
    for key in ("guard/length_mean", "guard/eos_rate", "guard/distinct_2", "guard/kl"):
        assert all(key in r for r in rows), key
    assert "guard/judge_score" not in first  # no judge configured

    guard = read_manifest(out)["annotations"]["guard"]
    assert guard["stopped_early"] is True and guard["stopped_at_update"] == len(rows)
    assert set(guard["flags"]) == set(last["guard/flags"])
    assert all(step == len(rows) for step in guard["flags"].values())
    assert guard["config"]["action"] == "stop"
    assert read_manifest(out)["metrics"]["updates"] == len(rows)
    assert (out / "adapter_model.safetensors").is_file()  # saved as usual
    card = "\n".join(_section_guard({"policy": read_manifest(out)}))
    assert "## Reward-hacking guard" in card and f"stopped early** by the guard after update {len(rows)}" in card


def test_held_out_judge_flags_divergence_and_flag_mode_continues(tmp_path):
    from align.recipes.ppo.ppo_trainer import PPOTrainer
    from clinalign_base.manifest import read_manifest

    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text("".join(json.dumps({"id": f"h{i}", "question": q}) + "\n" for i, q in enumerate(HELD_OUT)))
    args = tiny_args(tmp_path, max_steps=3, guard_judge_every=1, guard_judge_prompts_path=str(held_out),
                     guard_max_length_drift=None, guard_max_eos_drop=None, guard_min_distinct2=None)
    tr = PPOTrainer(args, reward_fn=length_reward, prompts=PROMPTS * 4, judge_fn=neg_length_judge)
    eos_like_an_instruct_model(tr)
    out = tr.train()

    rows = tr.metrics.rows()
    assert len(rows) == 3  # flag mode: training ran to max_steps
    rewards, judged = [r["guard/judge_reward"] for r in rows], [r["guard/judge_score"] for r in rows]
    assert judged == pytest.approx([-x for x in rewards])
    assert rewards[-1] > rewards[0]  # the exploit shows on the held-out prompts too
    fired = [r["step"] for r in rows if REWARD_JUDGE_DIVERGENCE in r["guard/flags"]]
    assert fired and fired[0] > 1
    manifest = read_manifest(out)
    guard = manifest["annotations"]["guard"]
    assert guard["flags"] == {REWARD_JUDGE_DIVERGENCE: fired[0]} and guard["stopped_early"] is False
    assert guard["judge"] == "neg_length_judge"
    assert "judge_prompts" in {i["role"] for i in manifest["inputs"]}


def test_judge_settings_are_checked_before_training(tmp_path):
    from align.recipes.ppo.ppo_trainer import PPOTrainer

    with pytest.raises(ClinalignError, match="needs a judge"):
        PPOTrainer(tiny_args(tmp_path, guard_judge_every=1), reward_fn=length_reward, prompts=PROMPTS)
    with pytest.raises(ClinalignError, match="needs held-out prompts"):
        PPOTrainer(tiny_args(tmp_path, guard_judge_every=1), reward_fn=length_reward, prompts=PROMPTS,
                   judge_fn=neg_length_judge)
    with pytest.raises(ClinalignError, match="cannot import guard_judge_function"):
        PPOTrainer(tiny_args(tmp_path, guard_judge_every=1, guard_judge_function="tests.nowhere:judge"),
                   reward_fn=length_reward, prompts=PROMPTS, judge_prompts=HELD_OUT)
    # the config field resolves like reward_function does
    tr = PPOTrainer(tiny_args(tmp_path, guard_judge_every=2, guard_judge_max_prompts=2,
                              guard_judge_function="tests.test_ppo_guard:neg_length_judge"),
                    reward_fn=length_reward, prompts=PROMPTS, judge_prompts=HELD_OUT)
    assert tr.judge.fn is neg_length_judge and len(tr.judge_prompt_ids) == 2
    assert not (tmp_path / "ppo").exists()


# ------------------------------------------------------------------------------------------ PPO fixes
def test_missing_eos_penalty_lowers_the_score_of_unended_responses(tmp_path):
    from align.recipes.ppo.ppo_trainer import PPOTrainer
    from align.recipes.ppo.rollout import apply_penalties

    args = tiny_args(tmp_path, per_device_train_batch_size=8, response_length=8, missing_eos_penalty=2.0)
    unit = apply_penalties(torch.tensor([1.0, 1.0]), torch.tensor([True, False]), torch.tensor([3, 8]), args)
    assert unit.tolist() == [1.0, -1.0]

    tr = PPOTrainer(args, reward_fn=lambda p, r: [1.0] * len(r), prompts=PROMPTS * 2)
    eos_like_an_instruct_model(tr, bias=7.0)  # about half the 8-token responses end with EOS
    r = tr._rollout(list(range(8)))
    has_eos = r["has_eos"]
    assert has_eos.any() and not has_eos.all(), has_eos
    assert torch.equal(r["raw_scores"], torch.ones(8))
    assert torch.equal(r["scores"], torch.where(has_eos, 1.0, -1.0))


def _constant_reward_run(tmp_path: Path, init: bool) -> list[dict]:
    from align.recipes.ppo.ppo_trainer import PPOTrainer

    args = tiny_args(tmp_path / str(init), per_device_train_batch_size=4, response_length=6, max_steps=2,
                     learning_rate=1e-3, kl_coef=0.05, init_value_from_returns=init)
    tr = PPOTrainer(args, reward_fn=lambda p, r: [5.0] * len(r), prompts=PROMPTS)
    tr.train()
    return tr.metrics.rows()


def test_critic_starts_at_the_first_batch_return_not_at_zero(tmp_path):
    """cliprange_value (0.2) is in reward units: a zero-started critic crawls towards a return of 5."""
    zero = _constant_reward_run(tmp_path, init=False)
    assert zero[0]["val/mean"] == 0.0
    assert zero[1]["val/mean"] < 1.0 and zero[1]["loss/value"] > 5.0  # stuck near 0, far from 5
    init = _constant_reward_run(tmp_path, init=True)
    assert init[0]["val/mean"] == pytest.approx(5.0, abs=1e-4)  # KL is 0 at the first update
    assert init[1]["val/mean"] == pytest.approx(5.0, abs=0.5) and init[1]["loss/value"] < 0.5
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "True" / "ppo" / "value_head.safetensors"))
    assert saved["value_head.offset"].item() == pytest.approx(5.0, abs=1e-4)


def test_model_card_lists_guard_flags_only_when_recorded(tmp_path):
    from align.evaluation.model_card import render_card
    from clinalign_base.manifest import read_manifest, write_manifest
    from tests.test_model_card import make_round

    run = make_round(tmp_path)
    assert "Reward-hacking guard" not in render_card(run)
    policy = read_manifest(run / "policy")
    policy["annotations"]["guard"] = RewardGuard(GuardConfig()).summary()
    write_manifest(run / "policy", policy)
    assert "- `policy`: no flags raised" in render_card(run)
    policy["annotations"]["guard"].update(flags={EOS_RATE_DROP: 4, LENGTH_DRIFT: 3}, stopped_early=True,
                                          stopped_at_update=4)
    write_manifest(run / "policy", policy)
    card = render_card(run)
    assert "## Reward-hacking guard" in card
    assert "**length_drift** (first at update 3), **eos_rate_drop** (first at update 4)" in card
    assert "stopped early** by the guard after update 4" in card
