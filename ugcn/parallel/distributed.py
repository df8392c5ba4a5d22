"""Several processes (hosts) on one cohort: ``jax.distributed`` set up from the environment, inputs split.

A multi-host run starts the same ``ugcn`` command once per host with the usual variables::

    JAX_COORDINATOR_ADDRESS=host0:1234 JAX_NUM_PROCESSES=4 JAX_PROCESS_ID=<0..3> ugcn refine-batch ...

(or under SLURM / Open MPI, whose variables ``jax.distributed`` detects itself). Each process then takes
its own share of the sorted input list (:func:`process_slice`) and spreads it over its own devices
(:func:`ugcn.parallel.device_mesh`); outputs are written per volume, so the processes never wait for each
other except at the end (:func:`barrier`, so that process 0 writes the cohort summary last).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Mapping, Optional, Sequence, TypeVar

import jax

T = TypeVar("T")

COORDINATOR_VAR = "JAX_COORDINATOR_ADDRESS"
NUM_PROCESSES_VAR = "JAX_NUM_PROCESSES"
PROCESS_ID_VAR = "JAX_PROCESS_ID"


@dataclasses.dataclass(frozen=True)
class DistributedSettings:
    """What :func:`initialize_distributed` would do.

    Attributes:
      mode: ``"single"`` (nothing to initialise), ``"explicit"`` (the three ``JAX_*`` variables) or
        ``"cluster"`` (SLURM / Open MPI: ``jax.distributed.initialize()`` detects the rest).
      coordinator_address, num_processes, process_id: the explicit settings (``None`` otherwise).
    """

    mode: str
    coordinator_address: Optional[str] = None
    num_processes: Optional[int] = None
    process_id: Optional[int] = None


def _int_var(env: Mapping[str, str], name: str) -> int:
    value = env[name].strip()
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not an integer") from None


def distributed_settings(environ: Optional[Mapping[str, str]] = None) -> DistributedSettings:
    """Read the multi-process settings from environment variables (default ``os.environ``).

    ``JAX_COORDINATOR_ADDRESS`` (``host:port``), ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` must be set
    together; one process (``JAX_NUM_PROCESSES=1``) is a single-process run. Without them, a SLURM job step
    of several tasks (``SLURM_NTASKS > 1``) or an Open MPI launch (``OMPI_COMM_WORLD_SIZE > 1``) selects
    JAX's cluster auto-detection.

    Raises:
      ValueError: a partial or inconsistent set of ``JAX_*`` variables.
    """
    env = os.environ if environ is None else environ
    names = (COORDINATOR_VAR, NUM_PROCESSES_VAR, PROCESS_ID_VAR)
    present = [n for n in names if env.get(n, "").strip()]
    if present:
        missing = [n for n in names if n not in present]
        if missing:
            raise ValueError(f"multi-process run: {', '.join(present)} set but {', '.join(missing)} missing "
                             "(set all three, or none)")
        address = env[COORDINATOR_VAR].strip()
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"{COORDINATOR_VAR}={address!r} must be host:port")
        count, index = _int_var(env, NUM_PROCESSES_VAR), _int_var(env, PROCESS_ID_VAR)
        if count < 1 or not 0 <= index < count:
            raise ValueError(f"{PROCESS_ID_VAR}={index} must lie in [0, {NUM_PROCESSES_VAR}={count})")
        if count == 1:
            return DistributedSettings("single")
        return DistributedSettings("explicit", address, count, index)
    for var in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        value = env.get(var, "").strip()
        if value.isdigit() and int(value) > 1:
            return DistributedSettings("cluster")
    return DistributedSettings("single")


def initialize_distributed(environ: Optional[Mapping[str, str]] = None) -> DistributedSettings:
    """Call ``jax.distributed.initialize`` when the environment describes a multi-process run.

    Safe to call more than once and in single-process runs (then it does nothing). Must run before the
    first JAX computation of the process.

    Returns:
      The :class:`DistributedSettings` acted on.
    """
    settings = distributed_settings(environ)
    if settings.mode == "single" or jax.distributed.is_initialized():
        return settings
    if settings.mode == "explicit":
        jax.distributed.initialize(settings.coordinator_address, settings.num_processes, settings.process_id)
    else:
        jax.distributed.initialize()
    return settings


def process_slice(items: Sequence[T], *, index: Optional[int] = None, count: Optional[int] = None,
                  key=None) -> list[T]:
    """This process's share of ``items``: ``sorted(items)[index::count]``.

    Sorting first makes the split the same in every process whatever order the items were listed in; the
    round-robin stride balances sizes when neighbours in the sort order are alike.

    Args:
      items: the full input list (e.g. the images of a folder).
      index, count: process index and count (default ``jax.process_index()``, ``jax.process_count()``).
      key: sort key (default: the items themselves).
    """
    index = jax.process_index() if index is None else int(index)
    count = jax.process_count() if count is None else int(count)
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"process index {index} must lie in [0, {count})")
    return sorted(items, key=key)[index::count]


def barrier(name: str) -> None:
    """Wait until every process reaches ``barrier(name)`` (no-op with one process).

    ``jax.experimental.multihost_utils.sync_global_devices``: a tiny all-gather over every process's
    devices (on CPUs JAX runs it over gloo).
    """
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)
