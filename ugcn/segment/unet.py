"""U-Nets with channel-wise (spatial) dropout for Monte Carlo dropout segmentation.

Two architectures share one module, selected by :class:`UNetConfig` ``dims``:

- ``dims=2`` (method R): a 2D U-Net on axial slices. Every conv is ``conv -> BN -> ReLU -> Dropout2d``,
  i.e. dropout follows the batch-norm of *both* convs of every block, as in R's reference code.
- ``dims=3`` (method L): a 3D U-Net on patches, ``(conv -> BN -> ReLU) x 2 -> Dropout3d`` at the end of
  every encoder block (bottleneck included) and every decoder block.

Dropout is channel-wise like PyTorch ``Dropout2d/3d``: one Bernoulli draw per (sample, channel) that zeroes
the whole feature map (``nn.Dropout(broadcast_dims=spatial axes)``), survivors scaled by ``1/(1-rate)``.

Batch-norm mode and dropout are separate switches, because MC dropout runs BN in inference mode (running
statistics) with dropout on: ``UNet(cfg).apply(variables, x, train=False, dropout=True,
rngs={"dropout": key})``. The network returns logits ``f32[B, *spatial, num_classes]``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax, random

from ugcn.config import setting
from ugcn.segment.conv2d import conv_general_dilated as fast_conv2d
from ugcn.segment.conv2d import conv_general_dilated_train as train_conv2d
from ugcn.segment.conv3d import PURPOSES, upsample_conv_transpose
from ugcn.segment.conv3d import conv_general_dilated as fast_conv3d
from ugcn.segment.conv3d import conv_general_dilated_train as train_conv3d

DEFAULT_DROPOUT = {2: 0.3, 3: 0.2}
DEFAULT_PATCH_SIZE = (32, 32, 32)
BLEND_MODES = ("gaussian", "uniform")
# The convolution a U-Net uses when given none, per dims (looked up when the network is traced).
DEFAULT_CONV: dict[int, Callable] = {2: fast_conv2d, 3: fast_conv3d}
# ... and when built with ``purpose="train"`` (the forms fastest forward + backward, for training steps).
TRAIN_CONV: dict[int, Callable] = {2: train_conv2d, 3: train_conv3d}
# Variable collection of given / recorded dropout masks (ChannelDropout).
MASKS = "dropout_masks"
# PyTorch's BatchNorm momentum 0.1 == flax momentum 0.9: running statistics settle within tens of steps.
BN_MOMENTUM = 0.9


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """Architecture of a segmentation U-Net (JSON-serialisable via :meth:`to_dict` / :meth:`from_dict`).

    Attributes:
      dims: 2 (axial-slice U-Net, method R) or 3 (patch U-Net, method L).
      in_channels: number of image modalities M.
      num_classes: 1 = binary with a sigmoid output; > 1 = softmax over that many classes (0 = background).
      base_features: feature maps of the first block; doubled after every down-sampling.
      depth: number of down-samplings (2x max-pool); in-plane sizes are padded to multiples of ``2**depth``.
      dropout_rate: channel-wise dropout rate; ``None`` = 0.3 for 2D (R), 0.2 for 3D (L). Very narrow
        networks (``base_features`` 8) train poorly at 0.2-0.3 after every conv within a few hundred steps:
        they settle on encoding the foreground as "all channels off" (robust to dropping channels), which
        caps p at sigmoid(head bias) < 0.5. Use about 0.1 for tiny demo networks.
      patch_size: 3D only, ``(px, py, pz)`` each a multiple of ``2**depth``; ``None`` = (32, 32, 32).
      patch_overlap: 3D inference: fraction of a patch shared by neighbouring patches, in ``[0, 1)``. The
        time of a pass grows with the patch count: on a 99x117x95 brain with 32^3 patches, 210 patches at
        0.5, 80 at 0.25, 48 at 0 (``benchmarks/bench_mcdo.py`` predicts T = 20 from the measured seconds
        per patch and pass). 0.25 with Gaussian blending: measured on realistic brain phantoms
        (``benchmarks/study_overlap.py``, docs/method.md) it lost no Dice against 0.5, while 0 lost 11
        points (patch borders are no longer averaged away).
      blend: 3D inference: ``"gaussian"`` (centre-weighted, sigma = patch/8) or ``"uniform"`` averaging.
    """

    dims: int = setting(2, choices=(2, 3))
    in_channels: int = setting(1, min=1)
    num_classes: int = setting(1, min=1)
    base_features: int = setting(16, min=1)
    depth: int = setting(3, min=1)
    dropout_rate: Optional[float] = setting(
        None, min=0, lt=1, flag="dropout",
        help="channel-wise dropout rate; none = 0.3 for 2D, 0.2 for 3D (tiny networks train better at about 0.1)")
    patch_size: Optional[tuple[int, int, int]] = setting(
        None, min=1, help="3D patch size, each a multiple of 2**depth; none = 32 32 32")
    patch_overlap: float = setting(0.25, min=0, lt=1)
    blend: str = setting("gaussian", choices=BLEND_MODES)

    def __post_init__(self) -> None:
        if self.dims not in (2, 3):
            raise ValueError(f"UNetConfig.dims must be 2 or 3, got {self.dims!r}")
        for name in ("in_channels", "num_classes", "base_features", "depth"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"UNetConfig.{name} must be a positive integer, got {value!r}")
        if self.dropout_rate is not None and not 0.0 <= float(self.dropout_rate) < 1.0:
            raise ValueError(f"UNetConfig.dropout_rate must be in [0, 1), got {self.dropout_rate!r}")
        if self.patch_size is not None:
            patch = tuple(int(p) for p in self.patch_size)
            object.__setattr__(self, "patch_size", patch)
            if self.dims != 3:
                raise ValueError("UNetConfig.patch_size is for dims=3 only; leave it None for a 2D U-Net")
            step = 2**self.depth
            if len(patch) != 3 or any(p < step or p % step for p in patch):
                raise ValueError(
                    f"UNetConfig.patch_size must be 3 sizes, each a multiple of 2**depth = {step}; got {patch}"
                )
        if not 0.0 <= float(self.patch_overlap) < 1.0:
            raise ValueError(f"UNetConfig.patch_overlap must be in [0, 1), got {self.patch_overlap!r}")
        if self.blend not in BLEND_MODES:
            raise ValueError(f"UNetConfig.blend must be one of {BLEND_MODES}, got {self.blend!r}")

    @property
    def rate(self) -> float:
        """The dropout rate in use (the per-dims default when ``dropout_rate`` is ``None``)."""
        return float(DEFAULT_DROPOUT[self.dims] if self.dropout_rate is None else self.dropout_rate)

    @property
    def patch(self) -> tuple[int, int, int]:
        """3D patch size in use (:data:`DEFAULT_PATCH_SIZE` when ``patch_size`` is ``None``)."""
        if self.dims != 3:
            raise ValueError("a 2D U-Net has no patch size")
        if self.patch_size is None:
            return DEFAULT_PATCH_SIZE
        x, y, z = self.patch_size
        return x, y, z

    @property
    def output_classes(self) -> int:
        """C of the probability maps: 2 for a sigmoid network, else ``num_classes``."""
        return max(2, self.num_classes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible dict (tuples become lists)."""
        out = dataclasses.asdict(self)
        if out["patch_size"] is not None:
            out["patch_size"] = list(out["patch_size"])
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UNetConfig:
        """Inverse of :meth:`to_dict`; unknown keys are a ``ValueError``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown U-Net config keys {unknown}; expected a subset of {sorted(names)}")
        data = dict(data)
        if data.get("patch_size") is not None:
            data["patch_size"] = tuple(data["patch_size"])
        return cls(**data)


def channel_dropout(rate: float, dims: int, name: Optional[str] = None) -> ChannelDropout:
    """Dropout of whole feature maps (PyTorch ``Dropout2d``/``Dropout3d``) for ``[B, *spatial, C]`` inputs."""
    return ChannelDropout(rate, dims, name=name)


class ChannelDropout(nn.Module):
    """``nn.Dropout(rate, broadcast_dims=spatial axes)`` (the same random stream and values) that can also
    drop a slice of rows of a larger batch as the whole batch would.

    ``rows=(total, offset)`` says that ``x: [B, *spatial, C]`` holds rows ``offset .. offset + B`` of a batch
    of ``total`` rows: the mask is drawn for all ``total`` rows (one Bernoulli per row and channel, as for the
    whole batch) and the rows of ``x`` are taken from it, so a batch run in chunks gets the masks it gets
    in one call. Rows past ``total`` (padding of the last chunk) are kept.

    Masks can also be recorded and given (collection :data:`MASKS`, entry ``"mask"``), so that ``S`` passes
    with different keys run as ONE batch of ``S x B`` rows instead of ``vmap`` over keys (measured 1.07x
    slower on the base-16 U-Net, 1 slice of 128^2 x 4 passes, and 1.38x on base 8, 2 slices of 64^2 x 4
    passes). With ``MASKS`` mutable, the mask drawn (``bool[total or B, *ones, C]``, all rows of ``rows``) is
    stored; when ``MASKS`` holds a mask, it is used as given, one row per row of ``x`` (``bool[B, *ones, C]``),
    and no key is drawn (:func:`dropout_masks`, :func:`rows_of_masks`).
    """

    rate: float
    dims: int

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, deterministic: bool, rows: Optional[tuple[int, Any]] = None) -> jnp.ndarray:
        if deterministic or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        given = self._given(x)
        if given is not None:
            if given.shape[0] > x.shape[0]:  # x is shared by S passes: S x B rows out
                x = jnp.broadcast_to(x, (given.shape[0] // x.shape[0],) + x.shape).reshape(
                    (given.shape[0],) + x.shape[1:])
            return lax.select(jnp.broadcast_to(given, x.shape), x / keep, jnp.zeros_like(x))
        rng = self.make_rng("dropout")
        spatial_ones = (1,) * self.dims
        if rows is None:
            mask = random.bernoulli(rng, p=keep, shape=(x.shape[0],) + spatial_ones + (x.shape[-1],))
            if self.is_mutable_collection(MASKS):
                self.put_variable(MASKS, "mask", mask)
        else:
            total, offset = rows
            mask = random.bernoulli(rng, p=keep, shape=(int(total),) + spatial_ones + (x.shape[-1],))
            if self.is_mutable_collection(MASKS):
                self.put_variable(MASKS, "mask", mask)
            mask = rows_of_masks(mask, offset, x.shape[0])
        return lax.select(jnp.broadcast_to(mask, x.shape), x / keep, jnp.zeros_like(x))


    def _given(self, x: jnp.ndarray) -> Optional[jnp.ndarray]:
        """The given mask (``bool[B or S x B, *ones, C]``) for an input ``x: [B, ...]``, or ``None``."""
        if not self.has_variable(MASKS, "mask") or self.is_mutable_collection(MASKS):
            return None
        given: jnp.ndarray = self.get_variable(MASKS, "mask")
        rows = given.shape[0]
        if given.shape[1:] != (1,) * self.dims + (x.shape[-1],) or rows % x.shape[0]:
            raise ValueError(f"given dropout mask of shape {given.shape} does not fit an input of shape {x.shape}")
        return given

    def shared_input_scales(self, x: jnp.ndarray) -> Optional[jnp.ndarray]:
        """``f32[S, B, C]`` (``0`` or ``1 / (1 - rate)``) when the given mask says that ``x: [B, ..., C]`` is
        shared by ``S > 1`` passes, else ``None``: a linear layer next can take the masks into its weights."""
        if self.rate == 0.0:
            return None
        given = self._given(x)
        if given is None or given.shape[0] == x.shape[0]:
            return None
        b, c = x.shape[0], x.shape[-1]
        return given.reshape(-1, b, c).astype(x.dtype) / (1.0 - self.rate)


def masked_input_conv(conv: Callable, scales: jnp.ndarray) -> Callable:
    """A ``lax.conv_general_dilated``-like convolution (channels last, ``rhs: [*taps, Ci, Co]``) of an input
    ``[B, *spatial, Ci]`` shared by ``S`` passes whose input channels are scaled by ``scales: f32[S, B, Ci]``
    (channel dropout), returning the ``S x B`` outputs, pass-major: ``conv(x * scales[s, b], w) ==
    conv(x, w * scales[s, b][:, None])``, so each row runs ONE convolution with ``S x Co`` output channels
    (the masks in the kernel) instead of ``S`` convolutions of the masked copies."""
    n_passes, n_rows, _ = scales.shape

    def run(lhs, rhs, *args, **kwargs):
        co = rhs.shape[-1]
        outs = []
        for r in range(n_rows):
            k = rhs[..., None, :, :] * scales[:, r, :, None]  # [*taps, S, Ci, Co]
            k = jnp.moveaxis(k, -3, -2).reshape(rhs.shape[:-1] + (n_passes * co,))  # [*taps, Ci, S x Co]
            outs.append(conv(lhs[r : r + 1], k, *args, **kwargs))
        y = jnp.concatenate(outs) if n_rows > 1 else outs[0]  # [B, *spatial, S x Co]
        y = jnp.moveaxis(y.reshape(y.shape[:-1] + (n_passes, co)), -2, 0)  # [S, B, *spatial, Co]
        return y.reshape((n_passes * n_rows,) + y.shape[2:])

    return run


def rows_of_masks(masks: jnp.ndarray, offset: Any, n: int) -> jnp.ndarray:
    """Rows ``offset .. offset + n`` of dropout masks ``bool[total, ...]`` (rows past ``total``: all kept),
    as :class:`ChannelDropout` takes a chunk's rows of the whole batch's masks."""
    pad = -int(masks.shape[0]) % n
    masks = jnp.pad(masks, ((0, pad),) + ((0, 0),) * (masks.ndim - 1), constant_values=True)
    return lax.dynamic_slice_in_dim(masks, offset, n, axis=0)


def dropout_masks(unet: UNet, variables: Any, x: jnp.ndarray, keys: jax.Array, *, stage: str = "all",
                  total: Optional[int] = None) -> Any:
    """Every :class:`ChannelDropout` mask of ``unet`` for each of ``S`` keys, as ``apply(..., dropout=True,
    rngs={"dropout": key})`` draws them: a pytree (``MASKS`` collection) of ``bool[S, total, *ones, C]``.

    ``x``: an input of the network's shape for ``stage`` (any batch; only its shape matters: under ``jit``
    the network's arithmetic is dead code). ``total``: the rows of the whole batch (``rows=(total, .)``);
    ``None`` = ``x``'s batch. Give a batch of ``S x B`` rows, pass-major, its masks with
    ``{**variables, MASKS: masks}`` (rows per pass from :func:`rows_of_masks`, then ``reshape(S * B, ...)``).
    """
    rows = None if total is None else (int(total), 0)

    def one(key):
        _, state = unet.apply(variables, x, train=False, dropout=True, stage=stage, rows=rows, rngs={"dropout": key},
                              mutable=[MASKS])
        return state[MASKS]

    return jax.vmap(one)(keys)


class ConvBlock(nn.Module):
    """Two ``conv3 -> BN -> ReLU`` layers with channel-wise dropout.

    ``dropout_each_conv=True`` puts dropout after each of the two convs (2D, method R); ``False`` puts one
    dropout at the end of the block (3D, method L). ``stage="stem"`` returns the activation just before
    the block's first dropout; ``stage="after_stem"`` takes that activation as ``x`` and runs the rest
    (layers are named explicitly, so both stages address the same parameters and dropout streams as
    ``stage="all"``).
    """

    features: int
    dims: int
    rate: float
    dropout_each_conv: bool
    conv_general_dilated: Optional[Callable] = None

    @nn.compact
    def __call__(
        self, x: jnp.ndarray, *, train: bool, dropout: bool, stage: str = "all", rows: Optional[tuple[int, Any]] = None
    ) -> jnp.ndarray:
        stem_convs = 1 if self.dropout_each_conv else 2  # convs before the first dropout
        n_dropout = 0
        shared = None  # f32[S, B, C]: x is shared by S passes, dropout still to apply (in the next conv)
        for i in range(2):
            if stage != "after_stem" or i >= stem_convs:
                conv = self.conv_general_dilated or lax.conv_general_dilated
                if shared is not None:
                    conv, shared = masked_input_conv(conv, shared), None
                x = nn.Conv(self.features, (3,) * self.dims, padding="SAME", use_bias=False,
                            conv_general_dilated=conv, name=f"Conv_{i}")(x)
                x = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, name=f"BatchNorm_{i}")(x)
                x = nn.relu(x)
            if stage == "stem" and i + 1 == stem_convs:
                return x
            if self.dropout_each_conv or i == 1:
                drop = channel_dropout(self.rate, self.dims, name=f"Dropout_{n_dropout}")
                if i == 0 and dropout:  # a conv follows: given masks of S passes sharing x go into its kernel
                    shared = drop.shared_input_scales(x)
                if shared is None:
                    x = drop(x, deterministic=not dropout, rows=rows)
                n_dropout += 1
        return x


class UpConv(nn.Module):
    """``nn.ConvTranspose(features, (2,)*dims, strides=(2,)*dims)`` (same parameters and values) as one matmul
    (:func:`ugcn.segment.conv3d.upsample_conv_transpose`)."""

    features: int
    dims: int

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (2,) * self.dims + (x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        return upsample_conv_transpose(x, kernel) + bias


class UNet(nn.Module):
    """U-Net returning logits.

    Call: ``x: f32[B, *spatial, in_channels] -> f32[B, *spatial, num_classes]`` with every spatial size a
    multiple of ``2**depth``. ``train`` switches batch-norm to batch statistics (and needs
    ``mutable=["batch_stats"]``); ``dropout`` switches dropout on (and needs ``rngs={"dropout": key}``).

    ``stage``: ``"all"`` (the network), ``"stem"`` (only the layers before the first dropout, which do not
    depend on the dropout key: ``f32[B, *spatial, base_features]``) or ``"after_stem"`` (``x`` is that
    stem; the rest of the network). ``apply(v, apply(v, x, stage="stem"), stage="after_stem", ...)``
    equals ``apply(v, x, ...)`` with the same dropout key: MC dropout computes the stem once for all passes.

    ``rows=(total, offset)``: ``x`` holds rows ``offset .. offset + B`` of a batch of ``total`` (e.g. a chunk of
    a volume's slices); every dropout mask is the one those rows get when the whole batch runs in one call
    (:class:`ChannelDropout`), so chunking a batch does not change its samples.

    ``conv_general_dilated`` computes the convolutions (``lax.conv_general_dilated``'s signature); ``None``:
    :data:`DEFAULT_CONV`, i.e. :func:`ugcn.segment.conv3d.conv_general_dilated` for 3D (slice-wise or Winograd
    per layer: XLA:CPU's own 3D convolution is several times slower, see ``benchmarks/bench_conv3d.py``) and
    :func:`ugcn.segment.conv2d.conv_general_dilated` for 2D (Winograd F(4, 3) on the deeper layers, XLA's
    convolution on the rest, see ``benchmarks/bench_conv2d.py``). Same parameters either way.

    ``purpose``: what the network is run for when ``conv_general_dilated`` is ``None``: ``"inference"``
    (:data:`DEFAULT_CONV`, the per-layer forms fastest forward: MC dropout, prediction) or ``"train"``
    (:data:`TRAIN_CONV`, the forms fastest forward + backward: ``make_train_step``). Only the convolution
    algorithm differs: same parameters (checkpoints load either way) and the same values to float rounding.
    """

    config: UNetConfig
    conv_general_dilated: Optional[Callable] = None
    purpose: str = "inference"

    @nn.compact
    def __call__(
        self, x: jnp.ndarray, *, train: bool = False, dropout: bool = False, stage: str = "all",
        rows: Optional[tuple[int, Any]] = None,
    ) -> jnp.ndarray:
        if stage not in ("all", "stem", "after_stem"):
            raise ValueError(f"stage must be 'all', 'stem' or 'after_stem', got {stage!r}")
        cfg = self.config
        dims = cfg.dims
        if self.purpose not in PURPOSES:
            raise ValueError(f"purpose must be one of {PURPOSES}, got {self.purpose!r}")
        conv = self.conv_general_dilated
        if conv is None:
            conv = (TRAIN_CONV if self.purpose == "train" else DEFAULT_CONV)[dims]
        block = lambda level: ConvBlock(  # noqa: E731
            cfg.base_features * 2**level, dims, cfg.rate, dropout_each_conv=(dims == 2), conv_general_dilated=conv
        )
        skips = []
        for level in range(cfg.depth):
            if level == 0 and stage != "all":
                x = block(0)(x, train=train, dropout=dropout, stage=stage, rows=rows)
                if stage == "stem":
                    return x
            else:
                x = block(level)(x, train=train, dropout=dropout, rows=rows)
            skips.append(x)
            x = nn.max_pool(x, (2,) * dims, strides=(2,) * dims)
        x = block(cfg.depth)(x, train=train, dropout=dropout, rows=rows)
        for i, level in enumerate(reversed(range(cfg.depth))):
            features = cfg.base_features * 2**level
            if self.conv_general_dilated is None:  # the same layer as a matmul, named as flax names it
                x = UpConv(features, dims, name=f"ConvTranspose_{i}")(x)
            else:
                x = nn.ConvTranspose(features, (2,) * dims, strides=(2,) * dims)(x)
            x = jnp.concatenate([x, skips[level]], axis=-1)
            x = block(level)(x, train=train, dropout=dropout, rows=rows)
        return nn.Conv(cfg.num_classes, (1,) * dims, conv_general_dilated=conv)(x)


def logits_to_probs(logits: jnp.ndarray) -> jnp.ndarray:
    """Class probabilities with C >= 2 on the last axis.

    ``logits: f32[..., K]``; K = 1 (sigmoid p) gives ``stack([1-p, p], -1)``, K > 1 gives ``softmax``.
    Returns ``f32[..., max(2, K)]``.
    """
    if logits.shape[-1] == 1:
        p = nn.sigmoid(logits[..., 0])
        return jnp.stack([1.0 - p, p], axis=-1)
    return nn.softmax(logits, axis=-1)
