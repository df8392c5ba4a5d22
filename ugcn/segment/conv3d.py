"""3D convolutions as XLA:CPU runs them fast: 2D convolutions over slices, or Winograd, chosen per layer shape.

XLA:CPU runs a 3D ``lax.conv_general_dilated`` on a generic, slow path (measured 15-17 GFLOP/s on a 2-core
CPU where a 2D convolution of the same FLOPs runs at ~78 and a matmul at ~236). A stride-1 3D convolution
with a kernel of ``kx`` taps along the first spatial axis X is a sum of ``kx`` 2D convolutions over the
``(Y, Z)`` slices, one per tap, which this module computes as ONE 2D convolution in either of two forms:

- ``"taps_in"``: the ``kx`` X-shifted copies of the input are stacked on the input channels
  (``[B*X, Y, Z, kx*Ci]``), then one 2D convolution with a ``[ky, kz, kx*Ci, Co]`` kernel. Best when ``Ci``
  is small (the first layer, ``Ci = 1``): the 2D convolution's contraction gets ``kx`` times longer.
- ``"taps_out"``: one 2D convolution with the ``kx`` taps stacked on the output channels
  (``[ky, kz, Ci, kx*Co]``), then the ``kx`` outputs shifted along X and summed.

Two more forms put more taps into one contraction, for ``benchmarks/bench_conv3d.py`` to weigh:

- ``"taps_xy"``: the ``kx * ky`` shifted copies stacked on the input channels, then one 1D convolution
  along Z (contraction ``kx * ky * kz * Ci``).
- ``"im2col"``: all ``kx * ky * kz`` shifted copies stacked on the channels (``kx*ky*kz`` times the input's
  memory), then one matmul ``[B*X*Y*Z, 27*Ci] @ [27*Ci, Co]``.

And two that are not slice-wise: ``"winograd2"`` / ``"winograd4"``, Winograd F(2, 3) / F(4, 3) along each axis
(:mod:`ugcn.segment.winograd`: 3.4x / 8x fewer multiplications, one batched matmul), for 3x3x3 kernels.

And ``"direct"`` (:func:`direct_conv`): the ``27 * Ci`` shifted input channels times their kernel rows summed in one
elementwise fusion, for the 1-channel first layer (forward only: its autodiff backward is slow).

``"auto"`` picks per layer shape and purpose (:func:`auto_form` for inference, i.e. forward only, and
:func:`train_form` for training steps, ``purpose="train"``): ``"direct"`` for 1-channel inputs (inference),
``"winograd4"`` for 3x3x3 kernels on inputs with at least :data:`WINOGRAD_MIN_CHANNELS` channels where F(4, 3)'s
batched matmul has enough rows (:data:`WINOGRAD4_MIN_ROWS`), ``"winograd2"`` on smaller layers (the 4^3 and
8^3 ones of few patches; :data:`WINOGRAD2_MIN_ROWS`), ``"im2col"`` (inference) on the 4^3 layers of 1-3 patches,
``"taps_in"`` elsewhere. Earlier measurements, when the rule was F(4, 3) everywhere but on 4^3: on the 3D U-Net's
layers (batch of 4 patches, 2-core CPU under load 6-9, interleaved): F(4, 3) ran the 32^3 16->16 layer at 36
GFLOP/s against 14 for ``taps_in``, the 16^3 layers at 58-139 against 30-47, the 8^3 layers at 88-149 against
40-70; on the 4^3 layers F(2, 3) ran at 86-95 against 58-67 (F(4, 3): 21-35). The whole 3D U-Net with 4 patches
of 32^3: forward 1.77x and forward + backward 3.5x faster than with ``taps_in`` everywhere (the former default;
``taps_in`` had been chosen over ``taps_out``, ``taps_xy`` and ``im2col``, which were slower on the 32^3 and
16^3 layers or 1.5-2x slower forward + backward). ``bench_conv3d.py --size small`` (2 patches, load 2.4-4.5): all
3x3x3 convolutions of the network at 62 GFLOP/s forward and 65 forward + backward with ``"auto"``, against 45 / 41
(``taps_in``), 56 / 38 (PyTorch ``Conv3d``, its faster thread setting) and 9 / 11 (XLA's conv3d); on the 4^3
layers ``taps_xy`` and ``im2col`` ran faster than F(2, 3) in that run (the opposite of the batch-4 run above).

The slice-wise forms agree with ``lax.conv_general_dilated`` to float rounding, the Winograd forms to a few
roundings (F(4, 3): about 6e-6 of the output's scale, see :mod:`ugcn.segment.winograd`); so do their gradients
(plain jnp/lax compositions, differentiated by autodiff). :func:`conv_general_dilated` has
``lax.conv_general_dilated``'s signature; flax's ``nn.Conv(..., conv_general_dilated=conv_general_dilated)``
uses it with unchanged parameters, so checkpoints are unaffected. Anything it does not cover (strides,
dilations, feature groups, other layouts or ranks) goes to ``lax.conv_general_dilated`` unchanged.
``benchmarks/bench_conv3d.py`` measures every form on the 3D U-Net's own layer shapes.
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
from jax import lax

from ugcn.segment.winograd import batch_chunk_for, winograd_conv

FORMS = ("taps_in", "taps_out", "taps_xy", "im2col", "winograd2", "winograd4", "direct", "xla")
# What a convolution is run for: "inference" (forward only: MC dropout, prediction) or "train" (forward and
# backward: a training step). The fastest form differs (the backward convolutions of a form have their own
# speed), so each purpose has its own rule: :func:`auto_form` and :func:`train_form`.
PURPOSES = ("inference", "train")
CHANNELS_LAST_3D = ("NDHWC", "DHWIO", "NDHWC")
CHANNELS_LAST_2D = ("NHWC", "HWIO", "NHWC")
AUTO_FORM = "taps_in"  # the form of layers the rules do not give to Winograd or the forms below
# Inputs with fewer channels than this (the first layer) do not use Winograd: the transforms dominate there.
WINOGRAD_MIN_CHANNELS = 8
# Inputs with at most this many channels (the 1-channel first layer) run forward as "direct" (one elementwise
# fusion of 27 * Ci shifted products): measured 1.1 ms against 5.4 (taps_in) and 2.8 (taps_out) on 2 patches
# of 32^3, 1 -> 16 channels. Its autodiff backward is slow (65 ms against 18 for taps_xy), so not for training.
DIRECT_MAX_CHANNELS = 1
# Winograd's batched matmul has, per tile position, one row per tile: B * prod(ceil(n / m)). The rules take
# F(4, 3) where it has at least this many rows (forward / training) ...
WINOGRAD4_MIN_ROWS = {"inference": 16, "train": 16}
# ... else F(2, 3) where it has at least this many, else a stacked-taps form (a short matmul per position
# costs more than the multiplications Winograd saves).
WINOGRAD2_MIN_ROWS = {"inference": 32, "train": 1}
SMALL_FORM = {"inference": "im2col", "train": "taps_xy"}
FIRST_LAYER_FORM = {"inference": AUTO_FORM, "train": AUTO_FORM}  # 3x3x3, 1 < Ci < WINOGRAD_MIN_CHANNELS

Padding = Union[str, Sequence[tuple[int, int]]]


def explicit_padding(padding: Padding, kernel_spatial: Sequence[int]) -> list[tuple[int, int]]:
    if isinstance(padding, str):
        if padding.upper() == "VALID":
            return [(0, 0)] * len(kernel_spatial)
        if padding.upper() in ("SAME", "SAME_LOWER"):
            pads = []
            for k in kernel_spatial:
                total = k - 1
                small, large = total // 2, total - total // 2
                pads.append((small, large) if padding.upper() == "SAME" else (large, small))
            return pads
        raise ValueError(f"unsupported padding {padding!r}")
    return [(int(lo), int(hi)) for lo, hi in padding]


def winograd_rows(spatial: Sequence[int], m: int, batch: int = 1) -> int:
    """Rows of F(m, 3)'s batched matmul (tiles of ``m`` outputs per axis, ``batch`` samples)."""
    return int(batch) * math.prod(-(-int(n) // m) for n in spatial)


def _rule(purpose: str, spatial: Sequence[int], in_channels: int, kernel_spatial: Sequence[int],
          batch: int) -> str:
    if any(n < 1 for n in spatial):
        return AUTO_FORM
    if purpose == "inference" and in_channels <= DIRECT_MAX_CHANNELS:
        return "direct"
    if tuple(kernel_spatial) != (3, 3, 3):
        return AUTO_FORM
    if in_channels < WINOGRAD_MIN_CHANNELS:
        return FIRST_LAYER_FORM[purpose]
    if winograd_rows(spatial, 4, batch) >= WINOGRAD4_MIN_ROWS[purpose]:
        return "winograd4"
    if winograd_rows(spatial, 2, batch) >= WINOGRAD2_MIN_ROWS[purpose]:
        return "winograd2"
    return SMALL_FORM[purpose]


def auto_form(spatial: Sequence[int], in_channels: int, kernel_spatial: Sequence[int], batch: int = 1) -> str:
    """The form :func:`conv3d_slices` uses with ``form="auto"`` (forward: inference) for one layer shape of
    ``batch`` samples: ``"direct"`` for 1-channel inputs, ``"winograd4"`` / ``"winograd2"`` for 3x3x3 kernels
    on at least :data:`WINOGRAD_MIN_CHANNELS` channels where F(4, 3) / F(2, 3) has enough matmul rows
    (:data:`WINOGRAD4_MIN_ROWS`, :data:`WINOGRAD2_MIN_ROWS`), ``"im2col"`` for the rest of those (the 4^3
    bottleneck of 2 patches), :data:`AUTO_FORM` elsewhere.

    Measured (``benchmarks/bench_conv3d.py``'s layers, 2-core CPU at load ~6, interleaved, GFLOP/s
    forward): 4^3 64->128 / 128->128 with 2 patches: im2col 78 / 65, F(2, 3) 35 / 52; with 8 patches F(2, 3)
    112 / 106, im2col 94 / 66. 8^3 with 2 patches: F(4, 3) 120-136, F(2, 3) 98-129; with 8: 190-216 / 88-142.
    Whole 3D U-Net forward, 2 patches (load 2.9, 15 interleaved rounds): 0.0693 s against 0.0754 s with the
    former rule (:func:`train_form`'s), 1.09x. All its 3x3x3 convolutions (load 2.6): 113.7 GFLOP/s against
    PyTorch's 128.0 (0.89x; PyTorch leads on the 8^3 and 4^3 layers, 137-154 against 89-100).
    """
    return _rule("inference", spatial, in_channels, kernel_spatial, batch)


def train_form(spatial: Sequence[int], in_channels: int, kernel_spatial: Sequence[int], batch: int = 1) -> str:
    """The form :func:`conv3d_slices` uses with ``form="auto", purpose="train"`` (forward + backward) for one
    layer shape of ``batch`` samples: as :func:`auto_form` with the training thresholds and without
    ``"direct"`` (its autodiff backward is slow). For now the former inference rule (F(4, 3), F(2, 3) on the
    4^3 layers, ``taps_in`` on the first): the whole 3D U-Net's forward + backward (2 patches, load 6.7) took
    0.53 s with it against 0.62 s with ``taps_xy`` / F(2, 3) on the small layers, whose per-layer advantage
    (measured with a constant output gradient, ``sum(conv)``) did not carry over to the network.
    """
    return _rule("train", spatial, in_channels, kernel_spatial, batch)


def form_for(purpose: str, spatial: Sequence[int], in_channels: int, kernel_spatial: Sequence[int],
             batch: int = 1) -> str:
    """:func:`auto_form` (``purpose="inference"``) or :func:`train_form` (``"train"``) of one layer shape."""
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}, got {purpose!r}")
    return _rule(purpose, spatial, in_channels, kernel_spatial, batch)


def conv3d_slices(
    x: jnp.ndarray, kernel: jnp.ndarray, padding: Padding = "SAME", *, form: str = "auto",
    purpose: str = "inference", precision=None,
) -> jnp.ndarray:
    """Stride-1 3D convolution (cross-correlation, as ``lax.conv_general_dilated``) via 2D convolutions.

    Args:
      x: ``f32[B, X, Y, Z, Ci]``.
      kernel: ``f32[kx, ky, kz, Ci, Co]``.
      padding: ``"SAME"``, ``"VALID"`` or three ``(low, high)`` pairs.
      form: ``"taps_in"``, ``"taps_out"``, ``"taps_xy"``, ``"im2col"``, ``"winograd2"`` / ``"winograd4"``
        (:func:`ugcn.segment.winograd.winograd_conv` F(2, 3) / F(4, 3), 3x3x3 kernels only, the batch in
        cache-sized chunks), ``"xla"`` (plain ``lax.conv_general_dilated``) or ``"auto"`` (the rule of
        ``purpose``).
      purpose: ``"inference"`` (:func:`auto_form`) or ``"train"`` (:func:`train_form`), for ``form="auto"``.
      precision: passed to the 2D convolution.

    Returns:
      ``f32[B, X', Y', Z', Co]``, the sizes ``lax.conv_general_dilated`` gives for that padding.
    """
    if x.ndim != 5 or kernel.ndim != 5 or kernel.shape[3] != x.shape[4]:
        raise ValueError(f"expected x [B, X, Y, Z, Ci] and kernel [kx, ky, kz, Ci, Co], got {x.shape}, {kernel.shape}")
    kx, ky, kz, ci, co = kernel.shape
    pads = explicit_padding(padding, (kx, ky, kz))
    if form == "auto":
        form = form_for(purpose, x.shape[1:4], ci, (kx, ky, kz), batch=x.shape[0])
        if any(lo < 0 or hi < 0 for lo, hi in pads) and form != "direct":  # negative padding crops
            form = AUTO_FORM
    if form == "xla":
        return lax.conv_general_dilated(x, kernel, (1, 1, 1), pads, dimension_numbers=CHANNELS_LAST_3D,
                                        precision=precision)
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS} or 'auto', got {form!r}")
    b = x.shape[0]
    if form in ("winograd2", "winograd4"):
        if (kx, ky, kz) != (3, 3, 3):
            raise ValueError(f"form {form!r} needs a 3x3x3 kernel, got {(kx, ky, kz)}")
        m = 4 if form == "winograd4" else 2
        return winograd_conv(x, kernel, pads, m=m, batch_chunk=batch_chunk_for(x.shape[1:4], ci, m),
                             precision=precision)
    if form in ("taps_xy", "im2col"):
        return _stacked_taps(x, kernel, pads, form, precision)
    if form == "direct":
        return direct_conv(x, kernel, pads)
    xpad = jnp.pad(x, ((0, 0), pads[0], (0, 0), (0, 0), (0, 0)))
    nx = xpad.shape[1] - kx + 1  # output size along X
    if form == "taps_in":
        stacked = jnp.concatenate([xpad[:, a : a + nx] for a in range(kx)], axis=-1)  # [B, X', Y, Z, kx*Ci]
        k2 = jnp.transpose(kernel, (1, 2, 0, 3, 4)).reshape(ky, kz, kx * ci, co)
        y = lax.conv_general_dilated(
            stacked.reshape((b * nx,) + stacked.shape[2:]), k2, (1, 1), pads[1:],
            dimension_numbers=CHANNELS_LAST_2D, precision=precision,
        )
        return y.reshape((b, nx) + y.shape[1:])
    k2 = jnp.transpose(kernel, (1, 2, 3, 0, 4)).reshape(ky, kz, ci, kx * co)
    y = lax.conv_general_dilated(
        xpad.reshape((b * xpad.shape[1],) + xpad.shape[2:]), k2, (1, 1), pads[1:],
        dimension_numbers=CHANNELS_LAST_2D, precision=precision,
    )
    y = y.reshape((b, xpad.shape[1]) + y.shape[1:3] + (kx, co))
    out = y[:, 0:nx, :, :, 0]
    for a in range(1, kx):
        out = out + y[:, a : a + nx, :, :, a]
    return out


