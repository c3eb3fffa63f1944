"""Evaluation: statistics, splits, win-rates, medical QA, promotion."""
