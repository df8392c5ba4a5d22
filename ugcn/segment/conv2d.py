"""2D convolutions for the 2D U-Net: XLA's own or Winograd F(4, 3), chosen per layer shape.

XLA:CPU runs a 2D ``lax.conv_general_dilated`` at about a third of its matmul rate (measured ~78 against ~236
GFLOP/s, 2-core CPU). :func:`ugcn.segment.winograd.winograd_conv` turns a 3x3 convolution into transforms and
one batched matmul with 4x fewer multiplications (F(4, 3)); its transforms are memory-bound, so it wins where
the channel counts are large enough for the matmul to dominate. :func:`auto_form` encodes the choice measured
on the 2D U-Net's layers (``benchmarks/bench_conv2d.py``): ``"winograd4"`` for 3x3 kernels on inputs with at
least :data:`WINOGRAD_MIN_CHANNELS` channels whose transformed input stays within
:data:`WINOGRAD_MAX_SAMPLE_BYTES` per sample, ``"xla"`` elsewhere. Measured (2-core CPU under load 6-8,
interleaved rounds, GFLOP/s of the direct convolution's FLOPs; 2 / 8 slices of 128^2 per call): F(4, 3) against
XLA ran 90 / 102 against 77 / 53 on 64^2 32->32, 108-119 / 131-144 against 72 / 77 on 32^2 64->64, 101-106 /
153-158 against 64 / 75 on 16^2 128->128, but only 31-33 / 7-9 against 28-33 on 128^2 16->16 (the transformed
copies of the full-resolution layers spill out of cache); the 1-channel first layer (few FLOPs, and computed
once for all MC passes as the stem) stays on XLA. The whole
U-Net forward (8 slices) ran about 1.3x faster with Winograd on the layers of side <= 64 than with XLA
everywhere, and slower with Winograd on the 128^2 layers too. MC dropout, T = 20 over 128 x 128 x 64 (load
1.4-5): 24.9 s against 27.2 s for XLA's convolutions (1.09x), 31 s with Winograd on the 128^2 layers as well.

Tried on the 128^2 layers of an MC call (4 rows; one process, interleaved rounds, load 4-6) and not kept: F(4, 3)
in strips of 8-32 output rows with their 2-row halo (as extra batch rows, 1-8 strips per ``lax.map`` step, so a
step's transformed copies stay in L2) ran 0.56-0.83x XLA's speed on 32->16, 0.40-0.77x on 16->16 and 0.50-0.95x on
the stem-shared 16->64 (whole-image F(4, 3): 0.94x, 0.56x, 0.94x); its input transform alone took 1.7-3.5x the
matmul's time, and rewriting it (block reshapes instead of strided slices, a barrier between the axes, a
``[6, 6]`` einsum per axis) did not make it faster. F(6, 3) (8x8 tiles, points 0, +-1, +-2, +-1/2, infinity;
<= 1.7e-5 of max|y| against 4.5e-6-1.2e-5 for F(4, 3)) against F(4, 3) on the <= 64^2 layers: 1.0-1.3x on 64^2,
0.8-1.0x on 32^2 (36 outputs per 32: 27 % cropped work), noisy on 16^2; the sampler with it on the 64^2 layers
ran at 0.98-1.01x (T = 20 over 128 x 128 x 16, 5-10 rounds, load 6-9). Computing the decoder's first convolution
of the upsampled half on the low-resolution input (the 2x2 transposed convolution folded into a 3x3 kernel with 4x
the outputs, F(4, 3) there) ran 0.92x / 0.67x / 0.58x on the 128^2 / 64^2 / 32^2 decoder levels. Faster per layer
but not resolved in the whole sampler (expected ~2 %; branch ``wino-stem-pool``): the 1-channel stem as
:func:`ugcn.segment.conv3d.direct_conv` (0.39 / 0.52 ms against 1.98 / 3.05 on 1 / 2 slices of 128^2, 1 -> 16,
with BN and ReLU; load 7.6) and max-pooling as the maximum of the 4 strided sub-grids (exact; ReLU + pooling +
the next convolution 1.42x / 1.43x / 1.09x at 128^2 x 16, 64^2 x 32, 32^2 x 64; load 6.9): the sampler (T = 20,
128 x 128 x 8) ran at 1.033x wall / 1.013x CPU time (24 rounds, load 8.1-8.8), 0.98x / 0.98x (20 rounds, load
7.5-10.6), 1.01x / 1.03x (30 rounds, load 2.8-5.9); with ``mc_sample``'s 2 concurrent streams (T = 20 over 128 x 128
x 16, medians of per-round ratios) 1.13x / 1.01x (8 rounds, load 7.1-8.6), 0.93x / 0.98x (12 rounds, load
7.6-9.1), 1.02x / 1.01x (8 rounds, load 6.8-8.1): still not resolved, so not landed. XLA:CPU (jaxlib 0.10.2)
runs a 128^2 convolution on YNNPACK when ``Ci x Co > 256`` and on Eigen otherwise; Eigen is the faster of the two
there: 5 rows of 128^2, 16 -> 16 (Eigen) against the same made YNNPACK's by a zero 17th output channel 0.74x, 32
outputs 0.48x, a zero 17th input channel 0.90x, and the stem-shared 16 -> 80 (YNNPACK) as five Eigen 16 -> 16
convolutions 0.62x (one process, interleaved, load 8). The full-resolution decoder convolution as one Eigen 16 -> 16
convolution per part of its [upsampled, skip] input, the concatenation never written (branch ``mc2d-split``):
1.10x on the layer with its concatenation (5 rows, load 8), but 0.96x wall / 0.97x CPU time in the 2-stream sampler
(14 rounds, load 4.7-5.4) and 1.07x / 1.015x in another run (8 rounds, load 6.8-8.1): not kept.

:func:`conv_general_dilated` has ``lax.conv_general_dilated``'s signature; flax's
``nn.Conv(..., conv_general_dilated=conv_general_dilated)`` uses it with unchanged parameters, so
checkpoints are unaffected. Anything it does not cover (strides, dilations, feature groups, kernels other
than 3x3, other layouts or ranks, other backends) goes to ``lax.conv_general_dilated`` unchanged.
"""
from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
from jax import lax

