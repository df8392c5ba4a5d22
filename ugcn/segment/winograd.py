"""Winograd minimal filtering for stride-1 3-tap convolutions in any number of spatial dimensions.

F(m, 3) computes ``m`` outputs of a 3-tap correlation from a tile of ``m + 2`` inputs with ``m + 2``
multiplications instead of ``3 m`` (Lavin & Gray 2016): ``y = Aᵀ [(G g) ⊙ (Bᵀ d)]``. The transform is
separable, so in N dimensions every axis is transformed in turn:

1. the input is cut into tiles of ``m + 2`` per axis at stride ``m`` and transformed with ``Bᵀ`` along each
   spatial axis (shifted strided slices added with the matrix's small integer weights), which gives
   ``(m + 2)^N`` transformed copies, one per tile position ``p``;
2. the ``[3]*N + [Ci, Co]`` kernel is transformed with ``G`` along each spatial axis (once per call);
3. for each tile position ``p`` one matmul over channels, ``[tiles, Ci] @ [Ci, Co]``: together ONE batched
   matmul (``dot_general`` with ``p`` as the batch dimension), which XLA:CPU runs at near its matmul rate;
4. the output transform ``Aᵀ`` along each axis and the tiles put back in place.

Multiplications drop from ``3^N`` to ``((m + 2) / m)^N`` per output: 2.25x (2D) and 3.375x (3D) for
F(2, 3), 4x (2D) for F(4, 3). Steps 1 and 4 are memory-bound (the transformed input is ``((m+2)/m)^N``
times the input), so the method wins where the channel counts are large enough for the matmul to dominate;
``benchmarks/bench_conv3d.py`` and ``benchmarks/bench_conv2d.py`` measure it per layer shape, and
:mod:`ugcn.segment.conv3d` / :mod:`ugcn.segment.conv2d` choose it per shape.

Values: F(2, 3) agrees with ``lax.conv_general_dilated`` to f32 rounding (measured <= 3e-7 of the output's
largest magnitude; its transforms only add, subtract and halve); F(4, 3)'s larger transform constants (up to 8
and 1/24) amplify rounding about 10x: <= 3e-6 (2D) and 6e-6 (3D) of the output's scale
(``tests/segment/test_winograd.py``). Gradients come from autodiff through the composition (strided slices,
adds and a batched matmul); their error is of the same order.
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax.numpy as jnp
import numpy as np
from jax import lax

# Transform matrices (Lavin & Gray 2016): Bᵀ [m+2, m+2] (input), G [m+2, 3] (kernel), Aᵀ [m, m+2] (output).
_MATRICES = {
    2: (
        np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64),
        np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64),
        np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64),
    ),
    4: (
        np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                  [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64),
        np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64),
        np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], np.float64),
    ),
}
TILES = tuple(sorted(_MATRICES))
# Transformed input bytes per batch chunk that :func:`batch_chunk_for` aims at, so that a chunk's transformed
# copies and matmul outputs stay within the 32 MiB L3 cache of the 2-core CPU measured: F(4, 3) on 8 slices of
# 128^2 x 16 channels (19 MiB transformed) ran at a quarter of its rate on 2 slices, and 4 patches of 32^3 x 16
# channels (28 MiB) at half its rate one patch at a time.
CHUNK_BYTES = 12 * 2**20


def transformed_bytes(spatial: Sequence[int], channels: int, m: int, itemsize: int = 4) -> int:
    """Bytes of one sample's transformed input (``(m + 2)^N`` copies of ``ceil(n / m)`` tiles per axis)."""
    tiles = np.prod([-(-int(s) // m) * (m + 2) for s in spatial])
    return int(tiles) * int(channels) * itemsize


def batch_chunk_for(spatial: Sequence[int], channels: int, m: int, budget: int = CHUNK_BYTES) -> int:
    """Samples per chunk so that a chunk's transformed input is within ``budget`` bytes (at least one)."""
    return max(1, budget // max(1, transformed_bytes(spatial, channels, m)))


def _combine(parts: Sequence[jnp.ndarray], weights: np.ndarray) -> jnp.ndarray:
    """``sum_j weights[j] * parts[j]`` skipping zero weights (as adds/subtracts where the weight is +-1)."""
    out = None
    for w, part in zip(weights, parts):
        if w == 0:
            continue
        term = part if w == 1 else (-part if w == -1 else part * jnp.asarray(w, part.dtype))
        out = term if out is None else out + term
    if out is None:
        raise ValueError("a transform row is all zeros")
    return out


def winograd_conv(x: jnp.ndarray, kernel: jnp.ndarray, pads: Sequence[tuple[int, int]], *, m: int = 2,
                  batch_chunk: Optional[int] = None, precision=None) -> jnp.ndarray:
    """Stride-1 convolution (cross-correlation, as ``lax.conv_general_dilated``) with 3 taps on every spatial
    axis, by Winograd F(m, 3) along each axis.

    Args:
      x: ``f32[B, *spatial, Ci]`` (any number N >= 1 of spatial axes, channels last).
      kernel: ``f32[3, ..., 3, Ci, Co]`` (N threes).
      pads: N ``(low, high)`` paddings (zeros), each >= 0.
      m: outputs per tile and axis, 2 (F(2, 3)) or 4 (F(4, 3)).
      batch_chunk: run the batch in chunks of this many samples, one after the other (``lax.map``), so that
        the transformed copies of a chunk stay in cache; ``None`` = the whole batch at once.
      precision: passed to the batched matmul.

    Returns:
      ``f32[B, *out, Co]`` with ``out = spatial + low + high - 2`` per axis.
    """
    b = x.shape[0]
    if batch_chunk is not None and 0 < batch_chunk < b:
        n_chunks = -(-b // batch_chunk)
        xs = jnp.pad(x, [(0, n_chunks * batch_chunk - b)] + [(0, 0)] * (x.ndim - 1))
        xs = xs.reshape((n_chunks, batch_chunk) + x.shape[1:])
        ys = lax.map(lambda xc: _winograd(xc, kernel, pads, m, precision), xs)
        return ys.reshape((n_chunks * batch_chunk,) + ys.shape[2:])[:b]
    return _winograd(x, kernel, pads, m, precision)


def _winograd(x: jnp.ndarray, kernel: jnp.ndarray, pads: Sequence[tuple[int, int]], m: int,
              precision) -> jnp.ndarray:
    n = x.ndim - 2
    if m not in _MATRICES:
        raise ValueError(f"m must be one of {TILES}, got {m!r}")
    if n < 1 or kernel.ndim != n + 2 or kernel.shape[:n] != (3,) * n or kernel.shape[n] != x.shape[-1]:
        raise ValueError(f"expected x [B, *spatial, Ci] and kernel [3]*N + [Ci, Co], got {x.shape}, {kernel.shape}")
    if len(pads) != n or any(lo < 0 or hi < 0 for lo, hi in pads):
        raise ValueError(f"expected {n} non-negative (low, high) pads, got {pads}")
    bt, g, at = _MATRICES[m]
    alpha = m + 2
    batch, ci, co = x.shape[0], x.shape[-1], kernel.shape[-1]
    outs = [s + lo + hi - 2 for s, (lo, hi) in zip(x.shape[1:-1], pads)]
    if any(o < 1 for o in outs):
        raise ValueError(f"empty output for spatial {x.shape[1:-1]} and pads {pads}")
    tiles = [-(-o // m) for o in outs]
    # Pad so that every axis holds exactly m * tiles + 2 inputs (the extra high pad only feeds cropped outputs).
    xpad = jnp.pad(x, [(0, 0)] + [(lo, m * t + 2 - (s + lo)) for s, (lo, _), t in
                                  zip(x.shape[1:-1], pads, tiles)] + [(0, 0)])

    # 1. Input transform, one axis at a time; the tile-position axes accumulate in front: [a]*k + [B, ...].
    v = xpad
    for axis in range(n):
        ax = axis + 1 + axis  # position of this spatial axis after the `axis` position axes already in front
        parts = [lax.slice_in_dim(v, j, j + m * (tiles[axis] - 1) + 1, stride=m, axis=ax) for j in range(alpha)]
        v = jnp.stack([_combine(parts, bt[p]) for p in range(alpha)], axis=0)
    v = v.reshape(alpha**n, -1, ci)  # [P, B * prod(tiles), Ci]; axis order was (p_{n-1}, ..., p_0)

    # 2. Kernel transform G along each axis: u[p_0, ..., p_{n-1}, Ci, Co], then in v's position order.
    u = kernel
    gk = jnp.asarray(g, kernel.dtype)
    for axis in range(n):
        u = jnp.moveaxis(jnp.tensordot(gk, u, axes=([1], [axis])), 0, axis)
    u = jnp.transpose(u, tuple(reversed(range(n))) + (n, n + 1)).reshape(alpha**n, ci, co)

    # 3. One batched matmul over the tile positions.
    y = lax.dot_general(v, u, (((2,), (1,)), ((0,), (0,))), precision=precision)  # [P, M, Co]
    y = y.reshape((alpha,) * n + (batch, *tiles, co))

    # 4. Output transform along each axis (position axes in front, last spatial axis's first), then untile.
    for k in range(n):  # consumes the leading position axis p_{n-1-k}; its r goes right after t_{n-1-k}
        parts = [y[j] for j in range(alpha)]
        y = jnp.stack([_combine(parts, at[r]) for r in range(m)], axis=2 * (n - k))
    y = y.reshape((batch, *[m * t for t in tiles], co))  # [B, t_0, r_0, ..., t_{n-1}, r_{n-1}, Co] untiled
    return y[(slice(None),) + tuple(slice(0, o) for o in outs)]
