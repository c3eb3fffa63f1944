"""Reward models: training (Bradley-Terry, clinical multi-objective), scoring, evaluation."""

import annotation  # noqa: F401  (offline defaults first)