from ugcn.segment.conv3d import PURPOSES, Padding, explicit_padding, lax_drop_in
from ugcn.segment.winograd import batch_chunk_for, transformed_bytes, winograd_conv

FORMS = ("xla", "winograd2", "winograd4")
CHANNELS_LAST_2D = ("NHWC", "HWIO", "NHWC")
# Inputs with fewer channels than this stay on XLA's convolution: the transforms, not the matmul, dominate.
WINOGRAD_MIN_CHANNELS = 8
# ... and so do layers whose transformed input exceeds this per sample (e.g. 128^2 x 16 channels: 2.4 MB), where
# the transformed copies of a call's few samples no longer stay in cache.
WINOGRAD_MAX_SAMPLE_BYTES = 2 * 2**20
# ... except with this many input channels or more, where the matmul is wide enough to win up to twice that size:
# 64^2 64->32 (2.4 MB per sample, the U-Net's dec1.conv0), batch 4 / 8 as in an MC call: F(4, 3) 116-126 /
# 111-130 GFLOP/s against XLA's 79 / 77 (1.45-1.7x; 2-core CPU, load 6, interleaved rounds). At 128^2 with 16 or
# 32 input channels F(4, 3) still lost (0.80-0.86x).
WINOGRAD_WIDE_CHANNELS = 64


def auto_form(spatial: Sequence[int], in_channels: int, kernel_spatial: Sequence[int]) -> str:
    """The form :func:`conv2d` uses with ``form="auto"`` for one layer shape: ``"winograd4"`` where the
    transformed input is within :data:`WINOGRAD_MAX_SAMPLE_BYTES` per sample, or within twice that with at least
    :data:`WINOGRAD_WIDE_CHANNELS` input channels; ``"xla"`` elsewhere."""
    if tuple(kernel_spatial) != (3, 3) or in_channels < WINOGRAD_MIN_CHANNELS or any(n < 1 for n in spatial):
        return "xla"
    size = transformed_bytes(spatial, in_channels, 4)
    wide = in_channels >= WINOGRAD_WIDE_CHANNELS and size <= 2 * WINOGRAD_MAX_SAMPLE_BYTES
    return "winograd4" if size <= WINOGRAD_MAX_SAMPLE_BYTES or wide else "xla"


