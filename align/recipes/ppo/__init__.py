"""clinalign's PPO: LoRA policy whose reference is the adapter switched off, reward model through text.

Lazy exports so `import align.recipes.ppo` (e.g. by the CLI's --help) does not pull in torch.
"""

from __future__ import annotations

__all__ = ["PPOConfig", "PPOTrainer", "train_from_yaml"]


def __getattr__(name: str):
    if name == "PPOConfig":
        from align.recipes.ppo.ppo_config import PPOConfig

        return PPOConfig
    if name == "PPOTrainer":
        from align.recipes.ppo.ppo_trainer import PPOTrainer

        return PPOTrainer
    if name == "train_from_yaml":
        from align.recipes.ppo.ppo_trainer import train_from_yaml

        return train_from_yaml
    raise AttributeError(name)
