"""Resumable per-case outputs (ugcn.parallel.resume): which case folders are finished, which refuse."""
import json

import numpy as np
import pytest

from ugcn.parallel.resume import SETTINGS_KEY, case_state


def test_case_state(tmp_path):
    settings = {"seed": 0, "dilation": (5, 7, 7)}
    assert case_state(tmp_path / "missing", settings) == "todo"
    done = tmp_path / "done"
    done.mkdir()
    (done / "report.json").write_text(json.dumps({SETTINGS_KEY: {"seed": 0, "dilation": [5, 7, 7]}}))
    assert case_state(done, settings) == "finished"
    assert case_state(done, settings, overwrite=True) == "todo"
    with pytest.raises(ValueError, match="seed differ"):
        case_state(done, {**settings, "seed": 1})
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="no report.json"):
        case_state(junk, settings)


# ---------------------------------------------------------------- the cohort runner
def _toy_cohort(tmp_path, n=5):
    """Inputs: .npy arrays of two shapes; a case's output is its array squared and the sum in the report."""
    src = tmp_path / "in"
    src.mkdir()
    paths = []
    for i in range(n):
        shape = (3, 2) if i % 2 else (4,)
        path = src / f"case{i}.npy"
        np.save(path, np.arange(np.prod(shape), dtype=np.float64).reshape(shape) + i)
        paths.append(path)
    return paths


def _process(calls, fail_after=None):
    def process(batch):
        calls.append([p.stem for p in batch])
        if fail_after is not None and len(calls) > fail_after:
            raise RuntimeError("interrupted")
        assert len({np.load(p).shape for p in batch}) == 1  # batches never mix shapes
        out = []
        for p in batch:
            x = np.load(p)

            def write(folder, x=x):
                np.save(folder / "squared.npy", x**2)
                return {"sum": float(x.sum())}

            out.append((p.stem, write))
        return out

    return process


def _run(paths, out, calls, *, fail_after=None, settings=None, overwrite=False):
    from ugcn.parallel.resume import plan_cohort, run_cohort

    plan = plan_cohort(paths, out, settings or {"power": 2}, overwrite=overwrite, name=lambda p: p.stem)
    return run_cohort(plan, out, _process(calls, fail_after), batch_size=2, group=lambda p: np.load(p).shape,
                      case_summary=lambda rep: {"sum": rep["sum"]},
                      aggregate=lambda cases: {"total": sum(c["sum"] for c in cases.values())})


def test_cohort_runner_resumes_to_the_outputs_of_a_clean_run(tmp_path):
    paths = _toy_cohort(tmp_path)
    clean_calls, calls = [], []
    clean = _run(paths, tmp_path / "clean", clean_calls)
    assert sorted(sum(clean_calls, [])) == [p.stem for p in paths]
    with pytest.raises(RuntimeError, match="interrupted"):
        _run(paths, tmp_path / "out", calls, fail_after=1)  # one batch written, then killed
    done = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert len(done) == 2 and not (tmp_path / "out" / "summary.json").exists()
    calls.clear()
    resumed = _run(paths, tmp_path / "out", calls)
    assert sorted(sum(calls, [])) == sorted(set(p.stem for p in paths) - set(done))  # finished cases skipped
    assert resumed == clean and resumed["pending"] == []
    assert resumed["total"] == pytest.approx(sum(float(np.load(p).sum()) for p in paths))
    for p in paths:  # every case equals the clean run's, computed here with numpy
        np.testing.assert_array_equal(np.load(tmp_path / "out" / p.stem / "squared.npy"), np.load(p) ** 2)
        rep = json.loads((tmp_path / "out" / p.stem / "report.json").read_text())
        assert rep == json.loads((tmp_path / "clean" / p.stem / "report.json").read_text())
    assert sorted(q.name for q in (tmp_path / "out").iterdir()) == sorted([p.stem for p in paths] + ["summary.json"])
    calls.clear()
    assert _run(paths, tmp_path / "out", calls) == clean and calls == []  # nothing left to do


def test_cohort_runner_refuses_other_settings_unless_overwrite(tmp_path):
    paths = _toy_cohort(tmp_path, n=2)
    calls = []
    _run(paths, tmp_path / "out", calls)
    with pytest.raises(ValueError, match="other settings"):
        _run(paths, tmp_path / "out", calls, settings={"power": 3})
    calls.clear()
    _run(paths, tmp_path / "out", calls, settings={"power": 3}, overwrite=True)
    assert sorted(sum(calls, [])) == ["case0", "case1"]
