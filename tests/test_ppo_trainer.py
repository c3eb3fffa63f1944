"""clinalign's PPO trainer on the random tiny Llama: learning, the LoRA reference, kill + resume, bad input."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from align.recipes.ppo.ppo_config import PPOConfig
from clinalign_base.errors import ClinalignError, InputError

REPO = Path(__file__).resolve().parents[1]
TINY = "builtin:tiny-llama"
PROMPTS = ["What is asthma?", "How is type 2 diabetes treated?", "What causes gout?",
           "Is aspirin safe in pregnancy?"]


def tiny_args(tmp_path: Path, **kw) -> PPOConfig:
    base = dict(output_dir=str(tmp_path / "ppo"), model_name_or_path=TINY, per_device_train_batch_size=4,
                num_mini_batches=1, max_steps=1, response_length=6, save_steps=0, report_to="none", seed=0,
                learning_rate=1e-3, lora_r=4, lora_alpha=8)
    base.update(kw)
    return PPOConfig(**base)


def vowel_reward(prompts, responses):
    return [sum(c in "aeiou" for c in r) / max(1, len(r)) for r in responses]


# ------------------------------------------------------------------------------------------ speed without change
def test_reusing_the_rollout_forward_changes_nothing_but_the_time(tmp_path):
    """One micro batch per update: the scoring forward doubles as the first loss forward (ratio 1). The update
    must be the same as with the forward repeated: same loss, same statistics, same weights after."""
    from align.recipes.ppo.ppo_trainer import PPOTrainer

    runs = {}
    for reuse in (True, False):
        torch.manual_seed(0)
        tr = PPOTrainer(tiny_args(tmp_path / str(reuse), lora_dropout=0.0), reward_fn=vowel_reward, prompts=PROMPTS)
        assert tr._reuse_first_forward  # the default shape qualifies
        tr._reuse_first_forward = reuse
        row = tr.train_step()
        weights = {n: p.detach().clone() for n, p in tr.accelerator.unwrap_model(tr.model).named_parameters()
                   if p.requires_grad}
        runs[reuse] = (row, weights)
    (row_a, w_a), (row_b, w_b) = runs[True], runs[False]
    for key in ("loss/total", "loss/policy", "loss/value", "policy/approxkl", "val/ratio"):
        assert row_a[key] == pytest.approx(row_b[key], rel=1e-5, abs=1e-7), key
    assert w_a.keys() == w_b.keys() and all(torch.allclose(w_a[n], w_b[n], atol=1e-6) for n in w_a)
    assert any("lora_B" in n and w.abs().sum() > 0 for n, w in w_a.items())  # the update did move the adapter


def test_first_forward_is_not_reused_with_dropout_or_several_micro_batches(tmp_path):
    from align.recipes.ppo.ppo_trainer import PPOTrainer

    dropout = PPOTrainer(tiny_args(tmp_path / "d", lora_dropout=0.1), reward_fn=vowel_reward, prompts=PROMPTS)
    assert not dropout._reuse_first_forward
    split = PPOTrainer(tiny_args(tmp_path / "s", per_device_train_batch_size=2, gradient_accumulation_steps=2),
                       reward_fn=vowel_reward, prompts=PROMPTS)
    assert not split._reuse_first_forward


# ------------------------------------------------------------------------------------------ LoRA reference
def test_lora_reference_is_the_base_model(tmp_path):
    from align.batching import left_pad
    from align.models import load_causal_lm
    from align.recipes.ppo.policy import position_ids_for, reference_mode
    from align.recipes.ppo.ppo_trainer import PPOTrainer

    tr = PPOTrainer(tiny_args(tmp_path), reward_fn=vowel_reward, prompts=PROMPTS)
    assert tr.reference is None  # no second copy of the weights
    model = tr.accelerator.unwrap_model(tr.model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 0 < trainable < 0.1 * sum(p.numel() for p in model.parameters())
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # make the adapter matter (B starts at zero)
            p.data.normal_(0, 0.5)

    query, qmask = left_pad([tr.prompt_ids[0], tr.prompt_ids[2]], tr.tokenizer.pad_token_id)
    response = torch.randint(100, 1000, (2, 5))
    ids, attn = torch.cat([query, response], 1), torch.cat([qmask, torch.ones_like(response)], 1)
    ctx = query.shape[1]
    with torch.no_grad():
        adapted, _ = tr.model(ids, attn, ctx, with_values=False)
        with reference_mode(model.policy, tr.reference):
            ref, _ = tr.model(ids, attn, ctx, with_values=False)
        base = load_causal_lm(TINY).eval()
        expected = base(input_ids=ids, attention_mask=attn, position_ids=position_ids_for(attn)).logits
    expected = expected[:, ctx - 1:-1].float()
    torch.testing.assert_close(ref, expected, atol=1e-5, rtol=1e-5)
    assert (adapted - expected).abs().max() > 1e-2  # the adapter is back on after the context


def test_full_finetuning_keeps_a_frozen_reference(tmp_path):
    from align.recipes.ppo.ppo_trainer import PPOTrainer

    tr = PPOTrainer(tiny_args(tmp_path, use_peft=False), reward_fn=vowel_reward, prompts=PROMPTS)
    assert tr.reference is not None
    before_ref = {k: v.clone() for k, v in tr.reference.state_dict().items()}
    policy = tr.accelerator.unwrap_model(tr.model).policy
    before_pol = policy.model.layers[0].self_attn.q_proj.weight.detach().clone()
    tr.train()
    for k, v in tr.reference.state_dict().items():
        assert torch.equal(v, before_ref[k]), k
    assert not torch.equal(policy.model.layers[0].self_attn.q_proj.weight, before_pol)


def test_separate_critic_model_trains_and_is_saved(tmp_path):
    from safetensors.torch import load_file

    from align.recipes.ppo.ppo_trainer import PPOTrainer

    tr = PPOTrainer(tiny_args(tmp_path, critic="critic_model", max_steps=2, learning_rate=1e-2),
                    reward_fn=vowel_reward, prompts=PROMPTS)
    assert tr.model.critic_backbone is not None
    before = tr.model.critic_backbone.layers[0].self_attn.q_proj.weight.detach().clone()
    out = tr.train()
    assert not torch.equal(tr.model.critic_backbone.layers[0].self_attn.q_proj.weight, before)
    saved = load_file(str(out / "value_head.safetensors"))
    assert any(k.startswith("critic_backbone.") for k in saved) and "value_head.summary.weight" in saved
    # a critic must read the policy's token ids: MiniLM's 30k vocabulary cannot
    with pytest.raises(ClinalignError, match="vocab_size"):
        PPOTrainer(tiny_args(tmp_path, critic="critic_model", critic_model_path="builtin:minilm-l6"),
                   reward_fn=vowel_reward, prompts=PROMPTS)


# ------------------------------------------------------------------------------------------ learning
def test_mean_reward_rises_while_kl_stays_bounded(tmp_path):
    """Toy reward: the share of response tokens near a target token (' health') in embedding space.

    A random model's logits are nearly flat, so a single target token is never sampled; a set of
    tokens defined by the embedding geometry is both sampled from the start and reachable by LoRA.
    Sampling at temperature 0.1 makes the small logit changes of a LoRA on a random model matter.
    """
    from align.batching import left_pad
    from align.models import load_tokenizer
    from align.recipes.ppo.policy import reference_mode
    from align.recipes.ppo.ppo_trainer import PPOTrainer

    tok = load_tokenizer(TINY)
    args = tiny_args(tmp_path, per_device_train_batch_size=8, num_mini_batches=2, max_steps=12,
                     temperature=0.1, learning_rate=3e-3, kl_coef=0.02, lora_r=8, lora_alpha=16,
                     lora_target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                          "down_proj"])
    holder: dict = {}

    def near_target(prompts, responses):
        target = holder["target"]
        out = []
        for r in responses:
            ids = tok.encode(r, add_special_tokens=False)
            out.append(sum(i in target for i in ids) / max(1, len(ids)))
        return out

    from align.models import load_causal_lm

    emb = load_causal_lm(TINY).get_input_embeddings().weight.detach()
    t_id = tok.encode(" health", add_special_tokens=False)[0]
    cos = torch.nn.functional.cosine_similarity(emb, emb[t_id].unsqueeze(0), dim=-1)
    holder["target"] = set((cos > 0.15).nonzero().flatten().tolist())
    tr = PPOTrainer(args, reward_fn=near_target, prompts=PROMPTS * 4)
    tr.train()

    rows = tr.metrics.rows()
    assert [r["step"] for r in rows] == list(range(1, 13))
    scores = [r["objective/scores"] for r in rows]
    kls = [r["objective/kl"] for r in rows]
    assert sum(scores[-3:]) / 3 > sum(scores[:3]) / 3 + 0.05, scores
    assert all(math.isfinite(k) and k < 10.0 for k in kls), kls  # nats per 6-token response
    for key in ("objective/entropy", "policy/clipfrac", "loss/value", "val/explained_variance"):
        assert all(math.isfinite(r[key]) for r in rows), key

    # The same effect without sampling noise: probability mass on the target set, policy vs reference.
    idx = torch.tensor(sorted(holder["target"]))
    query, qmask = left_pad(tr.prompt_ids[:4], tok.pad_token_id)
    model = tr.accelerator.unwrap_model(tr.model)
    with torch.no_grad():
        mass = model.policy(input_ids=query, attention_mask=qmask).logits[:, -1].div(0.1).softmax(-1)
        with reference_mode(model.policy, tr.reference) as ref:
            ref_mass = ref(input_ids=query, attention_mask=qmask).logits[:, -1].div(0.1).softmax(-1)
    assert mass[:, idx].sum(-1).mean() > 2 * ref_mass[:, idx].sum(-1).mean()


# ------------------------------------------------------------------------------------------ kill + resume
CHILD = textwrap.dedent('''
    import os, sys, time
    import torch
    torch.set_num_threads(1)
    import annotation
    from align.recipes.ppo.ppo_config import PPOConfig
    from align.recipes.ppo.ppo_trainer import PPOTrainer

    out, hang_at, resume = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "resume"
    calls = {"n": 0}

    def reward(prompts, responses):
        calls["n"] += 1
        if calls["n"] == hang_at:  # call 1 is the pre-flight check, call k+1 is update k
            open(os.path.join(out, "HANGING"), "w").close()
            time.sleep(600)
        return [sum(c in "aeiou" for c in r) / max(1, len(r)) for r in responses]

    args = PPOConfig(output_dir=out, model_name_or_path="builtin:tiny-llama", per_device_train_batch_size=4,
                     num_mini_batches=2, max_steps=3, response_length=6, save_steps=1, seed=3,
                     report_to="none", learning_rate=1e-3, lora_r=4, lora_alpha=8,
                     resume_from_checkpoint="latest" if resume else None)
    PPOTrainer(args, reward_fn=reward, prompts=["What is asthma?", "What causes gout?", "Is aspirin safe?",
                                                "How is diabetes treated?", "What is a stroke?"]).train()
''')


def _child(script: Path, out: Path, hang_at: int, mode: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, str(script), str(out), str(hang_at), mode], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _rows(out: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r["step"] for r in rows]
    assert steps == sorted(set(steps)), steps  # no duplicated steps after a resume
    return {r["step"]: r for r in rows}


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    from safetensors.torch import load_file

    script = tmp_path / "child.py"
    script.write_text(CHILD)
    straight, killed = tmp_path / "straight", tmp_path / "killed"

    proc = _child(script, straight, 0, "fresh")
    assert proc.wait(timeout=600) == 0, proc.stdout.read()

    proc = _child(script, killed, 4, "fresh")  # hangs inside update 3's reward call
    deadline = time.time() + 600
    while not (killed / "HANGING").exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert (killed / "checkpoint-2").is_dir() and not (killed / "adapter_model.safetensors").exists()
    assert 3 not in _rows(killed)

    proc = _child(script, killed, 0, "resume")
    assert proc.wait(timeout=600) == 0, proc.stdout.read()

    a, b = _rows(straight), _rows(killed)
    assert sorted(b) == [1, 2, 3]
    for key in ("loss/first_micro_batch", "objective/scores", "objective/kl", "loss/policy", "loss/value", "kl_coef"):
        assert b[3][key] == pytest.approx(a[3][key], abs=1e-6), key
    wa = load_file(str(straight / "adapter_model.safetensors"))
    wb = load_file(str(killed / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------------------------------ YAML end to end
def test_train_from_yaml_with_the_reward_model_writes_everything(tmp_path, repo_root):
    from align.recipes.ppo import train_from_yaml
    from clinalign_base.manifest import read_manifest

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "question": q}) + "\n" for i, q in enumerate(PROMPTS)))
    cfg = tmp_path / "ppo.yaml"
    cfg.write_text(textwrap.dedent(f"""\
        # clinalign ppo --config {cfg}
        model_name_or_path: {TINY}
        reward_model_path: builtin:minilm-l6
        allow_untrained_reward: true
        prompts_path: {prompts}
        output_dir: {tmp_path / 'out'}
        per_device_train_batch_size: 2
        gradient_accumulation_steps: 2
        num_mini_batches: 1
        num_ppo_epochs: 2
        response_length: 5
        max_steps: 2
        save_steps: 1
        lora_r: 4
        lora_alpha: 8
        adaptive_kl: true
        target_kl: 1.0
        kl_horizon: 100
        report_to: none
        """))
    out = train_from_yaml(str(cfg), {"learning_rate": 1e-3})
    assert out == tmp_path / "out"
    for name in ("adapter_model.safetensors", "adapter_config.json", "value_head.safetensors",
                 "metrics.jsonl", "reward_kl_curves.png", "ppo_config.json", "clinalign_manifest.json"):
        assert (out / name).is_file(), name
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("objective/scores", "objective/kl", "objective/entropy", "policy/clipfrac", "loss/value",
                "val/explained_variance", "kl_coef"):
        assert all(math.isfinite(r[key]) for r in rows), key
    assert rows[1]["kl_coef"] != rows[0]["kl_coef"]  # the adaptive controller moved
    assert json.loads((out / "ppo_config.json").read_text())["learning_rate"] == 1e-3
    manifest = read_manifest(out)
    assert manifest["kind"] == "policy_adapter" and manifest["metrics"]["updates"] == 2
    assert {i["role"] for i in manifest["inputs"]} >= {"prompts", "base_model", "reward_model", "config"}
    assert (out / "checkpoint-1").is_dir()


# ------------------------------------------------------------------------------------------ bad input
def test_prompt_longer_than_the_context_is_refused_before_training(tmp_path):
    from align.recipes.ppo.ppo_trainer import PPOTrainer

    with pytest.raises(InputError, match=r"longer than 5 tokens.*prompts\[1\]"):
        PPOTrainer(tiny_args(tmp_path, max_prompt_length=5), reward_fn=vowel_reward, prompts=PROMPTS)
    # tiny-llama's context is 1024 tokens: a 1020-token response leaves no room for any prompt
    with pytest.raises(InputError, match="context 1024"):
        PPOTrainer(tiny_args(tmp_path, response_length=1020), reward_fn=vowel_reward, prompts=PROMPTS)
    assert not (tmp_path / "ppo").exists()


def test_empty_prompt_set_is_refused(tmp_path):
    from align.recipes.ppo.ppo_trainer import PPOTrainer

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(InputError, match="no prompts"):
        PPOTrainer(tiny_args(tmp_path, prompts_path=str(empty)), reward_fn=vowel_reward)
    with pytest.raises(ClinalignError, match="empty"):
        PPOTrainer(tiny_args(tmp_path), reward_fn=vowel_reward, prompts=[])


def test_nan_reward_is_refused_before_training(tmp_path):
    from align.recipes.ppo.ppo_trainer import PPOTrainer

    def nan_reward(prompts, responses):
        return [float("nan")] * len(responses)

    with pytest.raises(ClinalignError, match="non-finite"):
        PPOTrainer(tiny_args(tmp_path), reward_fn=nan_reward, prompts=PROMPTS)
    assert not (tmp_path / "ppo").exists()


def test_batch_sizes_that_do_not_divide_are_refused(tmp_path):
    from align.recipes.ppo import train_from_yaml

    with pytest.raises(ClinalignError, match="rollout_batch_size=10"):
        tiny_args(tmp_path, rollout_batch_size=10, per_device_train_batch_size=4, num_mini_batches=2)
    tiny_args(tmp_path, rollout_batch_size=16, per_device_train_batch_size=4, num_mini_batches=2,
              gradient_accumulation_steps=2)  # 4 x 2 x 2 = 16 is fine
    cfg = tmp_path / "ppo.yaml"
    cfg.write_text(f"# clinalign ppo --config {cfg}\nmodel_name_or_path: {TINY}\nreward_function: x:y\n")
    with pytest.raises(ClinalignError, match="rollout_batch_size"):
        train_from_yaml(str(cfg), {"rollout_batch_size": 6, "per_device_train_batch_size": 4})
    with pytest.raises(ClinalignError):
        train_from_yaml(str(cfg), {"num_mini_batches": 0})


def test_leave_one_out_baseline_scores_each_answer_against_its_siblings():
    from align.recipes.ppo.ppo_trainer import baselined

    scores = torch.tensor([1.0, 3.0, 2.0, 10.0, 10.0, 13.0])
    out = baselined(scores, 3, "leave_one_out")
    # 1 - mean(3, 2), 3 - mean(1, 2), ...: the easy question's answers (10, 10, 13) no longer look best
    assert out.tolist() == [-1.5, 1.5, 0.0, -1.5, -1.5, 3.0]
    assert torch.equal(baselined(scores, 3, "none"), scores)
    assert torch.equal(baselined(scores, 1, "leave_one_out"), scores)


def test_samples_per_prompt_rolls_out_each_prompt_k_times_and_rewards_relative_scores(tmp_path):
    from align.recipes.ppo.ppo_trainer import PPOTrainer

    def reward(prompts, responses):  # the question's own difficulty dominates the raw score
        return [10.0 * ("gout" in p) + vowel_reward([p], [r])[0] for p, r in zip(prompts, responses, strict=True)]

    tr = PPOTrainer(tiny_args(tmp_path, samples_per_prompt=2, temperature=1.0), reward_fn=reward, prompts=PROMPTS)
    idx = tr._batch_prompt_indices(0) + tr._batch_prompt_indices(1)
    assert idx[0::2] == idx[1::2]  # k consecutive copies of each prompt
    assert sorted(set(idx)) == [0, 1, 2, 3]  # 2 updates x 2 prompts: one pass over the 4 prompts
    r = tr._rollout(tr._batch_prompt_indices(0))
    pairs = r["rewarded"].view(-1, 2)
    torch.testing.assert_close(pairs.sum(1), torch.zeros(2))  # relative to the sibling: sums to 0
    torch.testing.assert_close(pairs[:, 0], (r["scores"].view(-1, 2)[:, 0] - r["scores"].view(-1, 2)[:, 1]))
    with pytest.raises(ClinalignError, match="samples_per_prompt=3"):
        tiny_args(tmp_path, samples_per_prompt=3)  # does not divide the rollout batch of 4


# ------------------------------------------------------------------------------------------ DeepSpeed
DS_CHILD = textwrap.dedent('''
    import json, sys
    import torch
    torch.set_num_threads(1)
    import annotation
    import deepspeed
    from align.recipes.ppo.ppo_config import PPOConfig
    from align.recipes.ppo.ppo_trainer import PPOTrainer

    out, zero, steps, resume = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "resume"
    args = PPOConfig(output_dir=out, model_name_or_path="builtin:tiny-llama",
                     deepspeed=f"configs/deepspeed/zero{zero}.json", per_device_train_batch_size=2,
                     gradient_accumulation_steps=2, num_mini_batches=1, num_ppo_epochs=1, max_steps=steps,
                     response_length=4, save_steps=1, report_to="none", learning_rate=1e-3, lora_r=4,
                     lora_alpha=8, seed=0, resume_from_checkpoint="latest" if resume else None)
    tr = PPOTrainer(args, reward_fn=lambda p, r: [float(len(x) % 7) for x in r],
                    prompts=["What is asthma?", "What causes gout?", "Is aspirin safe?", "What is a stroke?"])
    tr.train()
    engine = tr.model
    json.dump({"engine": type(engine).__name__, "is_engine": isinstance(engine, deepspeed.DeepSpeedEngine),
               "zero": engine.zero_optimization_stage(),
               "distributed_type": tr.accelerator.state.distributed_type.name}, open(out + "/ds.json", "w"))
''')


def _ds_env() -> dict[str, str]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("ACCELERATE_USE_CPU", "ACCELERATE_USE_DEEPSPEED")}
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
               TORCH_EXTENSIONS_DIR=os.environ.get("TORCH_EXTENSIONS_DIR")
               or str(Path.home() / ".cache" / "clinalign" / "torch_extensions"))
    return env


@pytest.mark.deepspeed
@pytest.mark.slow
@pytest.mark.parametrize("zero", [2, 3])
def test_ppo_runs_and_resumes_under_deepspeed(tmp_path, zero):
    """The same trainer through a real DeepSpeedEngine (policy + value head in one engine) on CPU."""
    from safetensors.torch import load_file

    script, out = tmp_path / "ds_child.py", tmp_path / "run"
    script.write_text(DS_CHILD)
    for steps, mode in ((2, "fresh"), (3, "resume")):
        proc = subprocess.run([sys.executable, str(script), str(out), str(zero), str(steps), mode], cwd=REPO,
                              env=_ds_env(), capture_output=True, text=True, timeout=1800)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
        res = json.loads((out / "ds.json").read_text())
        assert res["is_engine"] and res["zero"] == zero and res["distributed_type"] == "DEEPSPEED", res
    assert (out / "checkpoint-1").is_dir() and (out / "checkpoint-2").is_dir()
    rows = _rows(out)
    assert sorted(rows) == [1, 2, 3]  # the resumed run added update 3 only
    assert all(math.isfinite(r["loss/total"]) for r in rows.values())
    adapter = load_file(str(out / "adapter_model.safetensors"))
    assert any(v.abs().max() > 0 for k, v in adapter.items() if "lora_B" in k)
