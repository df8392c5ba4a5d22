"""Evaluation: overlap metrics, accuracy-confidence curves, rank statistics, plots."""
from ugcn.evaluate.metrics import dice

__all__ = ["dice"]
