"""Figures (matplotlib, Agg canvas; no pyplot global state), written atomically to PNG."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping, Optional, Union

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ugcn.evaluate.accuracy_confidence import AccuracyConfidence
from ugcn.io import atomic_file


def plot_accuracy_confidence(
    curves: Mapping[str, AccuracyConfidence],
    path: Union[str, os.PathLike],
    *,
    title: Optional[str] = None,
    overwrite: bool = True,
) -> Path:
    """Draw accuracy-confidence curves (x = FP remaining, y = TP remaining), AUC in the legend.

    Args:
      curves: method name -> :class:`AccuracyConfidence`.
      path: output ``.png``.
      title: figure title.
      overwrite: replace an existing file.

    Returns:
      The path written.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise ValueError(f"{path}: exists already (pass --overwrite to replace it)")
    fig = Figure(figsize=(6.5, 5.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, curve in curves.items():
        auc = "undefined" if math.isnan(curve.auc) else f"{100 * curve.auc:.2f}"
        ax.plot(curve.fp, curve.tp, label=f"{name} [{auc}]", linewidth=1.4)
    ax.plot([0, 1], [0, 1], color="0.7", linestyle=":", linewidth=1)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("FP lesions remaining (fraction)")
    ax.set_ylabel("TP lesions remaining (fraction)")
    ax.set_title(title or "Accuracy-confidence curves (AUC %)")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_file(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    return path
