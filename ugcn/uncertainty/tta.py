"""Test-time augmentation (TTA) as a sample source: flips and small shifts of the image, inverted back.

A model without dropout has no MC-dropout samples, but its predictions of transformed copies of the image
disagree where it is unsure. :func:`tta_sample` runs ``T`` transformed passes of a (usually deterministic)
volume function and returns the same :class:`MCResult` as :func:`ugcn.uncertainty.mc_sample`, so every
estimator, method R and method L take TTA samples unchanged.

A transform ``t`` is a row ``int32[6]`` = ``(flip_0, flip_1, flip_2, shift_0, shift_1, shift_2)`` over the
image axes ``(X, Y, Z)``. Pass ``t``:

1. pads the image by ``max |shift|`` voxels (edge values) on both sides of every shifted axis,
2. flips it along the axes with ``flip_a = 1``, then rolls it by ``shift_a`` voxels,
3. runs the model on the padded canvas,
4. rolls the prediction back by ``-shift_a``, flips it back, and crops the padding away.

Rolling inside the padded canvas moves only padding across the border, so for a model that commutes with
flips and translations (a per-voxel function of the intensity, a circular convolution) every sample equals
the un-augmented prediction exactly; a real U-Net differs through its border handling and pooling grid.
The ``T`` transforms are a deterministic function of the seed (:func:`tta_transforms`); the first one is the
identity by default (no flip, no shift; when shifts are allowed the model still sees the edge-padded
canvas, so near the border it can differ slightly from a plain prediction of the unpadded image).

Compilation follows :func:`mc_sample`: one jitted sampler per architecture (weights passed as an argument),
``vmap`` over a chunk of transforms inside a ``lax.scan`` over chunks.
"""
from __future__ import annotations

import functools
import itertools
from typing import Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from ugcn.uncertainty.sampling import (
    MCResult,
    VolumeFn,
    _split_weights,
    check_finite_result,
    check_sampling_inputs,
    reduce_passes,
)

DEFAULT_FLIP_AXES = (0, 1)
DEFAULT_SHIFTS = (-2, -1, 0, 1, 2)
DEFAULT_SHIFT_AXES = (0, 1)
TRANSFORM_COLUMNS = ("flip_x", "flip_y", "flip_z", "shift_x", "shift_y", "shift_z")


def _check_axes(axes: Sequence[int], name: str) -> tuple[int, ...]:
    axes = tuple(int(a) for a in axes)
    if any(a not in (0, 1, 2) for a in axes) or len(set(axes)) != len(axes):
        raise ValueError(f"{name} must be distinct image axes among 0, 1, 2 (X, Y, Z), got {axes}")
    return tuple(sorted(axes))


def _check_shifts(shifts: Sequence[int]) -> tuple[int, ...]:
    values = tuple(shifts)
    if any(isinstance(s, bool) or int(s) != s for s in values):
        raise ValueError(f"shifts must be integers (voxels), got {values}")
    return tuple(sorted(set(int(s) for s in values)))


