"""Method R's per-volume self-check: score every GCN fit on labelled nodes it did not train on.

Method R labels the certain nodes (``U <= τ``) with the CNN's prediction ``Ŷ`` and holds 20 % of them out of
training (the reference code only logs them). Those held-out nodes are data the fit did not see, with the
label the method itself trusts, so they tell whether the fit learnt anything: :func:`validation_scores`
scores the fit's predictions there (balanced accuracy and Dice against ``Ŷ``), and :func:`check_fit` says
whether a fit may be returned. A fit fails the check when

  - it collapsed: one class on (almost) every node although ``Ŷ`` holds both classes there (the failure
    measured on CT phantoms: an empty mask, returned with exit code 0); or
  - its validation balanced accuracy is below ``min_balanced_accuracy`` (a constant predictor scores 0.5);
  - or its validation Dice is below ``min_dice``.

A failed fit is never returned silently: the caller (:mod:`ugcn.refine.pipeline`) falls back to ``Ŷ`` and
says so. Everything is vectorised over a leading candidate axis, so the variants of one volume
(:mod:`ugcn.refine.variants`) are scored together.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

from ugcn.config import setting


@dataclasses.dataclass(frozen=True)
class SelfCheckConfig:
    """Thresholds of :func:`check_fit`.

    Attributes:
      min_balanced_accuracy: least validation balanced accuracy against ``Ŷ`` (0.5 = a constant predictor).
      min_dice: least validation Dice against ``Ŷ`` (foreground on the held-out labelled nodes).
      collapse_fraction: a fit that predicts one class on more than ``1 - collapse_fraction`` of the nodes,
        where ``Ŷ`` has both classes on at least ``collapse_fraction`` of them, has collapsed.
      fallback: replace a failed fit's masks by ``Ŷ`` (True) or only warn (False).
    """

    min_balanced_accuracy: float = setting(0.75, min=0, max=1)
    min_dice: float = setting(0.5, min=0, max=1)
    collapse_fraction: float = setting(0.01, min=0, lt=0.5)
    fallback: bool = True


class FitScores(NamedTuple):
    """Scores of fits of one graph (leading axis ``C``: candidates; scalars for one fit).

    Attributes:
      balanced_accuracy: ``f64[C]`` mean of the recalls of the classes present on the validation nodes
        (NaN without validation nodes).
      dice: ``f64[C]`` Dice of the predicted against ``Ŷ``'s foreground on the validation nodes (1 when
        both are empty, NaN without validation nodes).
      accuracy: ``f64[C]`` plain accuracy on the validation nodes.
      foreground_fraction: ``f64[C]`` share of all nodes predicted foreground.
      n_validation: validation nodes.
      validation_foreground: validation nodes with ``Ŷ = 1``.
      labelled_foreground_fraction: share of ``Ŷ = 1`` among all nodes (the collapse reference).
    """

    balanced_accuracy: np.ndarray
    dice: np.ndarray
    accuracy: np.ndarray
    foreground_fraction: np.ndarray
    n_validation: int
    validation_foreground: int
    labelled_foreground_fraction: float


def validation_scores(node_probs: np.ndarray, labels: np.ndarray, validation_mask: np.ndarray,
                      threshold: float = 0.5) -> FitScores:
    """Score fits on the held-out labelled nodes.

    Args:
      node_probs: ``f32[C, N]`` (or ``f32[N]``) GCN foreground probability per node.
      labels: ``f32[N]`` ``Ŷ`` at the nodes (0/1).
      validation_mask: ``bool[N]`` labelled nodes not used in training.
      threshold: output threshold (the one the masks use).

    Returns:
      :class:`FitScores` with arrays ``[C]`` (``[]`` for a 1-D ``node_probs``).
    """
    probs = np.asarray(node_probs, np.float64)
    pred = probs > threshold  # [..., N]
    y = np.asarray(labels) > 0.5
    val = np.asarray(validation_mask, bool)
    n_val = int(val.sum())
    pos, neg = val & y, val & ~y
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    tp = np.sum(pred & pos, axis=-1)
    tn = np.sum(~pred & neg, axis=-1)
    fp = np.sum(pred & neg, axis=-1)
    recalls = [r for r, n in ((tp / max(n_pos, 1), n_pos), (tn / max(n_neg, 1), n_neg)) if n > 0]
    nan = np.full(pred.shape[:-1], np.nan)
    balanced = np.mean(recalls, axis=0) if recalls else nan
    accuracy = (tp + tn) / n_val if n_val else nan
    denom = 2 * tp + fp + (n_pos - tp)
    dice = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 1.0) if n_val else nan
    return FitScores(
        balanced_accuracy=np.asarray(balanced, np.float64),
        dice=np.asarray(dice, np.float64),
        accuracy=np.asarray(accuracy, np.float64),
        foreground_fraction=np.mean(pred, axis=-1).astype(np.float64),
        n_validation=n_val,
        validation_foreground=n_pos,
        labelled_foreground_fraction=float(np.mean(y)) if y.size else 0.0,
    )


def check_fit(scores: FitScores, config: SelfCheckConfig = SelfCheckConfig()) -> tuple[np.ndarray, list]:
    """Which fits pass the self-check, and why the others do not.

    Args:
      scores: :class:`FitScores` of ``C`` fits (or one).
      config: :class:`SelfCheckConfig`.

    Returns:
      ``(passed bool[C], reasons list[str])``: ``reasons[c]`` is ``""`` for a passing fit, else one sentence.
    """
    frac = np.atleast_1d(scores.foreground_fraction)
    ba = np.atleast_1d(scores.balanced_accuracy)
    dsc = np.atleast_1d(scores.dice)
    c = config.collapse_fraction
    both = c <= scores.labelled_foreground_fraction <= 1.0 - c
    reasons = []
    for f, b, d in zip(frac, ba, dsc):
        if both and f < c:
            reasons.append(f"collapsed: background on {100 * (1 - f):.1f} % of the nodes "
                           f"(the prediction has {100 * scores.labelled_foreground_fraction:.1f} % foreground there)")
        elif both and f > 1.0 - c:
            reasons.append(f"collapsed: foreground on {100 * f:.1f} % of the nodes "
                           f"(the prediction has {100 * scores.labelled_foreground_fraction:.1f} % there)")
        elif np.isfinite(b) and b < config.min_balanced_accuracy:
            reasons.append(f"validation balanced accuracy {b:.3f} < {config.min_balanced_accuracy} "
                           "(a constant predictor scores 0.5)")
        elif np.isfinite(d) and scores.validation_foreground > 0 and d < config.min_dice:
            reasons.append(f"validation Dice {d:.3f} < {config.min_dice}")
        else:
            reasons.append("")
    return np.array([r == "" for r in reasons]), reasons


def scores_dict(scores: FitScores, index: int | None = None) -> dict:
    """JSON-ready ``{name: value}`` of one fit's scores (``index`` into the candidate axis, or scalars)."""
    pick = (lambda a: float(np.atleast_1d(a)[index])) if index is not None else (lambda a: float(np.asarray(a)))
    clean = lambda v: None if not np.isfinite(v) else round(v, 6)  # noqa: E731
    return {
        "validation_balanced_accuracy": clean(pick(scores.balanced_accuracy)),
        "validation_dice": clean(pick(scores.dice)),
        "validation_accuracy": clean(pick(scores.accuracy)),
        "foreground_fraction": clean(pick(scores.foreground_fraction)),
        "validation_nodes": scores.n_validation,
        "validation_foreground": scores.validation_foreground,
    }