def train_form(spatial: Sequence[int], in_channels: int, kernel_spatial: Sequence[int]) -> str:
    """The form :func:`conv2d` uses with ``form="auto", purpose="train"`` (forward + backward) for one layer
    shape: for now :func:`auto_form`'s. F(4, 3) on every 3x3 layer with at least :data:`WINOGRAD_MIN_CHANNELS`
    input channels (the 128^2 ones too) measured faster per layer (``bench_conv2d.py``, 2 slices, output gradient
    ``sum(conv)``: 102.7 GFLOP/s forward + backward against 66.8), but not in the training step: the default 2D
    U-Net's Adam step on 8 slices of 128^2 ran at 0.94x the steps/s of :func:`auto_form`'s convolutions
    (``bench_segment.py``'s comparison, one process, load 7.6), so the 128^2 layers stay on XLA here too."""
    return auto_form(spatial, in_channels, kernel_spatial)


def conv2d(x: jnp.ndarray, kernel: jnp.ndarray, padding: Padding = "SAME", *, form: str = "auto",
           purpose: str = "inference", precision=None) -> jnp.ndarray:
    """Stride-1 2D convolution (cross-correlation, as ``lax.conv_general_dilated``).

    Args:
      x: ``f32[B, X, Y, Ci]``.
      kernel: ``f32[kx, ky, Ci, Co]``; the Winograd forms need ``kx = ky = 3``.
      padding: ``"SAME"``, ``"VALID"`` or two ``(low, high)`` pairs.
      form: ``"xla"`` (``lax.conv_general_dilated``), ``"winograd2"`` / ``"winograd4"`` (F(2, 3) / F(4, 3),
        the batch in cache-sized chunks) or ``"auto"`` (the rule of ``purpose``).
      purpose: ``"inference"`` (:func:`auto_form`, forward only) or ``"train"`` (:func:`train_form`), for
        ``form="auto"``.
      precision: passed to the convolution or matmul.

    Returns:
      ``f32[B, X', Y', Co]``, the sizes ``lax.conv_general_dilated`` gives for that padding.
    """
    if x.ndim != 4 or kernel.ndim != 4 or kernel.shape[2] != x.shape[3]:
        raise ValueError(f"expected x [B, X, Y, Ci] and kernel [kx, ky, Ci, Co], got {x.shape}, {kernel.shape}")
    pads = explicit_padding(padding, kernel.shape[:2])
    if form == "auto":
        if purpose not in PURPOSES:
            raise ValueError(f"purpose must be one of {PURPOSES}, got {purpose!r}")
        rule = train_form if purpose == "train" else auto_form
        form = rule(x.shape[1:3], x.shape[3], kernel.shape[:2])
        if any(lo < 0 or hi < 0 for lo, hi in pads):  # negative padding crops: XLA's
            form = "xla"
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS} or 'auto', got {form!r}")
    if form == "xla":
        return lax.conv_general_dilated(x, kernel, (1, 1), pads, dimension_numbers=CHANNELS_LAST_2D,
                                        precision=precision)
    if kernel.shape[:2] != (3, 3):
        raise ValueError(f"form {form!r} needs a 3x3 kernel, got {kernel.shape[:2]}")
    m = 4 if form == "winograd4" else 2
    chunk = batch_chunk_for(x.shape[1:3], x.shape[3], m)
    return winograd_conv(x, kernel, pads, m=m, batch_chunk=chunk, precision=precision)


conv_general_dilated = lax_drop_in(
    lambda x, k, pad, precision: conv2d(x, k, pad, form="auto", precision=precision), CHANNELS_LAST_2D,
    """Drop-in for ``lax.conv_general_dilated`` that runs stride-1 channels-last 2D convolutions as
    :func:`conv2d` (``form="auto"``) on the CPU; every other case, and every other backend, is passed to
    ``lax.conv_general_dilated``.

    Use as ``flax.linen.Conv(..., conv_general_dilated=conv_general_dilated)``.
    """)

conv_general_dilated_train = lax_drop_in(
    lambda x, k, pad, precision: conv2d(x, k, pad, form="auto", purpose="train", precision=precision),
    CHANNELS_LAST_2D,
    """:func:`conv_general_dilated` with the training rule (:func:`train_form`, the fastest forward + backward
    per layer shape): what a U-Net built with ``purpose="train"`` uses.""")
