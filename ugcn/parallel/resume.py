"""Resumable cohort runs: one output folder per case, finished when its report names the run's settings.

A cohort command writes each case's folder whole (:func:`ugcn.io.atomic_directory`), with a
``report.json`` that records the settings it was made with under :data:`SETTINGS_KEY`. A re-run asks
:func:`case_state` about every case and skips the finished ones: nothing is recomputed, and an interrupted
run loses at most the batch it was working on.

:func:`run_cohort` is the one runner every folder command uses: :func:`plan_cohort` (this process's slice of
the sorted inputs, finished cases skipped), batches of same-shaped inputs processed together, each case
written whole by :func:`write_case`, and ONE summary writer (:func:`write_summary`) on process 0 once every
process is done.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

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


@dataclasses.dataclass(frozen=True)
class CohortPlan:
    """Which cases of a cohort run this process computes.

    Attributes:
      names: every case's output folder name, in input order (the summary lists them all).
      mine: this process's inputs (:func:`~ugcn.parallel.distributed.process_slice` of the sorted inputs).
      todo: the inputs of ``mine`` whose folder is not finished with these settings.
      settings: the normalized settings every finished case's report records.
    """

    names: list[str]
    mine: list[Any]
    todo: list[Any]
    settings: dict


def plan_cohort(inputs: Sequence[Any], out_dir: Path, settings: Mapping[str, Any], *, overwrite: bool = False,
                name: Callable[[Any], str] = lambda p: Path(p).name) -> CohortPlan:
    """Plan a resumable cohort run over ``inputs`` writing ``out_dir/<name(input)>/``.

    Raises:
      ValueError: ``out_dir`` is not a folder, or a case folder :func:`case_state` refuses (made with other
        settings, or not an output of this run), checked for every case before any work.
    """
    from ugcn.parallel.distributed import process_slice

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: exists and is not a folder")
    wanted = normalized_settings(settings)
    mine = process_slice(list(inputs))
    states = [case_state(out_dir / name(p), wanted, overwrite=overwrite) for p in mine]  # all, before any work
    return CohortPlan([name(p) for p in inputs], mine, [p for p, s in zip(mine, states) if s == "todo"], wanted)


def write_case(case_dir: Path, write: Callable[[Path], dict], settings: Mapping[str, Any]) -> dict:
    """One case's folder, built whole in a temporary sibling and swapped in.

    Args:
      case_dir: ``out_dir/<case>``.
      write: ``write(folder) -> report``: writes the case's files into ``folder`` and returns its report.
      settings: the run's settings (recorded under :data:`SETTINGS_KEY`; a re-run with equal settings skips
        the case).

    Returns:
      The report as written to ``report.json``.
    """
    from ugcn.io import atomic_directory

    with atomic_directory(case_dir, overwrite=True) as tmp:
        report = dict(write(tmp))
        report[SETTINGS_KEY] = normalized_settings(settings)
        (tmp / REPORT).write_text(json.dumps(report, indent=2) + "\n")
    return report


def write_summary(
    out_dir: Path,
    names: Sequence[str],
    case_summary: Callable[[dict], dict],
    *,
    aggregate: Optional[Callable[[dict[str, dict]], dict]] = None,
) -> dict:
    """``out_dir/summary.json`` of a cohort run, from every case's ``report.json`` (the one summary writer).

    Args:
      names: every case of the run, finished or not, in order.
      case_summary: ``report -> the case's entry`` (what this command's summary shows per case).
      aggregate: ``{case: entry} -> more top-level fields`` (e.g. mean Dice), over the finished cases.

    Returns:
      ``{"ugcn_version", "volumes": {case: entry}, "pending": [cases without a report], **aggregate}``.
    """
    from ugcn import __version__
    from ugcn.io import write_text_atomic

    out_dir = Path(out_dir)
    summary: dict[str, Any] = {"ugcn_version": __version__, "volumes": {}, "pending": []}
    for name in names:
        path = out_dir / name / REPORT
        if not path.is_file():
            summary["pending"].append(name)
            continue
        summary["volumes"][name] = case_summary(json.loads(path.read_text()))
    if aggregate is not None:
        summary.update(aggregate(summary["volumes"]))
    write_text_atomic(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def run_cohort(
    plan: CohortPlan,
    out_dir: Path,
    process: Callable[[list[Any]], Iterable[tuple[str, Callable[[Path], dict]]]],
    *,
    batch_size: int,
    case_summary: Callable[[dict], dict],
    aggregate: Optional[Callable[[dict[str, dict]], dict]] = None,
    group: Optional[Callable[[Any], Any]] = None,
    progress: bool = False,
    what: str = "ugcn cohort run",
) -> Optional[dict]:
    """Run :attr:`CohortPlan.todo` in batches, write each case whole, then the summary (process 0).

    Args:
      plan: :func:`plan_cohort`.
      process: ``process(batch of inputs) -> [(case name, write(folder) -> report), ...]``: the batch's work
        (e.g. one sharded MC call), then one writer per case.
      batch_size: inputs per batch (batches never mix ``group`` keys).
      case_summary, aggregate: as :func:`write_summary`.
      group: ``input -> key`` of inputs that may share a batch (e.g. the image shape); ``None``: any.
      what: the name of the barrier all processes meet at before the summary.

    Returns:
      The summary on process 0, ``None`` on the others.
    """
    import jax
    from tqdm.auto import tqdm

    from ugcn.parallel.distributed import barrier

    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    groups: dict[Any, list[Any]] = {}
    for item in plan.todo:
        groups.setdefault(group(item) if group is not None else None, []).append(item)
    batches = [g[k : k + batch_size] for g in groups.values() for k in range(0, len(g), batch_size)]
    for batch in tqdm(batches, desc="batches", disable=not progress or len(batches) < 2):
        for name, write in process(batch):
            write_case(Path(out_dir) / name, write, plan.settings)
    barrier(f"{what}: every process done")
    if jax.process_index() != 0:
        return None
    return write_summary(out_dir, plan.names, case_summary, aggregate=aggregate)
