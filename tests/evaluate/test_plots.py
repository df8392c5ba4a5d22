"""Figures: drawn with matplotlib when it is installed; without it (the optional `figures` extra) the library
imports and a requested figure fails with one error that names the extra."""
import subprocess
import sys

import numpy as np
import pytest

from ugcn.evaluate import accuracy_confidence_curve
from ugcn.evaluate.plots import figures_available, plot_accuracy_confidence


def test_accuracy_confidence_figure_is_a_png(tmp_path):
    assert figures_available()
    curve = accuracy_confidence_curve(np.array([0.9, 0.1, 0.5, 0.3]), np.array([True, False, True, False]))
    path = plot_accuracy_confidence({"m": curve}, tmp_path / "ac.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["ac.png"]


def test_without_matplotlib_the_library_imports_and_a_figure_fails_clearly(tmp_path):
    code = f"""
import sys
sys.modules["matplotlib"] = None  # as if it were not installed
import numpy as np
import pytest
import pytest
import ugcn.evaluate, ugcn.lesion, ugcn.refine
from ugcn.evaluate.plots import FiguresUnavailableError, figures_available, plot_accuracy_confidence
from ugcn.evaluate import accuracy_confidence_curve
assert not figures_available()
curve = accuracy_confidence_curve(np.array([0.9, 0.1]), np.array([True, False]))
try:
    plot_accuracy_confidence({{"m": curve}}, {str(tmp_path / "ac.png")!r})
except ValueError as err:  # the command line turns ValueErrors into one line
    assert isinstance(err, FiguresUnavailableError) and isinstance(err, ImportError)
    print(err)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert 'pip install "ugcn[figures]"' in out.stdout
    assert list(tmp_path.iterdir()) == []


def test_plot_writes_png(tmp_path):
    is_fp = np.array([1, 0, 1, 0], bool)
    curves = {
        "good": accuracy_confidence_curve(np.array([0.9, 0.1, 0.8, 0.2]), is_fp),
        "none": accuracy_confidence_curve(np.array([0.9, 0.1]), np.array([False, False])),
    }
    path = plot_accuracy_confidence(curves, tmp_path / "curves.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="exists"):
        plot_accuracy_confidence(curves, path, overwrite=False)


def test_runs_skip_their_by_product_figures_with_a_warning(monkeypatch):
    import warnings

    from ugcn.evaluate import plots

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert plots.figures_or_warn("curves.png")  # matplotlib installed: draw, no warning
    monkeypatch.setattr(plots, "figures_available", lambda: False)
    with pytest.warns(RuntimeWarning, match=r'curves.png not drawn: .*pip install "ugcn\[figures\]"'):
        assert not plots.figures_or_warn("curves.png")
