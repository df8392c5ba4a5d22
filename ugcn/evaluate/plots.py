"""Figures (matplotlib, Agg canvas; no pyplot global state), written atomically to PNG.

matplotlib is an optional dependency (the ``figures`` extra: ``pip install "ugcn[figures]"``). Importing
this module does not need it; drawing does, and without it raises :class:`FiguresUnavailableError`, whose
message says how to install it. Runs that draw figures as a by-product check :func:`figures_available`
first and skip their figures with a warning instead of failing after the work.
"""
from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

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


def figures_or_warn(what: str) -> bool:
    """True when figures can be drawn; otherwise a ``RuntimeWarning`` says that ``what`` is skipped and how to
    install matplotlib (for runs whose figures are a by-product of their results)."""
    if figures_available():
        return True
    warnings.warn(f"{what} not drawn: {INSTALL_HINT}", RuntimeWarning, stacklevel=2)
    return False


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


def _fmt4(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.4f}"


def plot_estimator_comparison(result: Any, path: Union[str, os.PathLike]) -> Path:
    """One panel per criterion (bars per estimator) plus the reliability diagram; written atomically.

    Args:
      result: an estimator comparison (:class:`ugcn.experiments.estimator_study.EstimatorComparison`, or
        anything with its ``rows``, ``summary`` and ``reliability``).
      path: the PNG to write.

    Raises:
      FiguresUnavailableError: matplotlib is not installed.
    """

    names = [r["estimator"] for r in result.rows]
    panels: list[tuple[str, list[tuple[str, Optional[str]]], tuple[float, Optional[float]]]] = [
        ("Error detection: AUROC", [("auroc", None)], (0.0, 1.0)),
        ("Error detection: AUPRC", [("auprc", None)], (0.0, 1.0)),
        ("ECE of implied confidence 1-ũ (lower better)", [("ece_confidence", None)], (0.0, None)),
        ("Method R: mean Dice", [("r_dice_default", "default τ"), ("r_dice_best", "best τ")], (0.0, 1.0)),
        ("Method L: accuracy-confidence AUC", [("l_auc_mean", "mean"), ("l_auc_gcnn", "GCNN")], (0.0, 1.0)),
    ]
    fig = new_figure(figsize=(15, 8.5), dpi=100)
    axes = [fig.add_subplot(2, 3, i + 1) for i in range(6)]
    x = np.arange(len(names))
    for ax, (title, series, (lo, hi)) in zip(axes, panels):
        width = 0.8 / len(series)
        for j, (key, label) in enumerate(series):
            values = np.array([r[key] if r[key] is not None else np.nan for r in result.rows], float)
            ax.bar(x + (j - (len(series) - 1) / 2) * width, np.nan_to_num(values, nan=0.0), width, label=label)
            for xi, v in zip(x, values):
                if not np.isfinite(v):
                    ax.text(xi + (j - (len(series) - 1) / 2) * width, 0.01, "n/a", ha="center", fontsize=6,
                            rotation=90)
        if key == "auroc":
            ax.axhline(0.5, color="0.5", linestyle=":", linewidth=1)
        if key == "auprc" and math.isfinite(result.summary.get("error_rate", math.nan)):
            ax.axhline(result.summary["error_rate"], color="0.5", linestyle=":", linewidth=1)
        if key == "r_dice_best" and "r_dice_cnn" in result.summary:
            ax.axhline(result.summary["r_dice_cnn"], color="0.3", linestyle="--", linewidth=1, label="CNN")
        ax.set_title(title, fontsize=9)
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
        ax.set_ylim(lo, hi)
        ax.grid(axis="y", alpha=0.3)
        if any(label for _, label in series):
            ax.legend(fontsize=7)
    ax = axes[5]
    rel = result.reliability
    conf = np.array(rel["confidence"][0], float)
    acc = np.array(rel["accuracy"][0], float)
    ok = np.isfinite(conf) & np.isfinite(acc)
    ax.plot([0, 1], [0, 1], color="0.6", linestyle=":", linewidth=1)
    ax.plot(conf[ok], acc[ok], "o-", label=f"expectation (ECE {_fmt4(result.summary['ece_expectation'])})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence max_c E_c", fontsize=8)
    ax.set_ylabel("accuracy", fontsize=8)
    ax.set_title("Reliability diagram of the expectation", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    fig.suptitle(f"Uncertainty estimators on {result.summary['cases']} cases ({result.summary['voxels']} voxels)")
    fig.tight_layout()
    return save_figure(fig, path)
