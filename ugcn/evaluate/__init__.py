"""Evaluation: overlap metrics, accuracy-confidence curves, rank statistics, plots."""
from ugcn.evaluate.accuracy_confidence import (
    AccuracyConfidence,
    accuracy_confidence_auc,
    accuracy_confidence_curve,
    spearman,
)
from ugcn.evaluate.metrics import dice
from ugcn.evaluate.plots import plot_accuracy_confidence

__all__ = [
    "AccuracyConfidence",
    "accuracy_confidence_auc",
    "accuracy_confidence_curve",
    "dice",
    "plot_accuracy_confidence",
    "spearman",
]