def direct_conv(x: jnp.ndarray, kernel: jnp.ndarray, pads: Sequence[tuple[int, int]]) -> jnp.ndarray:
    """Stride-1 convolution (any number N of spatial axes) as a sum of ``prod(k) * Ci`` shifted input channels,
    each times its ``[Co]`` row of the kernel: one elementwise fusion that reads the (small) input once and writes
    the output once, for inputs with very few channels (the 1-channel first layer) where a convolution's or
    matmul's contraction of length ``Ci * taps`` is too short to pay for its layout work.

    Args:
      x: ``f32[B, *spatial, Ci]``.
      kernel: ``f32[*k, Ci, Co]``.
      pads: N ``(low, high)`` paddings (negative crops, as in ``lax.conv_general_dilated``).

    Returns:
      ``f32[B, *out, Co]`` with ``out = spatial + low + high - k + 1`` per axis.
    """
    n = x.ndim - 2
    taps, ci = kernel.shape[:n], kernel.shape[n]
    xpad = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0)] + [(lo, hi, 0) for lo, hi in pads] + [(0, 0, 0)])
    outs = [p - k + 1 for p, k in zip(xpad.shape[1:-1], taps)]
    total = None
    for offset in itertools.product(*(range(k) for k in taps)):
        window = xpad[(slice(None),) + tuple(slice(o, o + m) for o, m in zip(offset, outs))]
        for c in range(ci):
            term = window[..., c : c + 1] * kernel[offset + (c,)]
            total = term if total is None else total + term
    if total is None:
        raise ValueError(f"empty kernel {kernel.shape}")
    return total


