"""Overlap metrics on masks (numpy, any shape)."""
from __future__ import annotations

import numpy as np


def dice(prediction: np.ndarray, reference: np.ndarray, *, empty: float = 1.0) -> float:
    """Volume Dice ``2|A∩B| / (|A| + |B|)`` of two masks of the same shape (non-zero = foreground).

    Args:
      prediction, reference: ``[...]`` masks.
      empty: the value returned when both masks are empty (default 1: both agree there is nothing).
    """
    a = np.asarray(prediction) != 0
    b = np.asarray(reference) != 0
    if a.shape != b.shape:
        raise ValueError(f"dice: shapes differ, {a.shape} vs {b.shape}")
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return float(empty)
    return 2.0 * int(np.logical_and(a, b).sum()) / total
