"""Resumable cohort runs: one output folder per case, finished when its report names the run's settings.

A cohort command writes each case's folder whole (:func:`ugcn.io.atomic_directory`), with a
``report.json`` that records the settings it was made with under :data:`SETTINGS_KEY`. A re-run asks
:func:`case_state` about every case and skips the finished ones: nothing is recomputed, and an interrupted
run loses at most the batch it was working on.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

#: The report entry holding the settings a case was made with.
SETTINGS_KEY = "run_settings"
REPORT = "report.json"


def normalized_settings(settings: Mapping[str, Any]) -> dict:
    """``settings`` as they read back from JSON (tuples become lists), so that they compare equal."""
    return json.loads(json.dumps(dict(settings), default=list))


def case_state(case_dir: Path, settings: Mapping[str, Any], *, overwrite: bool = False, report: str = REPORT) -> str:
    """``"todo"`` or ``"finished"`` for one case's output folder.

    Finished: the folder holds ``report`` whose :data:`SETTINGS_KEY` equals ``settings``. A missing or
    empty folder, or any folder with ``overwrite``, is to do.

    Raises:
      ValueError: a folder made with other settings, or one holding files but no readable report (not
        written by a cohort run), unless ``overwrite``; the message says what to do.
    """
    case_dir = Path(case_dir)
    if case_dir.exists() and not case_dir.is_dir():
        raise ValueError(f"{case_dir}: exists and is not a folder")
    if overwrite or not case_dir.exists() or not any(case_dir.iterdir()):
        return "todo"
    path = case_dir / report
    if not path.is_file():
        raise ValueError(f"{case_dir}: holds files but no {report} (not a finished output of this command); "
                         "remove it or pass --overwrite")
    try:
        made = json.loads(path.read_text()).get(SETTINGS_KEY)
    except (OSError, ValueError, AttributeError) as err:
        raise ValueError(f"{path}: unreadable ({err}); remove the folder or pass --overwrite") from None
    wanted = normalized_settings(settings)
    if made != wanted:
        differ = sorted(k for k in set(wanted) | set(made or {}) if (made or {}).get(k) != wanted.get(k))
        raise ValueError(f"{case_dir}: made with other settings ({', '.join(differ) or 'unknown'} differ); pass "
                         "--overwrite to recompute, or choose another --out")
    return "finished"