def _stacked_taps(x, kernel, pads, form: str, precision) -> jnp.ndarray:
    """The ``"taps_xy"`` and ``"im2col"`` forms of :func:`conv3d_slices` (stride 1, explicit pads)."""
    kx, ky, kz, ci, co = kernel.shape
    b = x.shape[0]
    spatial_pads = pads if form == "im2col" else [pads[0], pads[1], (0, 0)]
    xpad = jnp.pad(x, ((0, 0), *spatial_pads, (0, 0)))
    nx, ny = xpad.shape[1] - kx + 1, xpad.shape[2] - ky + 1
    if form == "im2col":
        nz = xpad.shape[3] - kz + 1
        cols = jnp.concatenate([xpad[:, a : a + nx, c : c + ny, d : d + nz]
                                for a in range(kx) for c in range(ky) for d in range(kz)], axis=-1)
        return jnp.matmul(cols, kernel.reshape(kx * ky * kz * ci, co), precision=precision)
    stacked = jnp.concatenate([xpad[:, a : a + nx, c : c + ny] for a in range(kx) for c in range(ky)], axis=-1)
    k1 = jnp.transpose(kernel, (2, 0, 1, 3, 4)).reshape(kz, kx * ky * ci, co)
    y = lax.conv_general_dilated(stacked.reshape((b * nx * ny,) + stacked.shape[3:]), k1, (1,), pads[2:],
                                 dimension_numbers=("NHC", "HIO", "NHC"), precision=precision)
    return y.reshape((b, nx, ny) + y.shape[1:])


