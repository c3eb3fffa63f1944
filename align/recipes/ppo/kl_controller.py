"""KL-penalty coefficients: fixed, or adaptive towards a target KL (Ziegler et al. 2019, eq. 2).

Adaptive rule: e = clip(KL / target - 1, -0.2, 0.2); beta <- beta * (1 + e * n_steps / horizon),
where KL is the batch's mean per-sequence KL (nats) and n_steps the episodes in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FixedKLController:
    value: float

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


@dataclass
class AdaptiveKLController:
    value: float
    target: float
    horizon: int

    def __post_init__(self):
        if self.target <= 0 or self.horizon <= 0:
            raise ValueError(f"adaptive KL needs target > 0 and horizon > 0 (got {self.target}, {self.horizon})")

    def update(self, current_kl: float, n_steps: int) -> float:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


def make_kl_controller(init: float, adaptive: bool, target: float, horizon: int):
    if init < 0:
        raise ValueError(f"kl_coef must be >= 0, got {init}")
    return AdaptiveKLController(init, target, horizon) if adaptive else FixedKLController(init)
