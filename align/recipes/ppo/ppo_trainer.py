"""clinalign's PPO trainer (TRL removed its own in 1.13): LoRA-native, reward model through text, on accelerate.

One update = roll out a batch of prompts (sample, score with the reward model, reference and old
log-probs, values), turn scores into per-token rewards with a KL penalty, estimate advantages with
GAE, then run `num_ppo_epochs` passes of clipped policy + value losses over mini batches.
Everything goes through `accelerate`, so a DeepSpeed config (`deepspeed: configs/deepspeed/...json`)
runs the same code with ZeRO-2/3; policy and critic are one module, hence one engine.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import torch

from align.batching import left_pad
from align.recipes.ppo.gae import compute_gae, explained_variance, masked_mean, masked_whiten
from align.recipes.ppo.guard import GuardStats, RewardGuard, distinct_n
from align.recipes.ppo.kl_controller import make_kl_controller
from align.recipes.ppo.metrics import CURVES_NAME, METRICS_NAME, MetricsLog, plot_curves
from align.recipes.ppo.policy import (
    PolicyWithValue,
    build_policy,
    entropy_from_logits,
    logprobs_from_logits,
    reference_mode,
)
from align.recipes.ppo.ppo_config import PPOConfig
from align.recipes.ppo.prompts import (
    Prompt,
    context_length,
    encode_prompts,
    load_prompt_set,
    resolve_prompts_path,
)
from align.recipes.ppo.rollout import (
    RewardFn,
    RewardSource,
    RolloutBatch,
    apply_penalties,
    decode_responses,
    generate,
    import_callable,
    make_reward_source,
    preflight_reward,
)
from clinalign_base.errors import ClinalignError

STATE_NAME = "ppo_trainer_state.json"
VALUE_HEAD_NAME = "value_head.safetensors"


def baselined(scores: torch.Tensor, k: int, baseline: str) -> torch.Tensor:
    """Scores of k consecutive responses per prompt, each minus the mean of its k - 1 siblings."""
    if k < 2 or baseline == "none":
        return scores
    groups = scores.view(-1, k)
    siblings = (groups.sum(1, keepdim=True) - groups) / (k - 1)
    return (groups - siblings).reshape(-1)


def _rollout_order(n: int, episode: int, seed: int) -> int:
    """Prompt index of a global episode number: a fresh seeded permutation per pass over the prompts."""
    epoch, pos = divmod(episode, n)
    g = torch.Generator().manual_seed(seed + epoch)
    return int(torch.randperm(n, generator=g)[pos])


class PPOTrainer:
    """PPO on a causal LM. `reward_fn` (prompts, responses) -> scores can replace the reward model.

    `judge_fn` (same signature) is the reward-hacking guard's held-out judge; `judge_prompts` can
    replace guard_judge_prompts_path.
    """

    def __init__(self, args: PPOConfig, *, reward_fn: RewardFn | None = None, prompts: Sequence[str] | None = None,
                 config_path: str | None = None, judge_fn: RewardFn | None = None,
                 judge_prompts: Sequence[str] | None = None):
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        from align.models import eos_token_ids, generation_eos, load_causal_lm, load_tokenizer
        from align.recipes.recipe_utils import keep_bf16_where_it_pays, set_threads

        set_threads(args.num_threads)
        keep_bf16_where_it_pays(args)  # bf16: true in a config means "where it pays" (fp32 on older CPUs)
        self.args, self.config_path = args, config_path
        self.output_dir = Path(args.output_dir)
        if args.deepspeed and (args.use_cpu or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")):
            # accelerate would quietly run plain DDP instead of the DeepSpeed engine asked for
            raise ClinalignError("deepspeed is set together with use_cpu / ACCELERATE_USE_CPU, which silently "
                                 "disables DeepSpeed; on CPU use DS_ACCELERATOR=cpu and leave use_cpu off")
        log_with = [r for r in (args.report_to or []) if r != "none"]
        self.accelerator = Accelerator(
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            deepspeed_plugin=getattr(args, "deepspeed_plugin", None) if args.deepspeed else None,
            log_with=log_with or None, project_dir=str(self.output_dir),
            mixed_precision="bf16" if args.bf16 else ("fp16" if args.fp16 else "no"),
            cpu=bool(args.use_cpu))
        set_seed(args.seed)

        # Everything the user can get wrong is checked before a model is loaded or trained.
        self.tokenizer = load_tokenizer(args.model_name_or_path, padding_side="left")
        if prompts is not None:
            if not prompts:
                raise ClinalignError("the prompt set is empty: nothing to train on")
            self.prompts = [Prompt(f"prompts[{i}]", p, origin=f"prompts[{i}]") for i, p in enumerate(prompts)]
            self.prompts_source = None
        else:
            self.prompts = load_prompt_set(args.prompts_path, args.max_train_samples)
            self.prompts_source = str(resolve_prompts_path(args.prompts_path))
        from transformers import AutoConfig

        from align.models import resolve_model

        model_config = AutoConfig.from_pretrained(resolve_model(args.model_name_or_path))
        self.prompt_ids = encode_prompts(self.prompts, self.tokenizer, max_prompt_length=args.max_prompt_length,
                                         response_length=args.response_length,
                                         context=context_length(model_config))
        self.reward = make_reward_source(args, reward_fn, device=self.accelerator.device)
        preflight_reward(self.reward, [p.text for p in self.prompts])
        self.guard = RewardGuard(args.guard_config())
        self._setup_judge(judge_fn, judge_prompts, context_length(model_config))
        self.world = self.accelerator.num_processes
        self.num_updates = args.num_updates(len(self.prompts), self.world)
        self.eos_ids = eos_token_ids(self.tokenizer, generation_eos(args.model_name_or_path))

        base = load_causal_lm(args.model_name_or_path, dtype=args.dtype)
        policy, self.reference = build_policy(base, args)
        critic_backbone = None
        if args.critic == "critic_model":
            from transformers import AutoModel

            critic_spec = args.critic_model_path or args.model_name_or_path
            critic_config = AutoConfig.from_pretrained(resolve_model(critic_spec))
            if (getattr(critic_config, "vocab_size", None) or 0) < len(self.tokenizer):
                raise ClinalignError(f"critic_model_path '{critic_spec}' has vocab_size "
                                     f"{getattr(critic_config, 'vocab_size', None)} but the policy's tokenizer has "
                                     f"{len(self.tokenizer)} tokens; the critic reads the policy's token ids")
            critic_backbone = AutoModel.from_pretrained(resolve_model(critic_spec))
        if args.gradient_checkpointing:
            policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if args.use_peft:
                policy.enable_input_require_grads()
        model = PolicyWithValue(policy, args.critic, critic_backbone)

        self.optimizer_steps = self.num_updates * args.num_ppo_epochs * args.num_mini_batches
        if args.deepspeed and getattr(args, "hf_deepspeed_config", None) is not None:
            args.hf_deepspeed_config.trainer_config_finalize(args, model, self.optimizer_steps)
        optimizer, scheduler = self._optimizer(model)
        from accelerate.utils import DummyScheduler

        if isinstance(scheduler, DummyScheduler):  # DeepSpeed builds and steps its own scheduler
            self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, optimizer, scheduler)
        else:
            # Not prepared: accelerate would step it once per process; we step it once per optimizer step.
            self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
            self.scheduler = scheduler
            self.accelerator.register_for_checkpointing(self.scheduler)
        if self.reference is not None:
            self.reference = self._prepare_reference(self.reference)
        self._deepspeed = self.accelerator.state.deepspeed_plugin is not None
        self._reuse_first_forward = self._can_reuse_first_forward()
        self._first_forward: tuple[torch.Tensor, torch.Tensor] | None = None
        self.kl_ctl = make_kl_controller(args.kl_coef, args.adaptive_kl, args.target_kl, args.kl_horizon)
        # Added to the value head's output; None until the first batch sets it (init_value_from_returns).
        self.value_offset: float | None = None if args.init_value_from_returns else 0.0
        self.step = 0
        self.metrics = MetricsLog(self.output_dir)
        self._trainable = {n for n, p in self.accelerator.unwrap_model(self.model).named_parameters()
                           if p.requires_grad}
        self.accelerator.register_save_state_pre_hook(self._keep_trainable_weights)

    def _can_reuse_first_forward(self) -> bool:
        """The first micro batch of the first PPO epoch runs the very policy that scored the rollout (ratio 1):
        when one micro batch is the whole rollout batch, the scoring forward is run with gradients and reused
        instead of repeated (one policy forward per update saved; bench_ppo_vs_trl112.py). Only where the two
        forwards are the same function: no dropout (train and eval modes agree), no checkpointing (eval
        mode would store every activation), no DeepSpeed engine."""
        args = self.args
        single = (args.per_device_train_batch_size == args.local_batch_size <= args.local_rollout_forward_batch_size
                  and args.gradient_accumulation_steps == 1)  # one rollout chunk, one micro batch
        dropout = any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in self.model.modules())
        return single and not dropout and not args.gradient_checkpointing and not self._deepspeed

    # ---------------------------------------------------------------- setup helpers
    def _setup_judge(self, judge_fn: RewardFn | None, judge_prompts: Sequence[str] | None,
                     context: int | None) -> None:
        """The guard's held-out judge and prompts, checked (and pre-flighted) before any model loads."""
        args = self.args
        self.judge: RewardSource | None = None
        self.judge_prompts: list[Prompt] = []
        self.judge_prompt_ids: list[list[int]] = []
        self.judge_prompts_source: str | None = None
        if judge_fn is None and args.guard_judge_function:
            judge_fn = import_callable(args.guard_judge_function, "guard_judge_function")
        if args.guard_judge_every == 0:
            if judge_fn is not None:
                warnings.warn("a judge is configured but guard_judge_every is 0: it will not be used", stacklevel=3)
            return
        if judge_fn is None:
            raise ClinalignError("guard_judge_every > 0 needs a judge: pass judge_fn= or set guard_judge_function")
        if judge_prompts is not None:
            prompts = [Prompt(f"judge_prompts[{i}]", p, origin=f"judge_prompts[{i}]")
                       for i, p in enumerate(judge_prompts)]
        elif args.guard_judge_prompts_path:
            prompts = load_prompt_set(args.guard_judge_prompts_path)
            self.judge_prompts_source = str(resolve_prompts_path(args.guard_judge_prompts_path))
        else:
            raise ClinalignError("guard_judge_every > 0 needs held-out prompts: set guard_judge_prompts_path")
        self.judge_prompts = prompts[:args.guard_judge_max_prompts]
        if not self.judge_prompts:
            raise ClinalignError("the guard's held-out judge prompt set is empty")
        self.judge_prompt_ids = encode_prompts(self.judge_prompts, self.tokenizer,
                                               max_prompt_length=args.max_prompt_length,
                                               response_length=args.response_length, context=context)
        self.judge = RewardSource(fn=judge_fn, name=args.guard_judge_function or getattr(judge_fn, "__name__", "judge"))
        preflight_reward(self.judge, [p.text for p in self.judge_prompts])

    def _optimizer(self, model):
        from accelerate.utils import DummyOptim, DummyScheduler
        from transformers import get_scheduler

        params = [p for p in model.parameters() if p.requires_grad]
        ds = self.accelerator.state.deepspeed_plugin
        ds_cfg = ds.deepspeed_config if ds is not None else {}
        warmup = self.args.get_warmup_steps(self.optimizer_steps)
        if "optimizer" in ds_cfg:  # the DeepSpeed JSON owns the optimizer (e.g. CPU-offloaded Adam)
            opt = DummyOptim(params, lr=self.args.learning_rate, weight_decay=self.args.weight_decay)
        else:
            opt = torch.optim.AdamW(params, lr=self.args.learning_rate, weight_decay=self.args.weight_decay,
                                    betas=(self.args.adam_beta1, self.args.adam_beta2), eps=self.args.adam_epsilon)
        if "scheduler" in ds_cfg:
            sched = DummyScheduler(opt, total_num_steps=self.optimizer_steps, warmup_num_steps=warmup)
        elif isinstance(opt, DummyOptim):  # DeepSpeed's optimizer, our schedule built on it once it exists
            sched = DummyScheduler(opt, total_num_steps=self.optimizer_steps, warmup_num_steps=warmup,
                                   lr_scheduler_callable=lambda o: get_scheduler(
                                       self.args.lr_scheduler_type, o, num_warmup_steps=warmup,
                                       num_training_steps=self.optimizer_steps))
        else:
            sched = get_scheduler(self.args.lr_scheduler_type, opt, num_warmup_steps=warmup,
                                  num_training_steps=self.optimizer_steps)
        return opt, sched

    def _prepare_reference(self, ref):
        """Full fine-tuning only: the frozen copy; under ZeRO-3 it gets its own inference engine."""
        ds = self.accelerator.state.deepspeed_plugin
        if ds is None or ds.zero_stage != 3:
            return ref.to(self.accelerator.device)
        import deepspeed

        cfg = {"train_micro_batch_size_per_gpu": self.args.per_device_train_batch_size,
               "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
               "bf16": {"enabled": bool(self.args.bf16)}, "fp16": {"enabled": bool(self.args.fp16)}}
        engine, *_ = deepspeed.initialize(model=ref, config=cfg)
        engine.eval()
        return engine

    def _keep_trainable_weights(self, models, weights, output_dir) -> None:
        """Checkpoints hold only what trains (LoRA + critic), not the frozen base: MBs, not GBs."""
        for i, sd in enumerate(weights):
            seen, kept = set(), {}
            for k, v in sd.items():
                name = k.removeprefix("module.")
                if name in self._trainable and v.data_ptr() not in seen:
                    seen.add(v.data_ptr())
                    kept[k] = v
            weights[i] = kept

    # ---------------------------------------------------------------- rollout
    def _batch_prompt_indices(self, step: int) -> list[int]:
        """This process's prompts of update `step`: each of local / k prompts k times in a row."""
        k, rank = self.args.samples_per_prompt, self.accelerator.process_index
        local = self.args.local_batch_size // k
        first = step * local * self.world + rank * local
        return [i for e in range(first, first + local)
                for i in [_rollout_order(len(self.prompts), e, self.args.seed)] * k]

    def _unwrapped_for_generation(self):
        """Under ZeRO-3 the sharded weights are gathered for generation (as TRL does)."""
        ds = self.accelerator.state.deepspeed_plugin
        unwrapped = self.accelerator.unwrap_model(self.model)
        if ds is not None and ds.zero_stage == 3 and self.args.ds3_gather_for_generation:
            import deepspeed

            return deepspeed.zero.GatheredParameters(list(self.model.parameters())), unwrapped
        import contextlib

        return contextlib.nullcontext(), unwrapped

    @torch.no_grad()
    def _rollout(self, indices: list[int]) -> dict:
        args, device = self.args, self.accelerator.device
        chunks = []
        self.model.eval()
        gather_ctx, unwrapped = self._unwrapped_for_generation()
        # One padding width for the whole rollout batch, so chunks concatenate and mini batches mix freely.
        all_query, all_qmask = left_pad([self.prompt_ids[i] for i in indices], self.tokenizer.pad_token_id)
        for start in range(0, len(indices), args.local_rollout_forward_batch_size):
            idx = indices[start:start + args.local_rollout_forward_batch_size]
            query = all_query[start:start + args.local_rollout_forward_batch_size]
            qmask = all_qmask[start:start + args.local_rollout_forward_batch_size]
            with gather_ctx:
                response, rmask, has_eos = generate(unwrapped.policy, query.to(device), qmask.to(device), args,
                                                    self.tokenizer, self.eos_ids)
            prompts = [self.prompts[i].text for i in idx]
            texts = decode_responses(self.tokenizer, response, rmask)
            raw = torch.tensor(self.reward(prompts, texts), dtype=torch.float32)
            scores = apply_penalties(raw, has_eos, rmask.sum(1), args)
            batch = RolloutBatch(query, qmask, response, rmask, prompts, texts, scores, raw, has_eos)
            chunks.append(self._score_tokens(batch))
        merged = {k: torch.cat([c[k] for c in chunks]) for k in chunks[0] if isinstance(chunks[0][k], torch.Tensor)}
        merged["prompts"] = sum((c["prompts"] for c in chunks), [])
        merged["responses"] = sum((c["responses"] for c in chunks), [])
        merged["rewarded"] = baselined(merged["scores"], args.samples_per_prompt, args.reward_baseline)
        return merged

    def _score_tokens(self, batch: RolloutBatch) -> dict:
        """Old log-probs and values from the policy, reference log-probs with the adapter off."""
        device, t = self.accelerator.device, self.args.temperature
        ids, attn = batch.input_ids.to(device), batch.attention_mask.to(device)
        ctx = batch.query.shape[1]
        response = batch.response.to(device)
        with torch.set_grad_enabled(self._reuse_first_forward):
            logits, values = self.model(ids, attn, ctx)
        if self._reuse_first_forward:  # kept, graph and all, for the first micro batch (_optimise)
            self._first_forward = (logits, values)
        logprobs = logprobs_from_logits(logits.detach(), response, t)
        values = values.detach()
        del logits
        unwrapped = self.accelerator.unwrap_model(self.model)
        with reference_mode(unwrapped.policy, self.reference) as ref:
            if self.reference is None:
                ref_logits, _ = self.model(ids, attn, ctx, with_values=False)
            else:
                from align.recipes.ppo.policy import decoder_hidden, response_logits

                ref_model = ref.module if hasattr(ref, "module") else ref
                ref_logits = response_logits(ref_model, decoder_hidden(ref, ids, attn), ctx)
        ref_logprobs = logprobs_from_logits(ref_logits, response, t)
        return {"query": batch.query, "query_mask": batch.query_mask, "response": batch.response,
                "response_mask": batch.response_mask, "logprobs": logprobs.cpu(), "ref_logprobs": ref_logprobs.cpu(),
                "values": values.float().cpu() + (self.value_offset or 0.0), "scores": batch.scores,
                "raw_scores": batch.raw_scores,
                "has_eos": batch.has_eos, "prompts": batch.prompts, "responses": batch.responses}

    # ---------------------------------------------------------------- advantages
    def _advantages(self, r: dict) -> dict:
        args, mask = self.args, r["response_mask"]
        maskf = mask.float()
        log_ratio = (r["logprobs"] - r["ref_logprobs"]) * maskf
        kl = log_ratio if args.kl_estimator == "k1" else ((-log_ratio).exp() - 1) + log_ratio
        kl = kl * maskf
        non_score = -self.kl_ctl.value * kl
        rewards = non_score.clone()
        last = (mask.sum(1) - 1).clamp_min(0)
        rewards[torch.arange(len(last)), last] += r["rewarded"]
        if args.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False)
        if self.value_offset is None:  # first update of a fresh run: the head is all zeros, values are exactly 0
            self.value_offset = self._mean_return(rewards, mask)
            r["values"] = (r["values"] + self.value_offset) * maskf
        advantages, returns = compute_gae(rewards, r["values"], mask, args.gamma, args.lam)
        if args.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
        r.update(kl=kl, non_score=non_score, advantages=advantages, returns=returns)
        return r

    def _mean_return(self, rewards: torch.Tensor, mask: torch.Tensor) -> float:
        """Mean discounted reward-to-go over all response tokens (all processes): the best constant critic.

        Why: value clipping (cliprange_value, in reward units) lets a critic move only about that far
        from its old values per update, so one starting at 0 would lag returns of larger magnitude
        for many updates, and its error would leak into every advantage meanwhile.
        """
        _, togo = compute_gae(rewards, torch.zeros_like(rewards), mask, self.args.gamma, 1.0)
        local = masked_mean(togo, mask).to(self.accelerator.device)
        return float(self.accelerator.reduce(local, reduction="mean"))

    # ---------------------------------------------------------------- optimisation
    def _loss(self, mb: dict, forward: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, dict]:
        args, device = self.args, self.accelerator.device
        query, response = mb["query"].to(device), mb["response"].to(device)
        mask = mb["response_mask"].to(device)
        if forward is None:
            ids = torch.cat([query, response], 1)
            attn = torch.cat([mb["query_mask"].to(device), mask], 1)
            forward = self.model(ids, attn, query.shape[1])
        logits, vpred = forward
        vpred = vpred + (self.value_offset or 0.0)
        scaled = logits / args.temperature
        new_logp = logprobs_from_logits(logits, response, args.temperature)
        old_logp, adv = mb["logprobs"].to(device), mb["advantages"].to(device)
        values, returns = mb["values"].to(device), mb["returns"].to(device)

        vclipped = values + (vpred - values).clamp(-args.cliprange_value, args.cliprange_value)
        vf_losses = torch.maximum((vpred - returns) ** 2, (vclipped - returns) ** 2)
        vf_loss = 0.5 * masked_mean(vf_losses, mask)
        log_ratio = new_logp - old_logp
        ratio = log_ratio.exp()
        pg_losses = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - args.cliprange, 1 + args.cliprange))
        pg_loss = masked_mean(pg_losses, mask)
        loss = pg_loss + args.vf_coef * vf_loss
        with torch.no_grad():
            stats = {
                "loss/policy": pg_loss, "loss/value": vf_loss, "loss/total": loss,
                "policy/approxkl": 0.5 * masked_mean(log_ratio ** 2, mask),
                "policy/clipfrac": masked_mean((-adv * ratio < pg_losses).float(), mask),
                "policy/entropy": masked_mean(entropy_from_logits(scaled), mask),
                "val/clipfrac": masked_mean(((vclipped - returns) ** 2 > (vpred - returns) ** 2).float(), mask),
                "val/ratio": masked_mean(ratio, mask),
            }
        return loss, {k: float(v.detach()) for k, v in stats.items()}

    def _optimise(self, r: dict) -> dict[str, float]:
        args = self.args
        self.model.train()
        stats: dict[str, list[float]] = defaultdict(list)
        n, mini, micro = args.local_batch_size, args.mini_batch_size, args.per_device_train_batch_size
        for _ in range(args.num_ppo_epochs):
            order = torch.randperm(n)
            for m0 in range(0, n, mini):
                for u0 in range(m0, m0 + mini, micro):
                    sel = order[u0:u0 + micro]
                    mb = {k: r[k][sel] for k in ("query", "query_mask", "response", "response_mask", "logprobs",
                                                 "advantages", "values", "returns")}
                    reused, self._first_forward = self._first_forward, None
                    if reused is not None:  # the rollout's own forward, rows in this micro batch's order
                        reused = (reused[0][sel], reused[1][sel])
                    with self.accelerator.accumulate(self.model):
                        loss, s = self._loss(mb, reused)
                        self.accelerator.backward(loss)
                        if self.accelerator.sync_gradients and args.max_grad_norm:
                            self.accelerator.clip_grad_norm_(self.model.parameters(), args.max_grad_norm)
                        self.optimizer.step()
                        if self.accelerator.sync_gradients:
                            self.scheduler.step()
                        self.optimizer.zero_grad()
                    for k, v in s.items():
                        stats[k].append(v)
        out = {k: sum(v) / len(v) for k, v in stats.items()}
        out["loss/first_micro_batch"] = stats["loss/total"][0]  # pre-update loss: what a resume must reproduce
        return out

    # ---------------------------------------------------------------- checkpoints
    def _checkpoint_dirs(self) -> list[Path]:
        found = [p for p in self.output_dir.glob("checkpoint-*") if p.is_dir() and (p / STATE_NAME).exists()]
        return sorted(found, key=lambda p: int(p.name.split("-")[1]))

    def save_checkpoint(self) -> Path:
        final = self.output_dir / f"checkpoint-{self.step}"
        tmp = self.output_dir / f".checkpoint-{self.step}.tmp"
        if self.accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        if self._deepspeed:  # the engine writes its own (sharded) files; skip the frozen base weights
            self.accelerator.save_state(str(tmp), exclude_frozen_parameters=True)
        else:
            self.accelerator.save_state(str(tmp), safe_serialization=True)
        if self.accelerator.is_main_process:
            state = {"step": self.step, "kl_ctl": self.kl_ctl.state_dict(), "num_updates": self.num_updates,
                     "value_offset": self.value_offset, "guard": self.guard.state_dict()}
            (tmp / STATE_NAME).write_text(json.dumps(state, indent=2))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)  # a kill mid-save leaves only a .tmp folder, never a broken checkpoint
            self._prune()
        self.accelerator.wait_for_everyone()
        return final

    def _prune(self) -> None:
        limit = self.args.save_total_limit
        if limit:
            for old in self._checkpoint_dirs()[:-limit]:
                shutil.rmtree(old, ignore_errors=True)

    def resume(self, checkpoint: str | Path | bool | None) -> int:
        if checkpoint in (None, False, "", "false", "False"):
            return 0
        if checkpoint in (True, "true", "True", "latest"):
            dirs = self._checkpoint_dirs()
            if not dirs:
                return 0
            checkpoint = dirs[-1]
        path = Path(checkpoint)
        if not (path / STATE_NAME).exists():
            raise ClinalignError(f"'{path}' is not a clinalign PPO checkpoint (no {STATE_NAME})")
        if self._deepspeed:
            self.accelerator.load_state(str(path), load_module_strict=False)
        else:
            self.accelerator.load_state(str(path), strict=False)
        state = json.loads((path / STATE_NAME).read_text())
        self.step = int(state["step"])
        self.kl_ctl.load_state_dict(state["kl_ctl"])
        self.value_offset = float(state.get("value_offset") or 0.0)  # older checkpoints: a zero-started critic
        self.guard.load_state_dict(state.get("guard", {}))
        if self.accelerator.is_main_process:
            self.metrics.truncate_after(self.step)
        return self.step

    # ---------------------------------------------------------------- main loop
    def train(self, resume_from_checkpoint: str | Path | bool | None = None) -> Path:
        from rich.progress import Progress

        args, acc = self.args, self.accelerator
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        acc.wait_for_everyone()
        resumed = self.resume(resume_from_checkpoint if resume_from_checkpoint is not None
                              else args.resume_from_checkpoint)
        if not resumed and acc.is_main_process:
            self.metrics.truncate_after(0)  # a fresh run starts a fresh curve in a reused output_dir
        if acc.trackers == [] and acc.log_with:
            acc.init_trackers(args.run_name or "clinalign-ppo", config=_flat_config(args))
        with Progress(disable=not acc.is_local_main_process) as progress:
            task = progress.add_task("PPO updates", total=self.num_updates, completed=self.step)
            while self.step < self.num_updates:
                row = self.train_step()
                progress.update(task, advance=1, description=f"PPO reward {row['objective/scores']:+.3f} "
                                                             f"KL {row['objective/kl']:.3f}")
                stop = self.guard.should_stop
                # The last update is checkpointed too, so a finished run can be extended (more max_steps).
                if args.save_steps and (self.step % int(args.save_steps) == 0 or self.step == self.num_updates
                                        or stop):
                    self.save_checkpoint()
                if stop:
                    acc.print(f"reward-hacking guard: stopping after update {self.step} of {self.num_updates} "
                              f"({', '.join(self.guard.last)})")
                    break
        return self.finish()

    def train_step(self) -> dict:
        t0 = time.perf_counter()
        # The judge sees the policy entering this update, i.e. the one that generates its rollouts.
        judged = self._judge_eval() if self.judge is not None and self.guard.judge_due(self.step) else None
        r = self._advantages(self._rollout(self._batch_prompt_indices(self.step)))
        opt_stats = self._optimise(r)
        self.step += 1
        row = self._log(r, opt_stats, time.perf_counter() - t0, judged)
        self.kl_ctl.update(row["objective/kl"], self.args.local_batch_size * self.world)
        return row

    @torch.no_grad()
    def _judge_eval(self) -> tuple[float, float]:
        """Greedy answers to the held-out prompts: (mean training score, penalties included; mean judge score)."""
        args, device, bs = self.args, self.accelerator.device, self.args.local_rollout_forward_batch_size
        self.model.eval()
        gather_ctx, unwrapped = self._unwrapped_for_generation()
        query, qmask = left_pad(self.judge_prompt_ids, self.tokenizer.pad_token_id)
        texts: list[str] = []
        has_eos, lengths = [], []
        for s in range(0, len(query), bs):
            with gather_ctx:
                response, rmask, eos = generate(unwrapped.policy, query[s:s + bs].to(device),
                                                qmask[s:s + bs].to(device), args, self.tokenizer, self.eos_ids,
                                                greedy=True)
            texts += decode_responses(self.tokenizer, response, rmask)
            has_eos.append(eos)
            lengths.append(rmask.sum(1))
        prompts = [p.text for p in self.judge_prompts]
        raw = torch.tensor(self.reward(prompts, texts), dtype=torch.float32)
        reward = apply_penalties(raw, torch.cat(has_eos), torch.cat(lengths), args).mean()
        judge = torch.tensor(self.judge(prompts, texts), dtype=torch.float32).mean()
        g = self.accelerator.reduce(torch.stack([reward, judge]).to(device), reduction="mean").cpu().tolist()
        return g[0], g[1]

    def _guard_row(self, g: list[float], judged: tuple[float, float] | None) -> dict:
        """The guard's view of this update (g: the process-averaged values _log computed)."""
        stats = GuardStats(step=self.step, score=g[0], kl=g[2], length_mean=g[7], eos_rate=g[6], distinct_2=g[9],
                           judge_reward=judged[0] if judged else None, judge_score=judged[1] if judged else None)
        flags = self.guard.update(stats)  # every process sees the same numbers, so all agree on a stop
        row = {"guard/length_mean": stats.length_mean, "guard/eos_rate": stats.eos_rate,
               "guard/distinct_2": stats.distinct_2, "guard/kl": stats.kl}
        drift = self.guard.length_drift(stats.length_mean)
        if drift is not None:
            row["guard/length_drift"] = drift
        if judged:
            row.update({"guard/judge_reward": judged[0], "guard/judge_score": judged[1]})
        row["guard/flags"] = flags
        return row

    def _log(self, r: dict, opt_stats: dict, seconds: float, judged: tuple[float, float] | None = None) -> dict:
        acc, mask = self.accelerator, r["response_mask"]
        local = torch.tensor([
            float(r["scores"].mean()), float(r["raw_scores"].mean()), float(r["kl"].sum(1).mean()),
            float(r["non_score"].sum(1).mean()), float(masked_mean(-r["logprobs"], mask) * mask.sum(1).float().mean()),
            explained_variance(r["values"], r["returns"], mask), float(r["has_eos"].float().mean()),
            float(mask.sum(1).float().mean()), float(masked_mean(r["values"], mask)),
            distinct_n(r["responses"], 2),  # per process, then averaged
        ], device=acc.device)
        g = acc.reduce(local, reduction="mean").cpu().tolist()
        kl_coef = self.kl_ctl.value
        row = {"step": self.step, "episode": self.step * self.args.local_batch_size * self.world,
               "objective/scores": g[0], "objective/raw_scores": g[1], "objective/kl": g[2],
               "objective/non_score_reward": g[3], "objective/rlhf_reward": g[0] - kl_coef * g[2],
               "objective/entropy": g[4], "val/explained_variance": g[5], "val/eos_rate": g[6],
               "val/response_length": g[7], "val/mean": g[8], "kl_coef": kl_coef,
               "lr": self.scheduler.get_last_lr()[0], "time/update_s": seconds}
        row.update(opt_stats)
        row.update(self._guard_row(g, judged))
        if acc.is_main_process:
            row["sample"] = {"prompt": r["prompts"][0][:200], "response": r["responses"][0][:300]}
            if self.args.logging_steps and (self.step % max(1, int(self.args.logging_steps)) == 0
                                            or self.step == self.num_updates):
                self.metrics.append(row)
                acc.log({k: v for k, v in row.items() if isinstance(v, (int, float))}, step=self.step)
        return row

    def finish(self) -> Path:
        """Final adapter/model + value head + tokenizer + curves + manifest in output_dir."""
        from safetensors.torch import save_file

        acc = self.accelerator
        acc.wait_for_everyone()
        state = acc.get_state_dict(self.model)  # gathers ZeRO-3 shards
        if acc.is_main_process:
            unwrapped = acc.unwrap_model(self.model)
            policy_sd = {k[len("policy."):]: v for k, v in state.items() if k.startswith("policy.")}
            unwrapped.policy.save_pretrained(self.output_dir, state_dict=policy_sd, safe_serialization=True)
            critic = {k: v.contiguous() for k, v in state.items() if k.startswith(("value_head.", "critic_backbone."))}
            # V(s) = value_head(h) + offset: the offset is the critic's starting point (init_value_from_returns)
            critic["value_head.offset"] = torch.tensor([self.value_offset or 0.0])
            save_file(critic, str(self.output_dir / VALUE_HEAD_NAME))
            self.tokenizer.save_pretrained(self.output_dir)
            (self.output_dir / "ppo_config.json").write_text(self.args.to_json_string())
            plot_curves(self.metrics.rows(), self.output_dir / CURVES_NAME,
                        title=f"PPO {self.args.model_name_or_path}")
            self._write_manifest()
        acc.end_training()
        return self.output_dir

    def _write_manifest(self) -> None:
        from clinalign_base.manifest import build_manifest, write_manifest

        rows = self.metrics.rows()
        last = rows[-1] if rows else {}
        first = rows[0] if rows else {}
        from align.models import resolve_model
        from align.recipes.recipe_utils import model_ref

        inputs = [input_ref("prompts", self.prompts_source)]
        inputs.append(model_ref(self.args.model_name_or_path, resolve_model(self.args.model_name_or_path)))
        if self.config_path:
            inputs.append(input_ref("config", self.config_path))
        if self.args.reward_model_path:
            inputs.append(input_ref("reward_model", self.args.reward_model_path))
        if self.judge_prompts_source:
            inputs.append(input_ref("judge_prompts", self.judge_prompts_source))
        metrics = {k: last.get(k) for k in ("objective/scores", "objective/kl", "objective/rlhf_reward",
                                           "val/explained_variance", "policy/clipfrac")}
        metrics.update({"updates": self.step, "planned_updates": self.num_updates,
                        "first_score": first.get("objective/scores"),
                        "reward_mean": last.get("objective/scores"),
                        "episodes": last.get("episode")})
        outputs = [{"role": "metrics", "path": str(self.output_dir / METRICS_NAME), "sha256": ""}]
        manifest = build_manifest(
            "policy_adapter" if self.args.use_peft else "policy", self.output_dir.name, inputs=inputs, outputs=outputs, metrics=metrics,
            config=json.loads(self.args.to_json_string()),
            annotations={"trainer": "clinalign.recipes.ppo", "peft": bool(self.args.use_peft), "critic": self.args.critic,
                         "reward": self.reward.name, "value_offset": self.value_offset,
                         "guard": {**self.guard.summary(), "judge": self.judge.name if self.judge else None}})
        write_manifest(self.output_dir, manifest)