def is_layout(lhs_ndim: int, dimension_numbers, layout: tuple[str, str, str]) -> bool:
    """Whether ``dimension_numbers`` of a rank-``lhs_ndim`` convolution are ``layout`` (e.g. ``("NHWC", "HWIO",
    "NHWC")``)."""
    rank = len(layout[0])
    if lhs_ndim != rank or dimension_numbers is None:
        return False
    want = lax.conv_dimension_numbers((1,) * rank, (1,) * rank, layout)
    try:
        got = lax.conv_dimension_numbers((1,) * rank, (1,) * rank, dimension_numbers)
    except (TypeError, ValueError):
        return False
    return got == want


def dispatch_stride1_channels_last(
    fast: Callable, layout: tuple[str, str, str], lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
    dimension_numbers, feature_group_count: int, batch_group_count: int, precision, preferred_element_type,
):
    """``fast(lhs, rhs, padding, precision)`` for a stride-1, undilated, ungrouped convolution in ``layout`` on
    the CPU; ``lax.conv_general_dilated`` with every argument for anything else (other backends, strides,
    dilations, groups, layouts). The drop-ins of this module and :mod:`ugcn.segment.conv2d` share it."""
    ones = (1,) * (len(layout[0]) - 2)
    fast_case = (
        jax.default_backend() == "cpu"
        and is_layout(jnp.ndim(lhs), dimension_numbers, layout)
        and tuple(window_strides) == ones
        and (lhs_dilation is None or tuple(lhs_dilation) == ones)
        and (rhs_dilation is None or tuple(rhs_dilation) == ones)
        and feature_group_count == 1
        and batch_group_count == 1
        and preferred_element_type is None
        and (not isinstance(padding, str) or padding.upper() in ("SAME", "VALID", "SAME_LOWER"))
    )
    if fast_case:
        return fast(lhs, rhs, padding, precision)
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
        batch_group_count=batch_group_count, precision=precision, preferred_element_type=preferred_element_type,
    )


