"""Policy side of clinalign and the umbrella: CLI, models, generation, DPO, PPO, evaluation, rounds."""

import clinalign_base  # noqa: F401  (sets offline / telemetry-off defaults before any HF import)
