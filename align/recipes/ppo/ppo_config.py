"""`PPOConfig`: TrainingArguments fields people know, plus the PPO knobs (TRL's old names kept).

Batch vocabulary (the same as TRL's removed PPOTrainer, per process):
  micro batch       = per_device_train_batch_size                 (one forward/backward)
  mini batch        = micro batch * gradient_accumulation_steps    (one optimizer step)
  rollout batch     = mini batch * num_mini_batches                (prompts generated per update)
An *update* (a "step" in logs, checkpoints and `max_steps`) is one rollout batch followed by
`num_ppo_epochs` passes over its mini batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from transformers import TrainingArguments

from clinalign_base.errors import ClinalignError


@dataclass
class OnlineRLScriptArguments:
    """Data and reward fields every clinalign online-RL workflow (PPO, GRPO, RLOO) shares, same names."""

    prompts_path: str = field(default="data/medquad/medquad_prompts_500.jsonl", metadata={
        "help": "Prompts: JSONL (prompt|question [, id]) or a saved datasets folder."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N prompts."})
    max_prompt_length: int | None = field(default=None, metadata={
        "help": "Longest chat-formatted prompt in policy tokens; longer prompts are an error "
                "(default: the model's context minus the response length)."})
    reward_model_path: str | None = field(default=None, metadata={
        "help": "Sequence-classification reward model: a folder from `clinalign reward train`, or builtin:*."})
    allow_untrained_reward: bool = field(default=False, metadata={
        "help": "Accept a reward backbone with an untrained head (e.g. builtin:minilm-l6): smoke runs only."})
    reward_function: str | None = field(default=None, metadata={
        "help": "Instead of a reward model: 'package.module:function' taking (prompts, responses) -> floats."})
    reward_max_length: int | None = field(default=None, metadata={
        "help": "Reward-model truncation length (default: the one saved with the reward model)."})
    num_threads: int | None = field(default=None, metadata={"help": "torch CPU threads (None: OMP_NUM_THREADS)."})


@dataclass
class PolicyModelArguments:
    """The policy fields, named as in `trl.ModelConfig` (which GRPO/RLOO configs use directly)."""

    model_name_or_path: str = field(default="builtin:smollm2-135m-instruct",
                                    metadata={"help": "Policy: a builtin:* spec or a local HF folder."})
    dtype: str = field(default="float32", metadata={"help": "float32 | bfloat16 | float16 for the weights."})
    use_peft: bool = field(default=True, metadata={"help": "LoRA on the policy (reference = adapter off)."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (update scale = alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input (0: rollouts and "
                                                       "training see the same policy)."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        metadata={"help": "Module names LoRA wraps (LLaMA-family names by default)."})


@dataclass
class PPOConfig(OnlineRLScriptArguments, PolicyModelArguments, TrainingArguments):
    """Configuration of clinalign's PPO trainer. YAML files are parsed into it with `trl.TrlParser`."""

    # TrainingArguments overrides: CPU-friendly defaults (TRL's configs default to bf16).
    output_dir: str | None = field(default="runs/ppo")
    learning_rate: float = field(default=1e-5)
    per_device_train_batch_size: int = field(default=4)
    logging_steps: float = field(default=1)
    save_steps: float = field(default=10)
    bf16: bool = field(default=False)

    # Episodes and batches.
    total_episodes: int | None = field(default=None, metadata={
        "help": "Prompts to roll out in total (all processes); default num_train_epochs * len(prompts). "
                "max_steps > 0 overrides it."})
    num_mini_batches: int = field(default=1, metadata={"help": "Mini batches per rollout batch."})
    rollout_batch_size: int | None = field(default=None, metadata={
        "help": "Optional check: prompts per rollout per process; must equal "
                "per_device_train_batch_size * gradient_accumulation_steps * num_mini_batches."})
    samples_per_prompt: int = field(default=1, metadata={
        "help": "Responses sampled per prompt in a rollout batch (must divide it). With 2 or more, each "
                "response's score is taken relative to the mean of its siblings' (reward_baseline)."})
    reward_baseline: Literal["none", "leave_one_out"] = field(default="leave_one_out", metadata={
        "help": "With samples_per_prompt >= 2: leave_one_out subtracts from each score the mean score of "
                "the other responses to the same prompt (RLOO's baseline), so the advantage reflects the "
                "answer, not how easy the question was; none keeps the raw scores."})
    local_rollout_forward_batch_size: int = field(default=16, metadata={
        "help": "Batch size of the no-grad passes (generation, reference, values, reward)."})
    num_ppo_epochs: int = field(default=4, metadata={"help": "Passes over each rollout batch."})

    # Generation.
    response_length: int = field(default=64, metadata={"help": "Max new tokens per response."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature of the rollouts."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling of the rollouts (1.0: off)."})
    missing_eos_penalty: float | None = field(default=None, metadata={
        "help": "Subtracted from the score of a response that ends without EOS."})
    length_penalty: float = field(default=0.0, metadata={
        "help": "Subtracted from the score, times the response's length / response_length."})

    # PPO objective.
    kl_coef: float = field(default=0.05, metadata={"help": "Initial coefficient of the per-token KL penalty."})
    kl_estimator: Literal["k1", "k3"] = field(default="k1", metadata={
        "help": "Per-token KL estimator: k1 = log ratio (unbiased, can be negative), k3 = Schulman's "
                "(ratio - 1) - log ratio (non-negative, lower variance)."})
    adaptive_kl: bool = field(default=False, metadata={"help": "Adapt kl_coef towards target_kl (Ziegler 2019)."})
    target_kl: float = field(default=6.0, metadata={"help": "Target KL (nats per sequence) when adaptive."})
    kl_horizon: int = field(default=10000, metadata={"help": "Horizon (episodes) of the adaptive controller."})
    cliprange: float = field(default=0.2, metadata={"help": "PPO clip range of the policy ratio."})
    cliprange_value: float = field(default=0.2, metadata={
        "help": "Clip range of the value update, in reward units, around the rollout's values."})
    vf_coef: float = field(default=0.1, metadata={"help": "Weight of the value loss in the total loss."})
    gamma: float = field(default=1.0, metadata={"help": "Discount factor of the returns."})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda (bias/variance of the advantages)."})
    whiten_rewards: bool = field(default=False, metadata={"help": "Normalise rewards within each rollout batch."})
    whiten_advantages: bool = field(default=True, metadata={
        "help": "Normalise advantages within each mini batch (mean 0, std 1)."})
    init_value_from_returns: bool = field(default=True, metadata={
        "help": "Start the critic at the first rollout batch's mean return (a fixed offset added to the "
                "zero-initialised value head) instead of 0. cliprange_value is in reward units, so a critic "
                "starting at 0 moves at most about cliprange_value per update towards returns of, say, 5."})

    # Reward-hacking guard (align/recipes/ppo/guard.py): checked after every update, recorded in metrics.jsonl.
    guard_kl_budget: float | None = field(default=None, metadata={
        "help": "Flag kl_over_budget when the mean KL to the reference (nats per response, as objective/kl) "
                "exceeds this; None: off."})
    guard_max_length_drift: float | None = field(default=0.5, metadata={
        "help": "Flag length_drift when the mean response length exceeds (1 + this) x its baseline; None: off."})
    guard_max_eos_drop: float | None = field(default=0.3, metadata={
        "help": "Flag eos_rate_drop when the share of responses ending with EOS falls more than this "
                "(absolute, e.g. 0.9 -> 0.55) below its baseline; None: off."})
    guard_min_distinct2: float | None = field(default=0.3, metadata={
        "help": "Flag repetition when distinct-2 (unique / all word bigrams of the batch's responses) "
                "falls below this; None: off."})
    guard_baseline_updates: int = field(default=1, metadata={
        "help": "The length and EOS-rate baselines are the means of the first N updates."})
    guard_judge_every: int = field(default=0, metadata={
        "help": "Every N updates (from the first), answer the held-out prompts greedily and score them with "
                "the training reward and the judge; flag reward_judge_divergence when the reward rose and the "
                "judge fell since the first judged update. 0: off."})
    guard_judge_function: str | None = field(default=None, metadata={
        "help": "The held-out judge: 'package.module:function' taking (prompts, responses) -> floats "
                "(or pass judge_fn= to PPOTrainer)."})
    guard_judge_prompts_path: str | None = field(default=None, metadata={
        "help": "Held-out judge prompts: JSONL (prompt|question [, id]) like prompts_path; keep them out of "
                "the training prompts."})
    guard_judge_max_prompts: int = field(default=16, metadata={"help": "Use the first N held-out prompts."})
    guard_judge_min_reward_rise: float = field(default=0.0, metadata={
        "help": "reward_judge_divergence needs the held-out training reward to rise by more than this "
                "(reward units)..."})
    guard_judge_min_score_drop: float = field(default=0.0, metadata={
        "help": "... while the judge's mean score falls by more than this (judge units)."})
    guard_action: Literal["flag", "stop"] = field(default="flag", metadata={
        "help": "flag: record flags and continue; stop: record, then end training cleanly after the update "
                "that raised one (final save as usual; the manifest says why)."})

    ds3_gather_for_generation: bool = field(default=True, metadata={
        "help": "ZeRO-3: gather the full policy for generation (fast; needs the whole model on one GPU). "
                "False generates through the sharded weights (slow, fits 70B)."})

    # Critic.
    critic: Literal["value_head", "critic_model"] = field(default="value_head", metadata={
        "help": "value_head: a linear head on the policy's last hidden state (no extra model); "
                "critic_model: a separate small backbone + head (critic_model_path)."})
    critic_model_path: str | None = field(default=None, metadata={
        "help": "Backbone of the separate critic; must share the policy's tokenizer (default: the policy)."})

    def __post_init__(self):
        super().__post_init__()
        self.check_batches()

    # Derived sizes ---------------------------------------------------------------------------
    @property
    def mini_batch_size(self) -> int:
        return self.per_device_train_batch_size * self.gradient_accumulation_steps

    @property
    def local_batch_size(self) -> int:
        return self.mini_batch_size * self.num_mini_batches

    def check_batches(self) -> None:
        """Batch sizes that don't fit together are an error before anything loads."""
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "num_mini_batches",
                     "num_ppo_epochs", "response_length", "local_rollout_forward_batch_size"):
            if getattr(self, name) < 1:
                raise ClinalignError(f"PPOConfig.{name} must be >= 1 (got {getattr(self, name)})")
        if self.rollout_batch_size is not None and self.rollout_batch_size != self.local_batch_size:
            raise ClinalignError(
                f"rollout_batch_size={self.rollout_batch_size} does not divide into num_mini_batches="
                f"{self.num_mini_batches} mini batches of per_device_train_batch_size="
                f"{self.per_device_train_batch_size} x gradient_accumulation_steps="
                f"{self.gradient_accumulation_steps} (= {self.local_batch_size}); fix one of them")
        if self.samples_per_prompt < 1 or self.local_batch_size % self.samples_per_prompt:
            raise ClinalignError(f"samples_per_prompt={self.samples_per_prompt} must be >= 1 and divide the "
                                 f"rollout batch of {self.local_batch_size} per process")
        if self.temperature <= 0:
            raise ClinalignError("temperature must be > 0 (PPO needs sampled responses)")
        if not 0 < self.cliprange < 1:
            raise ClinalignError(f"cliprange must be in (0, 1), got {self.cliprange}")
        if self.adaptive_kl and self.target_kl <= 0:
            raise ClinalignError("target_kl must be > 0 when adaptive_kl is on")
        if self.guard_judge_max_prompts < 1:
            raise ClinalignError(f"guard_judge_max_prompts must be >= 1 (got {self.guard_judge_max_prompts})")
        self.guard_config()  # bad guard settings fail here too

    def guard_config(self):
        from align.recipes.ppo.guard import GuardConfig

        return GuardConfig.from_args(self)

    def num_updates(self, n_prompts: int, world_size: int) -> int:
        """Rollout batches to run: max_steps if set, else total_episodes / global batch."""
        if self.max_steps and self.max_steps > 0:
            return int(self.max_steps)
        episodes = self.total_episodes or int(self.num_train_epochs * n_prompts)
        return max(1, math.ceil(episodes / (self.local_batch_size * world_size)))


def parse_ppo_config(config_path: str | None, overrides: dict | None = None,
                     extra_args: list[str] | None = None) -> PPOConfig:
    """YAML (keys = PPOConfig fields, TRL's `env:` block allowed) + overrides, via trl.TrlParser."""
    from align.recipes.recipe_utils import parse_recipe_config

    (args,) = parse_recipe_config((PPOConfig,), config_path, overrides, extra_args)
    return args
