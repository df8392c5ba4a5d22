"""Figures (matplotlib, Agg canvas; no pyplot global state), written atomically to PNG.

matplotlib is an optional dependency (the ``figures`` extra: ``pip install "ugcn[figures]"``). Importing
this module does not need it; drawing does, and without it raises :class:`FiguresUnavailableError`, whose
message says how to install it. Runs that draw figures as a by-product check :func:`figures_available`
first and skip their figures with a warning instead of failing after the work.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union

from ugcn.evaluate.accuracy_confidence import AccuracyConfidence
from ugcn.io import atomic_file

INSTALL_HINT = 'figures need matplotlib: pip install "ugcn[figures]"'


class FiguresUnavailableError(ImportError, ValueError):
    """matplotlib cannot be imported. A ``ValueError`` too, so the command line reports it in one line."""


def _matplotlib() -> tuple[Any, Any]:
    """``(Figure, FigureCanvasAgg)``, or :class:`FiguresUnavailableError` saying how to install matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise FiguresUnavailableError(f"{INSTALL_HINT} ({err})") from None
    return Figure, FigureCanvasAgg


def figures_available() -> bool:
    """True when matplotlib imports (figures can be drawn)."""
    try:
        _matplotlib()
    except FiguresUnavailableError:
        return False
    return True


def new_figure(figsize: tuple[float, float] = (6.4, 4.8), dpi: int = 110) -> Any:
    """A ``matplotlib.figure.Figure`` on an Agg canvas (no pyplot, no global state).

    Raises:
      FiguresUnavailableError: matplotlib is not installed.
    """
    figure, canvas = _matplotlib()
    fig = figure(figsize=figsize, dpi=dpi)
    canvas(fig)
    return fig


def save_figure(fig: Any, path: Union[str, os.PathLike]) -> Path:
    """Write ``fig`` to ``path`` as PNG through a temporary file and a rename."""
    path = Path(path)
    with atomic_file(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    return path


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

    Raises:
      FiguresUnavailableError: matplotlib is not installed.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise ValueError(f"{path}: exists already (pass --overwrite to replace it)")
    fig = new_figure(figsize=(6.5, 5.5), dpi=110)
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
    return save_figure(fig, path)
