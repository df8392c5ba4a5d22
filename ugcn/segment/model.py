"""A trained segmentation model and its whole-volume inference functions.

:func:`make_volume_fn` is the interface the uncertainty code builds on::

    fn = make_volume_fn(model, stochastic=True)           # fn(key, image: f32[X,Y,Z]) -> f32[X,Y,Z,C]
    samples = jax.jit(jax.vmap(fn, in_axes=(0, None)))(jax.random.split(key, 20), image)   # [T,X,Y,Z,C]

The returned function is pure: normalisation (recorded in the model), slicing or patching, the network,
blending and cropping all happen inside it, so it can be jitted and vmapped over keys. Work that does not
depend on the dropout key is done once for several passes: ``fn.apply.passes`` (used by
:func:`ugcn.uncertainty.mc_sample`) runs ``S`` passes at once, with the slices or patches in chunks in the
outer loop, the passes (vmap over keys) in the inner one, and the U-Net's stem (the layers before its first
dropout, :class:`~ugcn.segment.unet.UNet` ``stage="stem"``) once per chunk for all passes; 2D models also give the
samplers ``fn.apply.prepare``, the slices and the stem over all of them, computed once per sampler run.

- 2D model: the axial slices ``[Z, X, Y, M]`` go through the network in chunks (``batch_size`` slices, or
  as many as keep a call within :data:`SLICE_PIXELS_PER_CALL` pixels), in-plane sizes padded (edge values)
  to multiples of ``2**depth``. The chunking never changes a sample: each slice's dropout masks are those
  of all ``Z`` slices run in one call.
- 3D model: overlapping patches on a fixed grid (stride = ``patch * (1 - overlap)``, the last patch flush
  with the border), all patches in one network call (or ``batch_size`` per call in a ``lax.scan``), blended
  with Gaussian (or uniform) weights; volumes smaller than a patch are padded, then cropped back. Several
  passes at once run the patch chunks in the outer loop and the passes (vmap over keys) in the inner one.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from scipy.stats import truncnorm

from ugcn.segment.normalize import Normalization
from ugcn.segment.unet import MASKS, UNet, UNetConfig, dropout_masks, logits_to_probs, rows_of_masks

# Standard deviation of a unit normal truncated to [-2, 2] (flax's variance_scaling constant).
TRUNCATED_NORMAL_STD = 0.87962566103423978

VolumeFn = Callable[[jax.Array, jnp.ndarray], jnp.ndarray]

DEFAULT_PATCH_BATCH = 4
# 3D inference runs all patches in one network call when they hold at most this many voxels (4 patches of
# 32^3), else a lax.scan over chunks of DEFAULT_PATCH_BATCH patches; MC sampling runs a chunk of passes per
# patch chunk, so a call holds passes x patches. Measured (benchmarks/bench_mcdo.py, 3D part, 2-core CPU):
# T = 4 passes over 8 patches took 9.6 s in chunks of 4 patches and 16.6 s with all 8 in one call (smaller
# calls keep the activations in cache), against 32.9 s for a loop of single passes.
PATCH_VOXELS_PER_CALL = 2**17
# 2D inference runs chunks of axial slices, slices x passes x pixels per call up to this many pixels (2 slices of
# 128 x 128 for one pass; 1 slice x 4 passes when mc_sample runs 4 passes together). Measured on the default 2D
# U-Net, 128 x 128 x 64, T = 20, 2-core CPU at load 1.4-5 (best of 2 interleaved runs, one process): 24.9 s with
# the Winograd convolutions (ugcn.segment.conv2d) at this budget, 27.0 s with XLA's convolutions at this budget
# and 27.2 s at 2**17 (the former default), 31 s with Winograd on the 128^2 layers too. Under load 7-8: 52 s at
# this budget, 62 s at 2**17 with Winograd, 72 s for the former default. Earlier, XLA's convolutions on a quiet
# machine, T = 8: 12.2 s at 2**17, 12.4 s for a loop of single passes (8 slices per call), 13.4 s with 64 slices
# per call and 16.6 s with 4 passes x 64 slices per call.
SLICE_PIXELS_PER_CALL = 2**15
# The 2D model's stem (the layers before the first dropout, the same for every pass) over all slices is computed
# once per MC sampler run when it takes at most this many bytes, else once per chunk of slices and passes.
SHARED_STEM_BYTES = 2**28
GAUSSIAN_SIGMA_FRACTION = 1.0 / 8.0  # sigma = patch / 8, as nnU-Net
GAUSSIAN_FLOOR = 1e-3  # border voxels of a patch keep a small weight, so every voxel has weight > 0


@dataclasses.dataclass(frozen=True, eq=False)
class SegmentationModel:
    """A U-Net with its trained variables and the preprocessing it was trained with.

    Attributes:
      config: the architecture.
      params: flax parameter tree.
      batch_stats: flax batch-norm running statistics tree.
      normalization: intensity normalisation applied inside every inference function.
      training: JSON-compatible summary of how it was trained (epochs, steps, final loss, ...).
    """

    config: UNetConfig
    params: Any
    batch_stats: Any
    normalization: Normalization = Normalization()
    training: dict = dataclasses.field(default_factory=dict)

    @property
    def variables(self) -> dict[str, Any]:
        """``{"params": ..., "batch_stats": ...}`` for ``UNet(config).apply``."""
        return {"params": self.params, "batch_stats": self.batch_stats}


def variable_shapes(config: UNetConfig) -> dict[str, Any]:
    """``{"params": ..., "batch_stats": ...}`` of ``jax.ShapeDtypeStruct`` leaves (nothing computed)."""
    side = 2**config.depth
    dummy = jax.ShapeDtypeStruct((1,) + (side,) * config.dims + (config.in_channels,), jnp.float32)
    return jax.eval_shape(
        lambda k, x: UNet(config).init({"params": k}, x, train=False, dropout=False),
        jax.ShapeDtypeStruct((2,), jnp.uint32),
        dummy,
    )


def init_model(
    config: UNetConfig, key: jax.Array, *, normalization: Optional[Normalization] = None
) -> SegmentationModel:
    """A freshly initialised model (random weights, batch-norm statistics 0/1).

    Weights follow flax's defaults (LeCun truncated normal kernels, zero biases, unit BN scales), drawn
    with numpy from a seed derived from ``key``: shapes come from ``jax.eval_shape``, so nothing is
    compiled (XLA compiles a U-Net's random initialiser slowly on the CPU). Same key -> same weights.

    Args:
      config: the architecture.
      key: PRNG key for the weights.
      normalization: intensity normalisation (default: per-volume z-score, no clipping).
    """
    shapes = variable_shapes(config)
    raw = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    rng = np.random.default_rng([int(v) for v in np.asarray(raw).ravel()])

    def init_leaf(path, leaf):
        name = getattr(path[-1], "key", str(path[-1]))
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            std = np.sqrt(1.0 / fan_in) / TRUNCATED_NORMAL_STD
            value = truncnorm.rvs(-2.0, 2.0, size=leaf.shape, random_state=rng) * std
        elif name in ("scale", "var"):
            value = np.ones(leaf.shape)
        else:  # bias, mean
            value = np.zeros(leaf.shape)
        return jnp.asarray(value, leaf.dtype)

    variables = jax.tree_util.tree_map_with_path(init_leaf, shapes)
    return SegmentationModel(
        config=config,
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        normalization=normalization or Normalization(),
    )


def check_image(image: Any, config: UNetConfig, *, name: str = "image") -> None:
    """Validate an image for a model: ``f32[X, Y, Z]`` (M = 1) or ``f32[X, Y, Z, M]``, finite.

    Shapes are checked always (also on tracers); NaN/inf only on concrete arrays.

    Raises:
      ValueError: wrong number of dimensions, wrong number of channels, empty, or non-finite values.
    """
    shape = tuple(np.shape(image))
    m = config.in_channels
    if len(shape) == 3 and m != 1:
        raise ValueError(f"{name}: the model expects {m} channels, i.e. shape [X, Y, Z, {m}]; got {shape}")
    if len(shape) not in (3, 4):
        raise ValueError(f"{name}: expected a 3D volume [X, Y, Z] or [X, Y, Z, M], got shape {shape}")
    if len(shape) == 4 and shape[-1] != m:
        raise ValueError(f"{name}: the model expects {m} channel(s) on the last axis; got shape {shape}")
    if min(shape) < 1:
        raise ValueError(f"{name}: empty volume of shape {shape}")
    if not isinstance(image, jax.core.Tracer):
        arr = np.asarray(image)
        if not np.issubdtype(arr.dtype, np.number) and arr.dtype != np.bool_:
            raise ValueError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
        if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
            raise ValueError(f"{name}: holds NaN or infinite values; fix or mask them before segmenting")


def _with_channels(image: jnp.ndarray) -> jnp.ndarray:
    image = jnp.asarray(image, jnp.float32)
    return image[..., None] if image.ndim == 3 else image


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _slices_fn(cfg: UNetConfig, norm: Normalization, stochastic: bool, batch_size: Optional[int]):
    """``(passes, passes_sliced, to_volume, prepare, passes_prepared)`` of the 2D model.

    ``passes(variables, keys [S], image) -> probs f32[S, X, Y, Z, C]``, ``S`` passes over the axial slices;
    ``passes_sliced`` the same probabilities in the network's slice-major layout ``f32[S, Z', X', Y', C]`` (chunk
    padding, in-plane padding), and ``to_volume(a, image)`` the crop and transpose of any ``[..., Z', X', Y', C]``
    to ``[..., X, Y, Z, C]`` (``passes = to_volume(passes_sliced)``). ``prepare(variables, image)`` does the work
    that no dropout key touches, once for all passes of a sampler run: the normalised, padded slices and (MC
    dropout, within :data:`SHARED_STEM_BYTES`) the U-Net's stem over all of them; ``passes_prepared(variables,
    keys, prepare(variables, image))`` equals ``passes_sliced(variables, keys, image)``.

    The slices run in chunks (``batch_size`` slices, or :func:`slices_per_call` for ``S`` passes): a
    ``lax.map`` over slice chunks outside; inside, the U-Net's stem for the chunk (unless prepared), then the
    ``S`` passes as ONE batch of ``S x chunk`` rows with each pass's dropout masks given (drawn once for all slices
    by :func:`~ugcn.segment.unet.dropout_masks`; faster than ``vmap`` over keys, see
    :class:`~ugcn.segment.unet.ChannelDropout`). Pass ``s`` equals the whole stack of slices run in one call
    with dropout key ``keys[s]`` (:class:`~ugcn.segment.unet.ChannelDropout` draws every mask for all ``Z`` slices and
    takes the chunk's rows), so neither the chunking nor ``S`` changes the samples.
    """
    step = 2**cfg.depth
    unet = UNet(cfg)

    def slices(image: jnp.ndarray) -> jnp.ndarray:
        """``[Z, X', Y', M]``: the normalised axial slices, in-plane sizes padded to multiples of ``2**depth``."""
        check_image(image, cfg)
        x = norm(_with_channels(image))  # [X, Y, Z, M]
        nx, ny = x.shape[:2]
        x = jnp.transpose(x, (2, 0, 1, 3))  # [Z, X, Y, M]: axial slices as a batch
        return jnp.pad(x, ((0, 0), (0, _round_up(nx, step) - nx), (0, _round_up(ny, step) - ny), (0, 0)),
                       mode="edge")

    def prepare(variables: Any, image: jnp.ndarray) -> dict:
        x = slices(image)
        if stochastic and x.shape[0] * x.shape[1] * x.shape[2] * cfg.base_features * 4 <= SHARED_STEM_BYTES:
            return {"stem": unet.apply(variables, x, train=False, stage="stem")}
        return {"slices": x}

    def passes_prepared(variables: Any, keys: jax.Array, prepared: dict) -> jnp.ndarray:
        ((kind, x),) = prepared.items()  # the key is static: a stem computed once, or slices
        nz = x.shape[0]
        n_passes = keys.shape[0] if stochastic else 1
        per_call = min(nz, int(batch_size) if batch_size is not None
                       else slices_per_call(x.shape[1] * x.shape[2], n_passes))
        n_chunks = -(-nz // per_call)
        # edge padding of the slices, or of their stem (the stem works slice by slice: the same rows)
        xs = jnp.pad(x, ((0, n_chunks * per_call - nz),) + ((0, 0),) * 3, mode="edge")
        xs = xs.reshape((n_chunks, per_call) + x.shape[1:])
        offsets = jnp.arange(n_chunks, dtype=jnp.int32) * per_call

        if stochastic:  # every dropout mask of the S passes, for all nz slices: [S, nz, 1, 1, C] per layer
            stem_shape = (1,) + x.shape[1:3] + (cfg.base_features,)
            masks = dropout_masks(unet, variables, jnp.zeros(stem_shape, jnp.float32), keys,
                                  stage="after_stem", total=nz)

        def chunk(args):
            xc, offset = args
            if not stochastic:
                return logits_to_probs(unet.apply(variables, xc, train=False, dropout=False))[None]
            stem = xc if kind == "stem" else unet.apply(variables, xc, train=False, stage="stem")
            # The S passes as one batch of S x per_call rows (pass-major), each with its own masks; the stem is
            # shared (its dropout masks go into the next convolution's kernel, unet.masked_input_conv).
            given = jax.tree_util.tree_map(
                lambda m: jax.vmap(lambda mp: rows_of_masks(mp, offset, per_call))(m).reshape(
                    (n_passes * per_call,) + m.shape[2:]), masks)
            logits = unet.apply({**variables, MASKS: given}, stem, train=False, dropout=True, stage="after_stem")
            return logits_to_probs(logits.reshape((n_passes, per_call) + logits.shape[1:]))  # [S, per_call, X', Y', C]

        if n_chunks == 1:
            probs = chunk((xs[0], offsets[0]))
        else:
            probs = jax.lax.map(chunk, (xs, offsets))  # [n_chunks, S, per_call, X', Y', C]
            probs = jnp.swapaxes(probs, 0, 1).reshape((probs.shape[1], n_chunks * per_call) + probs.shape[3:])
        return probs if stochastic else jnp.broadcast_to(probs, (keys.shape[0],) + probs.shape[1:])

    def passes_sliced(variables: Any, keys: jax.Array, image: jnp.ndarray) -> jnp.ndarray:
        return passes_prepared(variables, keys, {"slices": slices(image)})

    def to_volume(a: jnp.ndarray, image: jnp.ndarray) -> jnp.ndarray:
        nx, ny, nz = image.shape[:3]
        return jnp.moveaxis(a[..., :nz, :nx, :ny, :], -4, -2)  # [..., Z, X, Y, C] -> [..., X, Y, Z, C]

    def passes(variables: Any, keys: jax.Array, image: jnp.ndarray) -> jnp.ndarray:
        return to_volume(passes_sliced(variables, keys, image), image)

    return passes, passes_sliced, to_volume, prepare, passes_prepared


def slices_per_call(pixels_per_slice: int, n_passes: int) -> int:
    """Slices per network call of the 2D U-Net when ``n_passes`` run together: as many as keep
    ``slices x passes x pixels`` within :data:`SLICE_PIXELS_PER_CALL`, at least one."""
    return max(1, SLICE_PIXELS_PER_CALL // max(1, int(pixels_per_slice) * int(n_passes)))


def patch_starts(shape: tuple[int, ...], patch: tuple[int, ...], overlap: float) -> np.ndarray:
    """Corners of a regular patch grid covering a (padded) volume.

    Args:
      shape: volume size, each ``>= patch``.
      patch: patch size.
      overlap: fraction in ``[0, 1)`` shared by neighbours; stride ``max(1, round(patch * (1 - overlap)))``.

    Returns:
      ``i32[N, 3]`` patch corners; the last patch on each axis ends flush with the border.
    """
    axes = []
    for size, p in zip(shape, patch):
        stride = max(1, int(round(p * (1.0 - overlap))))
        starts = list(range(0, size - p + 1, stride))
        if starts[-1] != size - p:
            starts.append(size - p)
        axes.append(np.asarray(starts, np.int32))
    grid = np.meshgrid(*axes, indexing="ij")
    return np.stack([g.ravel() for g in grid], axis=1).astype(np.int32)


def blend_weights(patch: tuple[int, int, int], mode: str) -> np.ndarray:
    """``f32[px, py, pz]`` blending weights: ``"uniform"`` ones, or a separable Gaussian (sigma = patch/8)
    scaled to a maximum of 1 and floored at :data:`GAUSSIAN_FLOOR`."""
    if mode == "uniform":
        return np.ones(patch, np.float32)
    w = np.ones((), np.float64)
    for p in patch:
        c = (p - 1) / 2.0
        g = np.exp(-0.5 * ((np.arange(p) - c) / (p * GAUSSIAN_SIGMA_FRACTION)) ** 2)
        w = np.multiply.outer(w, g)
    w = w / w.max()
    return np.maximum(w, GAUSSIAN_FLOOR).astype(np.float32)


def _patch_plan(cfg: UNetConfig, shape: tuple[int, ...], batch_size: Optional[int]):
    """Host-side plan of a patch grid: ``(padded, starts i32[n_chunks, batch, 3], valid f32[n_chunks, batch],
    total f32[padded])`` (``total`` is the blending normaliser)."""
    patch = cfg.patch
    weights = blend_weights(patch, cfg.blend)
    padded = tuple(max(s, p) for s, p in zip(shape, patch))
    starts = patch_starts(padded, patch, cfg.patch_overlap)
    total = np.zeros(padded, np.float32)
    for s in starts:
        total[s[0] : s[0] + patch[0], s[1] : s[1] + patch[1], s[2] : s[2] + patch[2]] += weights
    n_patches = starts.shape[0]
    if batch_size is not None:
        batch = min(int(batch_size), n_patches)
    elif n_patches * int(np.prod(patch)) <= PATCH_VOXELS_PER_CALL:
        batch = n_patches
    else:
        batch = DEFAULT_PATCH_BATCH
    n_chunks = -(-n_patches // batch)
    pad = n_chunks * batch - n_patches
    valid = np.concatenate([np.ones(n_patches, np.float32), np.zeros(pad, np.float32)])
    starts = np.concatenate([starts, np.repeat(starts[-1:], pad, axis=0)])
    return padded, starts.reshape(n_chunks, batch, 3), valid.reshape(n_chunks, batch), total


def _patches_fn(cfg: UNetConfig, norm: Normalization, stochastic: bool, batch_size: Optional[int]):
    """``passes(variables, keys [S], image) -> probs f32[S, X, Y, Z, C]``: ``S`` passes over one patch grid.

    Pass ``s`` equals the single-pass function with key ``keys[s]`` (patch chunk ``c`` gets dropout key
    ``split(keys[s], n_chunks)[c]``), but each chunk of patches is extracted, and run through the layers
    before the first dropout (the U-Net's stem), once for all ``S`` passes; the rest runs as one batch of
    ``S x batch`` rows with each pass's dropout masks given (:func:`~ugcn.segment.unet.dropout_masks`). With
    ``vmap`` over the keys instead, ``mc_sample`` of the default 3D U-Net (48^3, T = 4, one chunk of 4) ran
    0.82-0.93x a loop of single passes; as one batch 0.99-1.01x (one process, interleaved rounds, load 4.5-5).
    """
    patch = cfg.patch
    weights = blend_weights(patch, cfg.blend)
    unet = UNet(cfg)

    def passes(variables: Any, keys: jax.Array, image: jnp.ndarray) -> jnp.ndarray:
        check_image(image, cfg)
        x = norm(_with_channels(image))  # [X, Y, Z, M]
        size = x.shape[:3]
        m = x.shape[3]
        # The grid and the blending normaliser depend on shapes only: computed on the host at trace time.
        padded, starts, valid, total = _patch_plan(cfg, size, batch_size)
        x = jnp.pad(x, [(0, p - s) for s, p in zip(size, padded)] + [(0, 0)], mode="edge")
        n_chunks, batch = valid.shape
        n_passes = keys.shape[0]
        w = jnp.asarray(weights)[..., None]
        n_out = cfg.output_classes
        # [n_chunks, S] dropout keys: chunk c of pass s uses split(keys[s], n_chunks)[c].
        chunk_keys = jnp.swapaxes(jax.vmap(lambda k: jax.random.split(k, n_chunks))(keys), 0, 1)

        def body(acc, inputs):
            chunk_starts, chunk_valid, pass_keys = inputs
            patches = jax.vmap(lambda s: jax.lax.dynamic_slice(x, (s[0], s[1], s[2], 0), patch + (m,)))(
                chunk_starts
            )
            if stochastic:
                stem = unet.apply(variables, patches, train=False, stage="stem")
                # The S passes as ONE batch of S x batch rows (pass-major), each row with the masks its pass's
                # key draws; vmap over the keys instead carried the pass axis through XLA:CPU's 3D convolution
                # loops as an extra dimension, with copies and broadcasts around every layer.
                masks = dropout_masks(unet, variables, jnp.zeros(stem.shape, stem.dtype), pass_keys,
                                      stage="after_stem")
                given = jax.tree_util.tree_map(lambda a: a.reshape((n_passes * batch,) + a.shape[2:]), masks)
                logits = unet.apply({**variables, MASKS: given}, stem, train=False, dropout=True,
                                    stage="after_stem")
                logits = logits.reshape((n_passes, batch) + logits.shape[1:])  # [S, batch, *patch, K]
            else:
                logits = unet.apply(variables, patches, train=False, dropout=False)[None]
            probs = logits_to_probs(logits) * w * chunk_valid[None, :, None, None, None, None]

            def add(i, acc):
                corner = (0, chunk_starts[i, 0], chunk_starts[i, 1], chunk_starts[i, 2], 0)
                current = jax.lax.dynamic_slice(acc, corner, (acc.shape[0],) + patch + (n_out,))
                return jax.lax.dynamic_update_slice(acc, current + probs[:, i], corner)

            return jax.lax.fori_loop(0, batch, add, acc), None

        acc0 = jnp.zeros((n_passes if stochastic else 1,) + padded + (n_out,), jnp.float32)
        inputs = (jnp.asarray(starts), jnp.asarray(valid), chunk_keys)
        if n_chunks == 1:
            acc, _ = body(acc0, jax.tree_util.tree_map(lambda a: a[0], inputs))
        else:
            acc, _ = jax.lax.scan(body, acc0, inputs)
        probs = acc / jnp.asarray(total)[..., None]
        probs = probs[:, : size[0], : size[1], : size[2]]
        return probs if stochastic else jnp.broadcast_to(probs, (n_passes,) + probs.shape[1:])

    return passes


@dataclasses.dataclass(frozen=True, eq=False)
class VolumeApply:
    """``apply(variables, key, image) -> probs f32[X, Y, Z, C]``, one pass; ``passes(variables, keys [S],
    image) -> f32[S, X, Y, Z, C]`` computes ``S`` passes at once (equal to ``vmap(apply)``) when the
    network can share work between them, else ``None``."""

    single: Callable[[Any, jax.Array, jnp.ndarray], jnp.ndarray]
    passes: Optional[Callable[[Any, jax.Array, jnp.ndarray], jnp.ndarray]] = None
    # The passes in the network's own layout ``f32[S, *raw]`` and ``to_volume(a [..., *raw], image) -> [..., X, Y,
    # Z, C]`` (crop and transpose; linear, so sums over passes can be taken first): samplers sum raw samples and
    # map the sums once (2D, 128 x 128 x 64: the transposed sums of a chunk of 4 passes took 340-470 ms against
    # 24-43 ms in slice-major order, 2-core CPU, load 13).
    passes_raw: Optional[Callable[[Any, jax.Array, jnp.ndarray], jnp.ndarray]] = None
    to_volume: Optional[Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]] = None
    # Work no dropout key touches, done once per sampler run instead of once per chunk of passes:
    # ``prepare(variables, image) -> prepared`` and ``passes_prepared(variables, keys [S], prepared) -> f32[S, *raw]``
    # (equal to ``passes_raw(variables, keys, image)``; 2D: the slices and the U-Net's stem over all of them).
    prepare: Optional[Callable[[Any, jnp.ndarray], Any]] = None
    passes_prepared: Optional[Callable[[Any, jax.Array, Any], jnp.ndarray]] = None
    dims: int = 3  # the U-Net's: samplers pick their defaults per kind (ugcn.uncertainty.sampling.default_streams)

    def __call__(self, variables: Any, key: jax.Array, image: jnp.ndarray) -> jnp.ndarray:
        return self.single(variables, key, image)


def make_volume_fn(model: SegmentationModel, *, stochastic: bool, batch_size: Optional[int] = None) -> VolumeFn:
    """Whole-volume class probabilities as a pure function of a PRNG key and an image.

    Args:
      model: a (trained) :class:`SegmentationModel`.
      stochastic: ``True``: dropout on (one MC-dropout sample per key), batch-norm in inference mode.
        ``False``: deterministic prediction; the key is ignored.
      batch_size: slices (2D) or patches (3D) per network call; ``None``: slices up to
        :data:`SLICE_PIXELS_PER_CALL` pixels per call with all passes of a call counted (2D); all patches at
        once up to :data:`PATCH_VOXELS_PER_CALL` voxels, else :data:`DEFAULT_PATCH_BATCH` (3D). Lower it to
        save memory. In 2D it never changes the samples; in 3D each patch chunk has its own dropout key.

    Returns:
      ``fn(key, image) -> probs`` with ``image: f32[X, Y, Z]`` (or ``f32[X, Y, Z, M]``) and
      ``probs: f32[X, Y, Z, C]``, C >= 2, class axis last, summing to 1. Pure, jit-able, and vmap-able over
      ``key`` (``vmap(fn, in_axes=(0, None))`` gives T samples ``f32[T, X, Y, Z, C]``).

    Raises (when called):
      ValueError: wrong number of dimensions or channels; NaN/inf values (on concrete inputs).
    """
    if batch_size is not None and int(batch_size) < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    apply = _volume_fn_of_variables(model.config, model.normalization, bool(stochastic), batch_size)
    return BoundVolumeFn(apply, model.variables)


@dataclasses.dataclass(frozen=True, eq=False)
class BoundVolumeFn:
    """``fn(key, image) -> probs`` that keeps the weights apart from the computation.

    ``apply(variables, key, image)`` is shared by every model with the same architecture and normalisation,
    so samplers (:func:`ugcn.uncertainty.mc_sample`) compile it once and pass ``variables`` as an argument
    instead of baking each model's weights into its own program.
    """

    apply: Callable[[Any, jax.Array, jnp.ndarray], jnp.ndarray]
    variables: Any

    def __call__(self, key: jax.Array, image: jnp.ndarray) -> jnp.ndarray:
        return self.apply(self.variables, key, image)


@functools.lru_cache(maxsize=32)
def _volume_fn_of_variables(config: UNetConfig, norm: Normalization, stochastic: bool, batch_size: Optional[int]):
    """``fn(variables, key, image) -> probs``: the volume function with the weights as an argument."""
    if config.dims == 2:
        passes, passes_raw, to_volume, prepare, passes_prepared = _slices_fn(config, norm, stochastic, batch_size)
        return VolumeApply(lambda variables, key, image: passes(variables, key[None], image)[0], passes, passes_raw,
                           to_volume, prepare, passes_prepared, dims=2)
    passes = _patches_fn(config, norm, stochastic, batch_size)
    return VolumeApply(lambda variables, key, image: passes(variables, key[None], image)[0], passes, dims=3)


@functools.lru_cache(maxsize=16)
def _deterministic_jit(config: UNetConfig, norm: Normalization):
    # Keyed by architecture and normalisation, weights passed as arguments: models that share a config
    # (a checkpoint and its reload, successive training runs) share one compiled program per shape.
    apply = _volume_fn_of_variables(config, norm, False, None)

    def deterministic_volume(variables, key, image):  # named: profiles and compile logs show this name
        return apply(variables, key, image)

    return jax.jit(deterministic_volume)


#: A scan whose voxel size differs from the training spacing by more than this factor (along any axis) warns.
SPACING_TOLERANCE = 2.0


def check_spacing(model: SegmentationModel, affine: np.ndarray) -> Optional[str]:
    """Warn (``UserWarning``) when a scan's voxel size is far from the model's training spacing.

    Compares the RAS+-ordered spacing of ``affine`` with ``model.training["spacing"]`` (recorded by
    ``ugcn train``); a ratio above :data:`SPACING_TOLERANCE` along any axis warns, since a U-Net sees
    structures at the scale it was trained on. Returns the warning text, or ``None``.
    """
    import warnings

    from ugcn.io import canonical_spacing

    trained = model.training.get("spacing") if isinstance(model.training, dict) else None
    if not trained or len(trained) != 3:
        return None
    spacing = np.asarray(canonical_spacing(affine))
    ratio = np.maximum(spacing / np.asarray(trained, float), np.asarray(trained, float) / spacing)
    if not np.any(ratio > SPACING_TOLERANCE):
        return None
    text = (f"scan spacing {tuple(round(float(v), 3) for v in spacing)} mm is far from the model's training "
            f"spacing {tuple(round(float(v), 3) for v in trained)} mm (up to {float(ratio.max()):.1f}x); "
            "resample the scan to the training spacing for reliable maps")
    warnings.warn(text, UserWarning, stacklevel=2)
    return text


def predict_probabilities(model: SegmentationModel, image: Any, affine: Optional[np.ndarray] = None) -> np.ndarray:
    """Deterministic (dropout off) class probabilities ``f32[X, Y, Z, C]`` of ``image: f32[X, Y, Z(, M)]``.

    With ``affine`` (the image's ``f64[4, 4]`` voxel-to-world matrix), the network sees the image in RAS+
    order (:func:`ugcn.io.to_canonical`, the orientation ``ugcn train`` trains in: axial slices along the
    third axis) and the probabilities are returned in the image's own voxel order; a voxel size far from
    the training spacing warns (:func:`check_spacing`). Without it the array is taken as it is.
    The inference function is jitted once per model and image shape.
    """
    if affine is not None:
        from ugcn.io import from_canonical, to_canonical

        check_spacing(model, affine)
        return from_canonical(predict_probabilities(model, to_canonical(image, affine)), affine)
    check_image(image, model.config)
    fn = _deterministic_jit(model.config, model.normalization)
    probs = fn(model.variables, jax.random.PRNGKey(0), jnp.asarray(image, jnp.float32))
    return np.asarray(probs)


def predict_mask(model: SegmentationModel, image: Any) -> np.ndarray:
    """Deterministic label map ``u8[X, Y, Z]``: the most probable class (binary: foreground iff p > 0.5)."""
    return np.argmax(predict_probabilities(model, image), axis=-1).astype(np.uint8)