def input_ref(role: str, spec: str | None) -> dict:
    """Hash small inputs; for model folders hash only config files (a 70B checkpoint is 140 GB)."""
    import hashlib

    from clinalign_base.manifest import file_sha256, path_sha256

    if not spec:
        return {"role": role, "path": "", "sha256": ""}
    path = Path(spec)
    if spec.startswith("builtin:"):
        from align.models import resolve_model

        path = Path(resolve_model(spec))
    if path.is_file():
        return {"role": role, "path": spec, "sha256": file_sha256(path)}
    if path.is_dir():
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        if size < 2 << 30:
            return {"role": role, "path": spec, "sha256": path_sha256(path)}
        h = hashlib.sha256()
        for name in ("config.json", "adapter_config.json", "generation_config.json"):
            if (path / name).exists():
                h.update((path / name).read_bytes())
        return {"role": role, "path": spec, "sha256": "config-only:" + h.hexdigest()}
    return {"role": role, "path": spec, "sha256": ""}


def _flat_config(args) -> dict:
    return {k: v for k, v in args.to_dict().items() if isinstance(v, (int, float, str, bool))}


def train_from_yaml(path: str | None, overrides: dict | None = None, extra_args: list[str] | None = None) -> Path:
    """`clinalign ppo --config path [--key value ...]`: parse with TrlParser, train, return output_dir."""
    from align.recipes.ppo.ppo_config import parse_ppo_config

    args = parse_ppo_config(path, overrides, extra_args)
    return PPOTrainer(args, config_path=path).train()
