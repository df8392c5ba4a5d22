"""MC dropout of many volumes at once, spread over devices: volumes sharded, the sample axis local.

:func:`mc_sample_batch` runs :func:`~ugcn.uncertainty.sampling.mc_sample`'s compiled sampler for every
volume of a stack ``[B, X, Y, Z(, M)]``: each device takes its share of the volumes (``NamedSharding`` of
the leading axis, :mod:`ugcn.parallel`) and loops over them (``lax.map``), each volume's ``T`` passes
reduced in its own ``lax.scan`` exactly as for one volume. The weights are passed whole to every device.
Volume ``b``'s result equals ``mc_sample(volume_fn, images[b], keys[b])`` up to float rounding.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ugcn.uncertainty.sampling import (
    MCResult,
    VolumeFn,
    _compiled_sampler,
    _split_weights,
    check_counts,
    check_finite_result,
    check_volume_fn_output,
)


@functools.lru_cache(maxsize=16)
def _per_device_sampler(apply: Callable, n_samples: int, chunk_size: int, keep_samples: bool) -> Callable:
    """``fn(variables, keys [b], images [b, ...]) -> MCResult [b, ...]``: one device's volumes in turn."""
    run = _compiled_sampler(apply, n_samples, chunk_size, keep_samples)

    def local(variables, keys, images):
        return jax.lax.map(lambda item: run(variables, jax.random.split(item[0], n_samples), item[1]), (keys, images))

    return local


@functools.lru_cache(maxsize=16)
def _single_device(local: Callable) -> Callable:
    return jax.jit(local)


def mc_sample_batch(
    volume_fn: VolumeFn,
    images,
    keys: jax.Array,
    *,
    n_samples: int = 20,
    chunk_size: int = 4,
    keep_samples: bool = False,
    devices=None,
) -> MCResult:
    """``T`` stochastic passes of ``volume_fn`` over each of ``B`` same-shaped volumes, over devices.

    Args:
      volume_fn: as for :func:`~ugcn.uncertainty.sampling.mc_sample` (keep the same object between calls).
      images: ``f32[B, X, Y, Z]`` or ``f32[B, X, Y, Z, M]``.
      keys: ``[B]`` PRNG keys (typed, or raw ``u32[B, 2]``); volume ``b``'s pass ``t`` uses
        ``jax.random.split(keys[b], T)[t]``, so a volume's samples depend on its key only, never on the
        batch or the device count.
      n_samples, chunk_size, keep_samples: as for ``mc_sample``.
      devices: ``None`` (one device), a device count or a :func:`ugcn.parallel.device_mesh`: the volumes
        are padded to a multiple of the device count and split over the devices.

    Returns:
      :class:`~ugcn.uncertainty.sampling.MCResult` with a leading volume axis: ``stats`` sums
      ``f32[B, X, Y, Z, C]``, ``samples f32[B, T, X, Y, Z, C]`` (or ``None``).

    Raises:
      ValueError: bad shapes, non-finite images or probabilities, a key count that is not ``B``.
    """
    n_samples, chunk_size = check_counts(n_samples, chunk_size)
    host = np.asarray(images, np.float32)
    if host.ndim not in (4, 5) or host.shape[0] < 1:
        raise ValueError(f"images must be [B, X, Y, Z] or [B, X, Y, Z, M] with B >= 1, got shape {host.shape}")
    if not np.all(np.isfinite(host)):
        raise ValueError("images hold NaN or infinite values")
    if len(keys) != host.shape[0]:
        raise ValueError(f"{host.shape[0]} volumes but {len(keys)} keys")
    check_volume_fn_output(volume_fn, keys[0], jax.ShapeDtypeStruct(host.shape[1:], jnp.float32))
    apply, variables = _split_weights(volume_fn)
    local = _per_device_sampler(apply, n_samples, chunk_size, bool(keep_samples))
    if devices is None:
        result = _single_device(local)(variables, keys, host)
    else:
        from ugcn.parallel import resolve_mesh, run_sharded

        result = run_sharded(local, resolve_mesh(devices), keys, host, shared=(variables,))
    return check_finite_result(result)
