"""The example notebooks execute without error, and are committed without outputs.

Each notebook runs in a fresh kernel (the ``python3`` kernel; jupyter_client starts it with this
interpreter) whose working directory is a temporary folder, so nothing is written into the repository.
They take about a minute each on a 2-core CPU (marked ``slow``; still part of ``make test``).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ["01_refinement.ipynb", "02_lesion_uncertainty.ipynb"]


@pytest.mark.parametrize("name", NAMES)
def test_committed_without_outputs(name):
    nb = json.loads((NOTEBOOKS / name).read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code, f"{name} has no code cell"
    assert all(c.get("outputs") == [] and c.get("execution_count") is None for c in code), (
        f"{name} carries outputs: clear them (python notebooks/build_notebooks.py writes clean notebooks)"
    )
    tags = code[0].get("metadata", {}).get("tags", [])
    assert "parameters" in tags, f"{name}: first code cell is not the parameters cell"


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_executes(name, tmp_path):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(tmp_path)}}
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError on the first failing cell
    seconds = time.perf_counter() - start
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    figures = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert figures >= 2, f"{name}: expected figures, got {figures}"
    print(f"{name}: {seconds:.0f} s")
