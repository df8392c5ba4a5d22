"""The folder mode of the commands (``mcdo --images``, ``refine-batch``, ``lesions score --images``).

One function, :func:`run_image_folder`, over the one resumable cohort runner
(:func:`ugcn.parallel.resume.run_cohort`): every image of a folder gets ``OUT/<case>/`` (written whole once
its batch is done, with a ``report.json`` recording the run's settings), a re-run skips the finished cases,
same-shaped volumes share a batch of ``--batch-size`` (rounded up to a multiple of ``--devices``), several
processes (``JAX_COORDINATOR_ADDRESS``/``JAX_NUM_PROCESSES``/``JAX_PROCESS_ID``, or SLURM) each take their slice
of the sorted images, and process 0 writes ``OUT/summary.json``. A command supplies only its settings, the
work of one batch and its summary columns.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional

#: ``process(batch of image paths) -> [(case name, write(folder) -> report), ...]``
Process = Callable[[list[Path]], Iterable[tuple[str, Callable[[Path], dict]]]]


def _shape_key(path: Path) -> tuple:
    """The shape an image has in the models' RAS+ order, read from its header (volumes of one shape stack)."""
    import nibabel as nib

    from ugcn.io import canonical_shape

    header: Any = nib.load(str(path))
    return canonical_shape(header.shape, header.affine)


def run_image_folder(
    args: Any,
    *,
    command: str,
    settings: Mapping[str, Any],
    prepare: Callable[[Any, int], Process],
    case_summary: Callable[[dict], dict],
    aggregate: Optional[Callable[[dict[str, dict]], dict]] = None,
    verb: str = "process",
    quiet: bool = False,
) -> int:
    """Run a command over ``args.images`` into ``args.out`` (see the module docstring).

    Args:
      args: the parsed arguments: ``images``, ``out``, ``overwrite``, ``batch_size``, ``devices``.
      command: the command's name in messages (``"mcdo"``).
      settings: what a finished case must have been made with for a re-run to skip it.
      prepare: ``prepare(mesh, batch size) -> process``, called once when there is work (load models here).
      case_summary, aggregate: the summary's columns (:func:`ugcn.parallel.resume.write_summary`).
      verb: what is done to a volume, for the progress line (``"sample"``).
      quiet: print nothing.
    """
    from ugcn.parallel import describe, device_mesh, initialize_distributed, mesh_size, padded_size

    initialize_distributed()
    import jax

    from ugcn.io import case_name, image_folder
    from ugcn.parallel.resume import plan_cohort, run_cohort

    images = image_folder(Path(args.images))
    out_dir = Path(args.out)
    mesh = device_mesh(args.devices)  # a bad count fails before the work
    plan = plan_cohort(images, out_dir, settings, overwrite=args.overwrite, name=case_name)
    todo, mine = len(plan.todo), len(plan.mine)
    size = padded_size(min(args.batch_size, max(todo, 1)), mesh_size(mesh))
    if not quiet:
        where = f"process {jax.process_index()} of {jax.process_count()}: " if jax.process_count() > 1 else ""
        print(f"{command}: {where}{todo} of {mine} volumes to {verb} ({mine - todo} finished, skipped); "
              f"{describe(mesh, min(size, todo))} per batch of {size}")
    process: Process = prepare(mesh, size) if todo else (lambda batch: [])
    summary = run_cohort(plan, out_dir, process, batch_size=size, case_summary=case_summary, aggregate=aggregate,
                         group=_shape_key, progress=not quiet, what=f"ugcn {command}")
    if summary is not None and not quiet:
        done = len(summary["volumes"])
        line = f"{command}: {done} of {len(images)} volumes done, written to {out_dir}"
        if summary["pending"]:
            line += f"; {len(summary['pending'])} still pending: {', '.join(summary['pending'])}"
        print(line)
    return 0