def lax_drop_in(fast: Callable, layout: tuple[str, str, str], doc: str) -> Callable:
    """A function with ``lax.conv_general_dilated``'s signature that runs ``fast(lhs, rhs, padding, precision)``
    where :func:`dispatch_stride1_channels_last` allows it and ``lax`` elsewhere (docstring ``doc``)."""
    def conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
        feature_group_count: int = 1, batch_group_count: int = 1, precision=None,
        preferred_element_type: Optional[Any] = None,
    ):
        return dispatch_stride1_channels_last(
            fast, layout, lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count, batch_group_count, precision, preferred_element_type)

    conv_general_dilated.__doc__ = doc
    return conv_general_dilated


conv_general_dilated = lax_drop_in(
    lambda x, k, pad, precision: conv3d_slices(x, k, pad, form="auto", precision=precision), CHANNELS_LAST_3D,
    """Drop-in for ``lax.conv_general_dilated`` that runs stride-1 channels-last 3D convolutions as
    :func:`conv3d_slices` (``form="auto"``) on the CPU; every other case, and every other backend (GPU
    libraries have fast 3D convolutions), is passed to ``lax.conv_general_dilated``.

    Use as ``flax.linen.Conv(..., conv_general_dilated=conv_general_dilated)``.
    """)

conv_general_dilated_train = lax_drop_in(
    lambda x, k, pad, precision: conv3d_slices(x, k, pad, form="auto", purpose="train", precision=precision),
    CHANNELS_LAST_3D,
    """:func:`conv_general_dilated` with the training rule (:func:`train_form`, the fastest forward + backward
    per layer shape): what a U-Net built with ``purpose="train"`` uses.""")


