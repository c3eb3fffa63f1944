"""Reward-hacking guard for online RL (PPO here; GRPO/RLOO can feed it the same per-update stats).

A policy that games its reward usually shows it in cheap batch statistics before anyone reads a
sample: responses grow longer, stop ending their turn (EOS), repeat themselves, drift far from the
reference (KL), or score better on the training reward while a held-out judge scores them worse.
`RewardGuard.update(stats)` turns one update's statistics into the flags raised at that update; it
is pure (no model), so the thresholds are unit-testable on hand-made sequences.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from align.evaluation.stats import distinct_n  # noqa: F401  (re-exported: the trainer logs it)
from clinalign_base.errors import ClinalignError

KL_OVER_BUDGET = "kl_over_budget"
LENGTH_DRIFT = "length_drift"
EOS_RATE_DROP = "eos_rate_drop"
REPETITION = "repetition"
REWARD_JUDGE_DIVERGENCE = "reward_judge_divergence"
FLAGS = (KL_OVER_BUDGET, LENGTH_DRIFT, EOS_RATE_DROP, REPETITION, REWARD_JUDGE_DIVERGENCE)


@dataclass
class GuardConfig:
    """Thresholds; None switches a check off. See PPOConfig's guard_* fields for their meaning."""

    kl_budget: float | None = None
    max_length_drift: float | None = 0.5
    max_eos_drop: float | None = 0.3
    min_distinct2: float | None = 0.3
    judge_every: int = 0
    judge_min_reward_rise: float = 0.0
    judge_min_score_drop: float = 0.0
    baseline_updates: int = 1
    action: Literal["flag", "stop"] = "flag"

    def __post_init__(self) -> None:
        if self.action not in ("flag", "stop"):
            raise ClinalignError(f"guard_action must be 'flag' or 'stop', got '{self.action}'")
        if self.baseline_updates < 1:
            raise ClinalignError(f"guard_baseline_updates must be >= 1, got {self.baseline_updates}")
        if self.judge_every < 0:
            raise ClinalignError(f"guard_judge_every must be >= 0, got {self.judge_every}")

    @classmethod
    def from_args(cls, args: Any) -> GuardConfig:
        """From any config with guard_* fields (PPOConfig; a GRPO/RLOO config may carry the same names)."""
        defaults = cls()
        return cls(**{k: getattr(args, f"guard_{k}", getattr(defaults, k)) for k in asdict(defaults)})


@dataclass
class GuardStats:
    """One update's batch statistics (means over the rollout batch, all processes)."""

    step: int
    score: float
    kl: float                       # nats per sequence, as objective/kl
    length_mean: float              # response tokens, EOS included
    eos_rate: float                 # share of responses that ended with EOS
    distinct_2: float
    judge_reward: float | None = None   # training reward on the held-out prompts (greedy)
    judge_score: float | None = None    # the judge's score on the same responses


@dataclass
class RewardGuard:
    config: GuardConfig
    flags: dict[str, int] = field(default_factory=dict)        # flag -> first update it was raised
    stopped_at_update: int | None = None
    baseline: list[tuple[float, float]] = field(default_factory=list)  # (length, eos_rate) of the first K
    judge_baseline: tuple[float, float] | None = None           # (reward, judge score) at the first judged update
    last: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------ checks
    def _baseline(self) -> tuple[float, float] | None:
        if len(self.baseline) < self.config.baseline_updates:
            return None
        n = len(self.baseline)
        return sum(b[0] for b in self.baseline) / n, sum(b[1] for b in self.baseline) / n

    def length_drift(self, length_mean: float) -> float | None:
        """Relative length change against the baseline (0.5 = 50% longer); None until the baseline is set."""
        base = self._baseline()
        if base is None or base[0] <= 0:
            return None
        return length_mean / base[0] - 1.0

    def _drift_flags(self, s: GuardStats) -> list[str]:
        base = self._baseline()
        if base is None:
            return []
        c, out = self.config, []
        if c.max_length_drift is not None and s.length_mean > (1 + c.max_length_drift) * base[0]:
            out.append(LENGTH_DRIFT)
        if c.max_eos_drop is not None and base[1] - s.eos_rate > c.max_eos_drop:
            out.append(EOS_RATE_DROP)
        return out

    def _judge_flags(self, s: GuardStats) -> list[str]:
        if s.judge_reward is None or s.judge_score is None:
            return []
        if self.judge_baseline is None:
            self.judge_baseline = (s.judge_reward, s.judge_score)
            return []
        rise = s.judge_reward - self.judge_baseline[0]
        drop = self.judge_baseline[1] - s.judge_score
        c = self.config
        return [REWARD_JUDGE_DIVERGENCE] if rise > c.judge_min_reward_rise and drop > c.judge_min_score_drop else []

    def update(self, s: GuardStats) -> list[str]:
        """Flags raised by this update, in FLAGS order; records first sightings and a 'stop' decision."""
        c = self.config
        if len(self.baseline) < c.baseline_updates:
            self.baseline.append((s.length_mean, s.eos_rate))
        raised = self._drift_flags(s) + self._judge_flags(s)
        if c.kl_budget is not None and s.kl > c.kl_budget:
            raised.append(KL_OVER_BUDGET)
        if c.min_distinct2 is not None and s.distinct_2 < c.min_distinct2:
            raised.append(REPETITION)
        raised = [f for f in FLAGS if f in raised]
        for f in raised:
            self.flags.setdefault(f, s.step)
        if raised and c.action == "stop" and self.stopped_at_update is None:
            self.stopped_at_update = s.step
        self.last = raised
        return raised

    @property
    def should_stop(self) -> bool:
        """True right after an update that raised a flag under action 'stop'."""
        return self.config.action == "stop" and bool(self.last)

    def judge_due(self, step: int) -> bool:
        """Judge the policy entering update step+1 (0-based step): the first update, then every judge_every."""
        return self.config.judge_every > 0 and step % self.config.judge_every == 0

    # ------------------------------------------------------------------ records
    def summary(self) -> dict[str, Any]:
        """What the manifest records."""
        return {"flags": dict(self.flags), "stopped_early": self.stopped_at_update is not None,
                "stopped_at_update": self.stopped_at_update, "config": asdict(self.config)}

    def state_dict(self) -> dict[str, Any]:
        """Resumable state. A resumed run keeps earlier flags and baselines but not the stop decision."""
        return {"flags": dict(self.flags), "baseline": [list(b) for b in self.baseline],
                "judge_baseline": list(self.judge_baseline) if self.judge_baseline else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.flags = {k: int(v) for k, v in state.get("flags", {}).items()}
        self.baseline = [(float(a), float(b)) for a, b in state.get("baseline", [])]
        jb: Sequence[float] | None = state.get("judge_baseline")
        self.judge_baseline = (float(jb[0]), float(jb[1])) if jb else None
