"""Resumable per-case outputs (ugcn.parallel.resume): which case folders are finished, which refuse."""
import json

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