def tta_transforms(
    n_samples: int,
    *,
    seed: Union[int, Sequence[int]] = 0,
    flip_axes: Sequence[int] = DEFAULT_FLIP_AXES,
    shifts: Sequence[int] = DEFAULT_SHIFTS,
    shift_axes: Sequence[int] = DEFAULT_SHIFT_AXES,
    include_identity: bool = True,
) -> np.ndarray:
    """The ``T`` transforms of :func:`tta_sample`, a deterministic function of ``seed``.

    The candidates are every combination of a flip or not along each of ``flip_axes`` and a shift from
    ``shifts`` along each of ``shift_axes``. With ``include_identity`` transform 0 is the identity and the
    others are drawn from the remaining candidates without repetition (a fresh permutation is appended
    when ``T - 1`` exceeds their number); otherwise all ``T`` are drawn that way from all candidates.

    Args:
      n_samples: ``T >= 1``.
      seed: integer seed of ``numpy.random.default_rng``.
      flip_axes: image axes that may be flipped (``0, 1`` are the in-plane axes X, Y).
      shifts: integer shifts in voxels allowed along each of ``shift_axes``.
      shift_axes: image axes that may be shifted.
      include_identity: make transform 0 the identity (the un-augmented prediction).

    Returns:
      ``int32[T, 6]``, columns :data:`TRANSFORM_COLUMNS` (flip flags 0/1, then shifts in voxels).

    Raises:
      ValueError: bad axes, non-integer shifts, or no transform other than the identity while ``T > 1``.
    """
    if isinstance(n_samples, bool) or int(n_samples) != n_samples or int(n_samples) < 1:
        raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
    n_samples = int(n_samples)
    flip_axes = _check_axes(flip_axes, "flip_axes")
    shift_axes = _check_axes(shift_axes, "shift_axes")
    shifts = _check_shifts(shifts) if shift_axes else (0,)
    if not shifts:
        raise ValueError("shifts is empty: give at least one shift (0 for none)")
    rows = []
    for flips in itertools.product((0, 1), repeat=len(flip_axes)):
        for moves in itertools.product(shifts, repeat=len(shift_axes)):
            row = [0] * 6
            for axis, flag in zip(flip_axes, flips):
                row[axis] = flag
            for axis, move in zip(shift_axes, moves):
                row[3 + axis] = move
            rows.append(row)
    candidates = np.asarray(rows, np.int32).reshape(-1, 6)
    if include_identity:
        candidates = candidates[np.any(candidates != 0, axis=1)]
    n_drawn = n_samples - 1 if include_identity else n_samples
    if n_drawn > 0 and len(candidates) == 0:
        raise ValueError(
            "test-time augmentation has no transform besides the identity: give flip_axes or non-zero shifts"
        )
    rng = np.random.default_rng(seed)
    rounds = [candidates[rng.permutation(len(candidates))] for _ in range(-(-n_drawn // max(len(candidates), 1)))]
    drawn = np.concatenate(rounds, axis=0)[:n_drawn] if rounds else np.zeros((0, 6), np.int32)
    if include_identity:
        drawn = np.concatenate([np.zeros((1, 6), np.int32), drawn], axis=0)
    return drawn.astype(np.int32)


def augment(image: jnp.ndarray, transform: jnp.ndarray, pad: Sequence[int]) -> jnp.ndarray:
    """Apply one transform to an image: edge-pad by ``pad``, flip, then roll.

    Args:
      image: ``f32[X, Y, Z]`` or ``f32[X, Y, Z, M]``.
      transform: ``int32[6]`` (see :data:`TRANSFORM_COLUMNS`), may be traced.
      pad: static ``(p_x, p_y, p_z)``, at least ``|shift|`` on each shifted axis.

    Returns:
      ``f32[X + 2 p_x, Y + 2 p_y, Z + 2 p_z(, M)]``.
    """
    x = jnp.pad(image, [(p, p) for p in pad] + [(0, 0)] * (image.ndim - 3), mode="edge")
    for axis in range(3):
        x = jnp.where(transform[axis] > 0, jnp.flip(x, axis), x)
    return jnp.roll(x, transform[3:6], axis=(0, 1, 2))


def invert(probs: jnp.ndarray, transform: jnp.ndarray, pad: Sequence[int]) -> jnp.ndarray:
    """Undo :func:`augment` on a prediction: roll back, flip back, crop the padding.

    Args:
      probs: ``f32[X + 2 p_x, Y + 2 p_y, Z + 2 p_z, C]`` prediction on the augmented canvas.
      transform: ``int32[6]``, the transform that produced the canvas.
      pad: static ``(p_x, p_y, p_z)``.

    Returns:
      ``f32[X, Y, Z, C]`` on the original grid.
    """
    y = jnp.roll(probs, -transform[3:6], axis=(0, 1, 2))
    for axis in range(3):
        y = jnp.where(transform[axis] > 0, jnp.flip(y, axis), y)
    return y[tuple(slice(p, y.shape[a] - p) for a, p in enumerate(pad))]


@functools.lru_cache(maxsize=16)
def _compiled_tta_sampler(
    apply: Callable, n_samples: int, chunk_size: int, keep_samples: bool, pad: tuple[int, int, int]
) -> Callable:
    """One jitted ``run(variables, key, transforms, image)`` per (apply, T, chunk, keep, pad).

    The transforms are an argument, so other seeds reuse the compiled program.
    """

    def one_pass(variables, inputs, image):
        key, transform = inputs
        return invert(apply(variables, key, augment(image, transform, pad)), transform, pad)

    def run(variables, key, transforms, image):
        keys = jax.random.split(key, n_samples)
        return reduce_passes(one_pass, variables, (keys, transforms), image, n_samples, chunk_size, keep_samples)

    return jax.jit(run)


def _seed_of_key(key: jax.Array) -> list[int]:
    data = np.asarray(jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key)
    return [int(v) for v in data.astype(np.uint32).ravel()]


def tta_sample(
    volume_fn: VolumeFn,
    image,
    key: Optional[jax.Array] = None,
    *,
    seed: Optional[int] = None,
    n_samples: int = 20,
    flip_axes: Sequence[int] = DEFAULT_FLIP_AXES,
    shifts: Sequence[int] = DEFAULT_SHIFTS,
    shift_axes: Sequence[int] = DEFAULT_SHIFT_AXES,
    include_identity: bool = True,
    chunk_size: int = 4,
    keep_samples: bool = False,
) -> MCResult:
    """``T`` test-time-augmented passes of ``volume_fn`` over ``image``, inverted and reduced to statistics.

    Args:
      volume_fn: ``fn(key, image) -> probs f32[X, Y, Z, C]`` as for :func:`mc_sample`, usually deterministic
        (``ugcn.segment.make_volume_fn(model, stochastic=False)``); a stochastic one combines TTA with MC
        dropout (pass ``t`` gets key ``split(key, T)[t]``). It must accept the padded canvas
        ``[X + 2 max|shift|, Y + 2 max|shift|, Z(, M)]``.
      image: ``f32[X, Y, Z]`` or ``f32[X, Y, Z, M]``.
      key: PRNG key of the passes; without ``seed`` it also seeds the choice of transforms.
      seed: integer seed of the transforms (:func:`tta_transforms`); without ``key`` the passes use
        ``jax.random.key(seed)``. Neither given: seed 0.
      n_samples: ``T >= 1``.
      flip_axes, shifts, shift_axes, include_identity: the transforms, see :func:`tta_transforms`.
      chunk_size: passes evaluated together by ``vmap``; clipped to ``T``.
      keep_samples: also return all samples ``f32[T, X, Y, Z, C]`` (on the original grid).

    Returns:
      :class:`MCResult` ``(stats, samples or None)``; ``tta_transforms(n_samples, seed=..., ...)`` with the
      same arguments lists the transforms, in sample order.

    Raises:
      ValueError: as :func:`mc_sample`, plus bad transform settings.
    """
    if key is None:
        seed = 0 if seed is None else seed
        key = jax.random.key(seed)
    transform_seed = _seed_of_key(key) if seed is None else seed
    image, n_samples, chunk_size = check_sampling_inputs(volume_fn, image, key, n_samples, chunk_size)
    transforms = tta_transforms(
        n_samples, seed=transform_seed, flip_axes=flip_axes, shifts=shifts, shift_axes=shift_axes,
        include_identity=include_identity,
    )
    # Padding follows the settings, not the drawn transforms, so every seed shares one compiled program.
    max_shift = max(abs(s) for s in _check_shifts(shifts)) if shifts else 0
    pad = tuple(max_shift if a in _check_axes(shift_axes, "shift_axes") else 0 for a in range(3))
    apply, variables = _split_weights(volume_fn)
    run = _compiled_tta_sampler(apply, n_samples, chunk_size, bool(keep_samples), pad)
    return check_finite_result(run(variables, key, jnp.asarray(transforms), image))


__all__ = ["tta_sample", "tta_transforms", "augment", "invert", "TRANSFORM_COLUMNS"]