def upsample_conv_transpose(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
    """``flax.linen.ConvTranspose`` with stride = kernel size (``SAME``, no kernel transpose) as one matmul.

    Output voxel ``s*i + a`` (per spatial axis) is ``x[i] @ kernel[s-1-a]``: the windows do not overlap,
    so the transposed convolution is a per-voxel matmul ``[.., Ci] @ [Ci, prod(s)*Co]`` and a reshape,
    where XLA:CPU runs ``lax.conv_transpose`` (an input-dilated convolution) on its slow path in 3D.

    Args:
      x: ``f32[B, *spatial, Ci]`` (2 or 3 spatial axes).
      kernel: ``f32[*s, Ci, Co]``, as flax's ``ConvTranspose`` stores it.

    Returns:
      ``f32[B, *(s * spatial), Co]`` without bias.
    """
    dims = x.ndim - 2
    if kernel.ndim != dims + 2 or kernel.shape[-2] != x.shape[-1]:
        raise ValueError(f"expected x [B, *spatial, Ci] and kernel [*s, Ci, Co], got {x.shape}, {kernel.shape}")
    flipped = kernel[(slice(None, None, -1),) * dims]
    strides, co = kernel.shape[:dims], kernel.shape[-1]
    y = jnp.einsum("...c,co->...o", x, jnp.moveaxis(flipped, -2, 0).reshape(x.shape[-1], -1))
    y = y.reshape(x.shape[:-1] + tuple(strides) + (co,))  # [B, *spatial, *s, Co]
    order = [0] + [i for d in range(dims) for i in (1 + d, 1 + dims + d)] + [1 + 2 * dims]
    y = jnp.transpose(y, order)  # [B, n0, s0, n1, s1, ..., Co]
    return y.reshape((x.shape[0],) + tuple(n * s for n, s in zip(x.shape[1:-1], strides)) + (co,))
