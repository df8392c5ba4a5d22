"""Data parallelism over a machine's devices: a 1-D device mesh with a ``batch`` axis.

Every cohort computation of ``ugcn`` (the per-volume GCN fits of method R, MC dropout of many volumes, the
lesion GCNN's scoring) is independent per item, so it spreads over devices by splitting the leading axis:
:func:`device_mesh` makes a ``jax.sharding.Mesh`` with one ``batch`` axis, :func:`shard_batch` pads a
pytree's leading axis to a multiple of the device count and places it with ``NamedSharding(mesh,
P("batch"))``, and :func:`shard_map_batch` runs a per-shard function on each device's slice
(``jax.shard_map``): the same compiled program on every device, no communication. :func:`unpad` drops the
padding again.

The mesh holds this process's own devices (``jax.local_devices()``): with several processes (hosts), each
one works on its own slice of the inputs (:func:`ugcn.parallel.process_slice`), which needs no cross-host
array and lets every host pad to the bucket sizes of its own volumes.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

#: Name of the mesh axis that the leading (volume / lesion batch) axis is split along.
BATCH_AXIS = "batch"

DevicesArg = Union[None, int, Mesh]


def device_mesh(n_devices: Optional[int] = None, *, devices: Optional[Sequence[Any]] = None) -> Mesh:
    """A 1-D :class:`jax.sharding.Mesh` with axis ``"batch"`` over ``n_devices`` of this process's devices.

    Args:
      n_devices: how many devices (default: all of ``devices``); the first ``n_devices`` are used.
      devices: the devices to choose from (default ``jax.local_devices()``).

    Raises:
      ValueError: ``n_devices`` below 1 or above the number of devices available.
    """
    pool = list(jax.local_devices() if devices is None else devices)
    n = len(pool) if n_devices is None else n_devices
    if isinstance(n, bool) or int(n) != n or int(n) < 1:
        raise ValueError(f"the number of devices must be a positive integer, got {n_devices!r}")
    if int(n) > len(pool):
        raise ValueError(
            f"asked for {int(n)} devices but only {len(pool)} are available ({pool[0].platform}); on a CPU, "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={int(n)} (set before jax starts) splits it into more"
        )
    return Mesh(np.asarray(pool[: int(n)]), (BATCH_AXIS,))


def resolve_mesh(devices: DevicesArg) -> Optional[Mesh]:
    """``None`` -> ``None`` (plain single-device jit); an ``int`` -> :func:`device_mesh`; a mesh as given."""
    if devices is None or isinstance(devices, Mesh):
        return devices
    return device_mesh(devices)


def mesh_size(mesh: Optional[Mesh]) -> int:
    """Number of devices along the batch axis (1 without a mesh)."""
    return 1 if mesh is None else int(mesh.shape[BATCH_AXIS])


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """``NamedSharding(mesh, P("batch"))``: the leading axis split over the devices, the rest local."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXIS))


def padded_size(n: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is ``>= n`` (and ``>= multiple``)."""
    return max(math.ceil(n / multiple), 1) * multiple


def _leading_size(tree: Any) -> int:
    sizes = {int(np.shape(x)[0]) for x in jax.tree_util.tree_leaves(tree)}
    if len(sizes) != 1:
        raise ValueError(f"every array must share its leading (batch) size, got sizes {sorted(sizes)}")
    return sizes.pop()


def pad_batch(tree: Any, multiple: int) -> tuple[Any, int]:
    """Pad every leaf's leading axis to a multiple of ``multiple`` with copies of item 0.

    Copies of a real item (rather than zeros) keep the padding a valid input (no empty graph, no NaN).

    Args:
      tree: pytree of arrays ``[B, ...]`` (numpy stays numpy; jax arrays, typed PRNG keys included, stay jax).

    Returns:
      ``(padded tree [B', ...], B)`` with ``B'`` = :func:`padded_size` ``(B, multiple)``.
    """
    n = _leading_size(tree)
    if n == 0:
        raise ValueError("pad_batch: the batch is empty")
    extra = padded_size(n, multiple) - n

    def pad(x):
        if extra == 0:
            return x
        if isinstance(x, np.ndarray):
            return np.concatenate([x, np.repeat(x[:1], extra, axis=0)])
        return jnp.concatenate([x, jnp.repeat(x[:1], extra, axis=0)])

    return jax.tree_util.tree_map(pad, tree), n


def shard_batch(tree: Any, mesh: Mesh) -> tuple[Any, int]:
    """Pad the leading axis to a multiple of the device count and place it split over ``mesh``.

    Args:
      tree: pytree of arrays ``[B, ...]``.
      mesh: from :func:`device_mesh`.

    Returns:
      ``(tree of jax.Array [B', ...] sharded as P("batch"), B)``: device ``d`` holds items
      ``d·B'/D .. (d+1)·B'/D``. Drop the padding of results with :func:`unpad`.
    """
    padded, n = pad_batch(tree, mesh_size(mesh))
    return jax.device_put(padded, batch_sharding(mesh)), n


def unpad(tree: Any, n: int) -> Any:
    """The first ``n`` items of every leaf's leading axis (undoes :func:`pad_batch`)."""
    return jax.tree_util.tree_map(lambda x: x[:n], tree)


@functools.lru_cache(maxsize=64)
def shard_map_batch(fn: Callable, mesh: Mesh, n_args: int, n_shared: int = 0) -> Callable:
    """``jit(shard_map(fn))`` over ``mesh``'s batch axis.

    ``fn(*shared, *batched)`` gets the first ``n_shared`` arguments whole on every device (e.g. model
    weights) and each device's slice of the leading axis of the other ``n_args``; its outputs (any pytree,
    leading axis per item) are concatenated back along ``batch``. ``fn`` must treat items independently (no
    cross-item reduction): nothing is communicated between devices. Cached per
    ``(fn, mesh, n_args, n_shared)``: pass the same function object to reuse the compiled program.
    """
    spec = PartitionSpec(BATCH_AXIS)
    in_specs = (PartitionSpec(),) * n_shared + (spec,) * n_args
    mapped = jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=spec, check_vma=False)
    return jax.jit(mapped)


def run_sharded(fn: Callable, mesh: Optional[Mesh], *args: Any, shared: tuple = ()) -> Any:
    """Pad, shard, run ``fn`` per device (:func:`shard_map_batch`) and unpad: ``fn(*shared, *args)``'s batch
    semantics over ``args`` (pytrees with one common leading size ``B``) spread over the mesh's devices.

    ``mesh`` is typically ``resolve_mesh(devices)``; ``None`` (no devices given) raises ``ValueError``."""
    if mesh is None:
        raise ValueError("run_sharded needs a device mesh (a device count or ugcn.parallel.device_mesh)")
    sharded, n = shard_batch(args, mesh)
    shared = jax.device_put(shared, NamedSharding(mesh, PartitionSpec()))
    return unpad(shard_map_batch(fn, mesh, len(args), len(shared))(*shared, *sharded), n)


def describe(mesh: Optional[Mesh], n_items: int, what: str = "volumes") -> str:
    """``"4 devices (cpu), 2 volumes per device"`` (the padded share; the last device may hold padding)."""
    d = mesh_size(mesh)
    platform = jax.devices()[0].platform if mesh is None else mesh.devices.flat[0].platform
    per = math.ceil(n_items / d) if n_items else 0
    return f"{d} device{'s' if d != 1 else ''} ({platform}), {per} {what} per device"
