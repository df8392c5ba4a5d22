"""Evaluation: overlap metrics, accuracy-confidence and retention curves, rank statistics, subject-bootstrap
intervals, plots."""
from ugcn.evaluate.accuracy_confidence import (
    AccuracyConfidence,
    accuracy_confidence_auc,
    accuracy_confidence_curve,
    spearman,
)
from ugcn.evaluate.bootstrap import Interval, bootstrap_auc, bootstrap_aucs
from ugcn.evaluate.metrics import dice
from ugcn.evaluate.plots import plot_accuracy_confidence
from ugcn.evaluate.retention import RetentionCurve, lesion_retention_curve

__all__ = [
    "AccuracyConfidence",
    "Interval",
    "RetentionCurve",
    "accuracy_confidence_auc",
    "accuracy_confidence_curve",
    "bootstrap_auc",
    "bootstrap_aucs",
    "dice",
    "lesion_retention_curve",
    "plot_accuracy_confidence",
    "spearman",
]
