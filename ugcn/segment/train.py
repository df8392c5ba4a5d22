"""Training a segmentation U-Net: Dice + cross-entropy, Adam, on-device sampling and augmentation.

One training step (:func:`make_train_step`) is pure; the jitted full step draws its batch from the
device-resident data set with its own key, augments it, and updates the parameters. Steps run in a Python
loop, not in ``lax.scan``: XLA:CPU runs the step 7-13x slower inside a while loop (see :func:`_jitted_full_step`);
the loss is read back once per epoch.

- 2D: every axial slice of every volume is a sample; a fraction ``foreground_fraction`` of the draws is
  taken among slices that hold foreground, the rest uniformly among all slices.
- 3D: patches of ``config.patch``; a fraction ``foreground_fraction`` is centred on a random foreground
  voxel, the rest placed uniformly.
- Augmentation (per sample, inside the jitted step; :class:`Augmentation`): optional random flips of every
  spatial axis and 90-degree in-plane rotation (when the in-plane sizes are equal), intensity scale
  ``U(1-s, 1+s)`` and shift
  ``U(-t, t)`` of the normalised image, Gaussian noise with a random standard deviation ``U(0, n)``.

Learning rate: 1e-3 by default for both 2D and 3D. Method L used 1e-4 for its 3D U-Net on real MS data
with long training; 1e-3 trains the small demo networks in a few hundred steps.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from ugcn.config import MAX_SEED, setting
from ugcn.segment.model import SegmentationModel, check_image, init_model
from ugcn.segment.normalize import Normalization
from ugcn.segment.unet import UNet, UNetConfig

DICE_SMOOTH = 1.0


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """On-device augmentation settings (all applied per sample, with the step's key).

    The default is intensity-only: flips and rotations remove the left/right and anterior/posterior
    position of an organ, a strong cue with few training volumes (a spleen lies on the left); switch them
    on for targets without a preferred place, such as MS lesions: ``Augmentation(flips=True, rotate90=True)``.

    Attributes:
      flips: random flip of each spatial axis with probability 1/2.
      rotate90: random in-plane 90-degree rotation (only when the in-plane sizes are equal).
      scale: intensity multiplied by ``U(1 - scale, 1 + scale)``.
      shift: intensity shifted by ``U(-shift, shift)`` (normalised units).
      noise: additive Gaussian noise with standard deviation ``U(0, noise)``.
    """

    flips: bool = False
    rotate90: bool = False
    scale: float = 0.1
    shift: float = 0.1
    noise: float = 0.05


NO_AUGMENTATION = Augmentation(flips=False, rotate90=False, scale=0.0, shift=0.0, noise=0.0)
AUGMENTATIONS = {"none": NO_AUGMENTATION, "intensity": Augmentation(), "full": Augmentation(flips=True, rotate90=True)}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How a U-Net is trained (the settings of :func:`train_model`; the ``ugcn train`` flags).

    Attributes:
      epochs: training epochs; an epoch is ``steps_per_epoch`` Adam steps on randomly drawn slices (2D) or
        patches (3D), not a pass over the data.
      steps_per_epoch: Adam steps per epoch (the loss history has one mean per epoch).
      batch_size: slices (2D) or patches (3D) per step.
      learning_rate: Adam learning rate.
      foreground_fraction: share of the drawn slices or patches that must hold foreground.
      augment: on-device augmentation: none; intensity (scale, shift, noise); full (also flips and
        90-degree rotations).
      clip: intensity window applied before the z-score, e.g. -160 240 for abdominal CT (none: no clipping).
      seed: seed of initialisation, sampling, augmentation and dropout.
    """

    epochs: int = setting(10, min=1)
    steps_per_epoch: int = setting(30, min=1)
    batch_size: int = setting(8, min=1)
    learning_rate: float = setting(1e-3, gt=0)
    foreground_fraction: float = setting(0.5, min=0, max=1)
    augment: str = setting("intensity", choices=tuple(AUGMENTATIONS))
    clip: Optional[tuple[float, float]] = setting(None, metavar="HU")
    seed: int = setting(0, min=0, max=MAX_SEED)

    def train_kwargs(self) -> dict:
        """The keyword arguments of :func:`train_model` these settings stand for."""
        return dict(epochs=self.epochs, steps_per_epoch=self.steps_per_epoch, batch_size=self.batch_size,
                    learning_rate=self.learning_rate, seed=self.seed, foreground_fraction=self.foreground_fraction,
                    normalization=Normalization(clip=self.clip), augmentation=AUGMENTATIONS[self.augment])


class TrainState(NamedTuple):
    """Everything a training step updates."""

    params: Any
    batch_stats: Any
    opt_state: Any
    step: jnp.ndarray


class Batch(NamedTuple):
    """A training batch: ``image f32[B, *S, M]``, ``label i32[B, *S]``, ``mask f32[B, *S]`` (0 = padding)."""

    image: jnp.ndarray
    label: jnp.ndarray
    mask: jnp.ndarray


def dice_ce_loss(logits: jnp.ndarray, label: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """Cross-entropy plus soft Dice loss on the foreground, over the voxels where ``mask`` is 1.

    Args:
      logits: ``f32[B, *S, K]``; K = 1 is a sigmoid (binary) network, K > 1 softmax.
      label: ``i32[B, *S]`` class indices in ``[0, max(K, 2))``.
      mask: ``f32[B, *S]`` voxel weights (0 on padding).

    Returns:
      Scalar ``mean CE + (1 - soft Dice)``; the soft Dice is computed over the whole batch, averaged over
      the foreground classes (1..K-1) for softmax networks, with smoothing 1.
    """
    mask = mask.astype(jnp.float32)
    denom = jnp.maximum(jnp.sum(mask), 1.0)
    spatial = tuple(range(label.ndim))
    if logits.shape[-1] == 1:
        z = logits[..., 0]
        y = (label > 0).astype(jnp.float32)
        ce = jnp.sum(optax.sigmoid_binary_cross_entropy(z, y) * mask) / denom
        p = jax.nn.sigmoid(z) * mask
        inter = jnp.sum(p * y)
        dice = (2.0 * inter + DICE_SMOOTH) / (jnp.sum(p) + jnp.sum(y * mask) + DICE_SMOOTH)
        return ce + 1.0 - dice
    ce = jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, label) * mask) / denom
    p = jax.nn.softmax(logits, axis=-1)[..., 1:] * mask[..., None]
    y = jax.nn.one_hot(label, logits.shape[-1])[..., 1:] * mask[..., None]
    inter = jnp.sum(p * y, axis=spatial)
    dice = (2.0 * inter + DICE_SMOOTH) / (jnp.sum(p, axis=spatial) + jnp.sum(y, axis=spatial) + DICE_SMOOTH)
    return ce + 1.0 - jnp.mean(dice)


def make_train_step(config: UNetConfig, optimizer: optax.GradientTransformation, *, purpose: str = "train"):
    """``train_step(state, batch, key) -> (state, loss)``: one Adam step on a :class:`Batch` (pure, jit-able).

    Batch-norm uses batch statistics (running averages updated), dropout is on with ``key``. The U-Net runs
    its convolutions with the training rule (``UNet(config, purpose="train")``: the forms fastest forward +
    backward; same parameters as the inference network). ``purpose="inference"`` builds it with the inference
    rule instead (the same values to float rounding; for benchmarks).
    """
    unet = UNet(config, purpose=purpose)

    def loss_fn(params, batch_stats, batch: Batch, key):
        logits, updates = unet.apply(
            {"params": params, "batch_stats": batch_stats},
            batch.image,
            train=True,
            dropout=True,
            rngs={"dropout": key},
            mutable=["batch_stats"],
        )
        return dice_ce_loss(logits, batch.label, batch.mask), updates["batch_stats"]

    def train_step(state: TrainState, batch: Batch, key: jax.Array):
        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.batch_stats, batch, key
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(params, batch_stats, opt_state, state.step + 1), loss

    return train_step


def augment_sample(
    key: jax.Array, image: jnp.ndarray, label: jnp.ndarray, mask: jnp.ndarray, aug: Augmentation
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Augment one sample ``image f32[*S, M]``, ``label [*S]``, ``mask [*S]`` (same geometric transform for
    all three; intensity changes on the image only). Pure; vmap it over a batch of keys."""
    k_flip, k_rot, k_scale, k_shift, k_sigma, k_noise = jax.random.split(key, 6)
    n_spatial = label.ndim
    arrays: tuple[jax.Array, ...] = (image, label, mask)
    if aug.flips:
        flips = jax.random.bernoulli(k_flip, 0.5, (n_spatial,))
        for axis in range(n_spatial):
            arrays = tuple(jnp.where(flips[axis], jnp.flip(a, axis), a) for a in arrays)
    if aug.rotate90 and label.shape[0] == label.shape[1]:
        rot = jax.random.bernoulli(k_rot, 0.5)
        arrays = tuple(jnp.where(rot, jnp.rot90(a, 1, axes=(0, 1)), a) for a in arrays)
    image, label, mask = arrays
    scale = jax.random.uniform(k_scale, (), minval=1.0 - aug.scale, maxval=1.0 + aug.scale)
    shift = jax.random.uniform(k_shift, (), minval=-aug.shift, maxval=aug.shift)
    sigma = jax.random.uniform(k_sigma, (), minval=0.0, maxval=aug.noise)
    image = image * scale + shift + sigma * jax.random.normal(k_noise, image.shape)
    return image, label, mask


# ----------------------------------------------------------------------------------------------------------
# Device-resident data sets and samplers


class SliceData(NamedTuple):
    """All axial slices, padded in-plane: ``image f32[N, H, W, M]``, ``label u8[N, H, W]``,
    ``size i32[N, 2]`` (unpadded in-plane size), ``has_fg bool[N]``."""

    image: jnp.ndarray
    label: jnp.ndarray
    size: jnp.ndarray
    has_fg: jnp.ndarray


class PatchData(NamedTuple):
    """Volumes padded to a common shape: ``image f32[V, X, Y, Z, M]``, ``label u8[V, X, Y, Z]``,
    ``size i32[V, 3]`` (unpadded), foreground voxel coordinates ``fg i32[F, 3]`` with per-volume
    ``fg_offset i32[V]`` and ``fg_count i32[V]``."""

    image: jnp.ndarray
    label: jnp.ndarray
    size: jnp.ndarray
    fg: jnp.ndarray
    fg_offset: jnp.ndarray
    fg_count: jnp.ndarray


MAX_FG_POINTS = 20000  # foreground voxels kept per volume for patch centring (a seeded subsample)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _pad_to(a: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    pads = [(0, t - s) for s, t in zip(a.shape, shape)] + [(0, 0)] * (a.ndim - len(shape))
    return np.pad(a, pads, mode="edge")


def _slice_data(images: list[np.ndarray], labels: list[np.ndarray], config: UNetConfig) -> SliceData:
    step = 2**config.depth
    h = _round_up(max(im.shape[0] for im in images), step)
    w = _round_up(max(im.shape[1] for im in images), step)
    xs, ys, sizes = [], [], []
    for im, lab in zip(images, labels):
        xs.append(np.transpose(_pad_to(im, (h, w)), (2, 0, 1, 3)))
        ys.append(np.transpose(_pad_to(lab, (h, w)), (2, 0, 1)))
        sizes.append(np.tile(np.asarray(im.shape[:2], np.int32), (im.shape[2], 1)))
    x, y = np.concatenate(xs), np.concatenate(ys)
    has_fg = np.array([lab[:, :, z].any() for lab in labels for z in range(lab.shape[2])])
    return SliceData(jnp.asarray(x), jnp.asarray(y), jnp.asarray(np.concatenate(sizes)), jnp.asarray(has_fg))


def _patch_data(images: list[np.ndarray], labels: list[np.ndarray], config: UNetConfig, seed: int) -> PatchData:
    patch = config.patch
    shape = tuple(max(max(im.shape[a] for im in images), patch[a]) for a in range(3))
    rng = np.random.default_rng(seed)
    fg, count_list = [], []
    for lab in labels:
        coords = np.argwhere(lab > 0).astype(np.int32)
        if len(coords) > MAX_FG_POINTS:
            coords = coords[np.sort(rng.choice(len(coords), MAX_FG_POINTS, replace=False))]
        fg.append(coords)
        count_list.append(len(coords))
    counts = np.asarray(count_list, np.int32)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int32)
    fg_all = np.concatenate(fg) if counts.sum() else np.zeros((1, 3), np.int32)
    return PatchData(
        image=jnp.asarray(np.stack([_pad_to(im, shape) for im in images])),
        label=jnp.asarray(np.stack([_pad_to(lab, shape) for lab in labels])),
        size=jnp.asarray(np.asarray([im.shape[:3] for im in images], np.int32)),
        fg=jnp.asarray(fg_all),
        fg_offset=jnp.asarray(offsets),
        fg_count=jnp.asarray(counts),
    )


def _randint(key: jax.Array, n: jnp.ndarray) -> jnp.ndarray:
    """Uniform integer in ``[0, n)`` for a traced ``n >= 1`` (``n`` may be an array)."""
    u = jax.random.uniform(key, jnp.shape(n))
    return jnp.minimum((u * n).astype(jnp.int32), n - 1)


def sample_slices(data: SliceData, key: jax.Array, batch_size: int, foreground_fraction: float) -> Batch:
    """Draw ``batch_size`` slices: with probability ``foreground_fraction`` among slices holding foreground,
    else uniformly. Returns a :class:`Batch` of ``[B, H, W(, M)]`` arrays."""
    n = data.image.shape[0]
    k_pick, k_fg, k_any = jax.random.split(key, 3)
    p_fg = data.has_fg / jnp.maximum(jnp.sum(data.has_fg), 1)
    from_fg = jax.random.bernoulli(k_pick, foreground_fraction * jnp.any(data.has_fg), (batch_size,))
    idx = jnp.where(
        from_fg,
        jax.random.choice(k_fg, n, (batch_size,), p=p_fg),
        jax.random.randint(k_any, (batch_size,), 0, n),
    )
    h, w = data.image.shape[1:3]
    size = data.size[idx]
    rows = jnp.arange(h)[None, :, None] < size[:, 0, None, None]
    mask = rows & (jnp.arange(w)[None, None, :] < size[:, 1, None, None])
    return Batch(data.image[idx], data.label[idx].astype(jnp.int32), mask.astype(jnp.float32))


def sample_patches(
    data: PatchData, key: jax.Array, batch_size: int, foreground_fraction: float, patch: tuple[int, int, int]
) -> Batch:
    """Draw ``batch_size`` patches: a random volume, then with probability ``foreground_fraction`` a patch
    centred (as far as the border allows) on a random foreground voxel, else a uniform position."""
    patch_arr = jnp.asarray(patch, jnp.int32)
    m = data.image.shape[-1]

    def one(k):
        k_vol, k_pick, k_fg, k_pos = jax.random.split(k, 4)
        v = _randint(k_vol, jnp.int32(data.image.shape[0]))
        size = data.size[v]
        room = jnp.maximum(size - patch_arr, 0)
        count = data.fg_count[v]
        centre = data.fg[data.fg_offset[v] + _randint(k_fg, jnp.maximum(count, 1))]
        use_fg = jax.random.bernoulli(k_pick, foreground_fraction) & (count > 0)
        start = jnp.where(use_fg, jnp.clip(centre - patch_arr // 2, 0, room), _randint(k_pos, room + 1))
        image = jax.lax.dynamic_slice(data.image[v], (start[0], start[1], start[2], 0), patch + (m,))
        label = jax.lax.dynamic_slice(data.label[v], tuple(start), patch)
        grids = jnp.meshgrid(*[jnp.arange(p) for p in patch], indexing="ij")
        mask = (grids[0] + start[0] < size[0]) & (grids[1] + start[1] < size[1]) & (grids[2] + start[2] < size[2])
        return image, label.astype(jnp.int32), mask.astype(jnp.float32)

    return Batch(*jax.vmap(one)(jax.random.split(key, batch_size)))


# ----------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _jitted_full_step(
    config: UNetConfig, learning_rate: float, batch_size: int, foreground_fraction: float, augmentation: Augmentation
):
    """``step(state, data, key) -> (state, loss)``: sample, augment, update; jitted, state donated.

    Cached by its settings so that repeated trainings (cross-validation folds, tests) compile once per
    data shape. A Python loop over this step beats a ``lax.scan`` (or ``fori_loop``, even of length 1): the
    step runs 7-13x slower inside a while loop (2D U-Net, batch 8 of 96x96; ``benchmarks/bench_segment.py``).
    The cause, read off the compiled HLO: the backward convolutions come out of autodiff in layouts that
    XLA:CPU's Eigen convolution does not take (the kernel gradient contracts over the batch,
    ``f01b_i01o->01bf``; the input gradient uses the transposed kernel, ``01oi``). XLA:CPU's
    ``ConvCanonicalization`` pass transposes such operands into NHWC/HWIO, but it visits only the entry
    computation; inside a while body they stay as they are and are emitted as generic loop nests (29 of the
    43 convolutions of that step). Forward-only inference has only canonical convolutions, hence no
    difference there; a fully unrolled scan has no while body and runs at the loop's speed, and so do
    backward convolutions written in the Eigen form by hand (a ``custom_vjp``; tested in the benchmark).
    """
    train_step = make_train_step(config, optax.adam(learning_rate))
    augment = jax.vmap(lambda k, x, y, m: augment_sample(k, x, y, m, augmentation))

    def sampler(data, key):
        if config.dims == 2:
            return sample_slices(data, key, batch_size, foreground_fraction)
        return sample_patches(data, key, batch_size, foreground_fraction, config.patch)

    @functools.partial(jax.jit, donate_argnums=(0,))
    def full_step(state: TrainState, data, key: jax.Array):
        k_sample, k_aug, k_drop = jax.random.split(key, 3)
        batch = sampler(data, k_sample)
        if augmentation != NO_AUGMENTATION:  # skipping it also spares its compilation
            batch = Batch(*augment(jax.random.split(k_aug, batch_size), *batch))
        return train_step(state, batch, k_drop)

    return full_step


def _validate(images, labels, config: UNetConfig) -> tuple[list[np.ndarray], list[np.ndarray]]:
    if len(images) == 0:
        raise ValueError("no training volumes given; pass at least one image and its label")
    if len(images) != len(labels):
        raise ValueError(f"got {len(images)} images but {len(labels)} labels; pass one label per image")
    n_classes = config.output_classes
    out_images, out_labels = [], []
    for i, (image, label) in enumerate(zip(images, labels)):
        check_image(image, config, name=f"image {i}")
        image = np.asarray(image, np.float32)
        image = image[..., None] if image.ndim == 3 else image
        label = np.asarray(label)
        if label.shape != image.shape[:3]:
            raise ValueError(f"label {i}: shape {label.shape} does not match image shape {image.shape[:3]}")
        if not (np.issubdtype(label.dtype, np.integer) or label.dtype == np.bool_) and np.any(label != np.round(label)):
            raise ValueError(f"label {i}: holds non-integer values; labels are class indices")
        if label.size and (label.min() < 0 or label.max() >= n_classes):
            hint = " (binarise with label > 0 for a sigmoid U-Net)" if config.num_classes == 1 else ""
            raise ValueError(
                f"label {i}: values in [{label.min()}, {label.max()}] but the network has {n_classes} classes "
                f"(expected 0..{n_classes - 1}){hint}"
            )
        out_images.append(image)
        out_labels.append(label.astype(np.uint8))
    return out_images, out_labels


def train_model(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    config: UNetConfig,
    *,
    epochs: int = TrainConfig.epochs,
    steps_per_epoch: int = TrainConfig.steps_per_epoch,
    batch_size: int = TrainConfig.batch_size,
    learning_rate: float = TrainConfig.learning_rate,
    seed: int = TrainConfig.seed,
    normalization: Optional[Normalization] = None,
    foreground_fraction: float = TrainConfig.foreground_fraction,
    augmentation: Augmentation = Augmentation(),
    progress: bool = True,
) -> tuple[SegmentationModel, dict[str, list[float]]]:
    """Train a U-Net from scratch on whole volumes (``**TrainConfig(...).train_kwargs()`` gives the settings).

    Args:
      images: volumes ``f32[X, Y, Z]`` (or ``f32[X, Y, Z, M]``); sizes may differ (padded internally).
      labels: ``u8[X, Y, Z]`` class indices, one per image (binary networks: 0/1).
      config: the architecture.
      epochs, steps_per_epoch: ``epochs * steps_per_epoch`` Adam steps (the history has one mean per epoch).
      batch_size: slices (2D) or patches (3D) per step.
      learning_rate: Adam learning rate.
      seed: seeds initialisation, sampling, augmentation and dropout (same seed -> same model).
      normalization: intensity normalisation applied per volume (also recorded for inference).
      foreground_fraction: share of samples forced to contain foreground.
      augmentation: on-device augmentation (:data:`NO_AUGMENTATION` to switch it off).
      progress: show a tqdm bar with the epoch's mean loss.

    Returns:
      ``(model, history)`` with ``history = {"loss": [mean loss of each epoch]}``.

    Raises:
      ValueError: empty input, mismatched shapes, bad label values, NaNs, bad settings.
    """
    for name, value in (("epochs", epochs), ("steps_per_epoch", steps_per_epoch), ("batch_size", batch_size)):
        if int(value) < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be positive, got {learning_rate!r}")
    if not 0.0 <= foreground_fraction <= 1.0:
        raise ValueError(f"foreground_fraction must be in [0, 1], got {foreground_fraction!r}")
    images, labels = _validate(list(images), list(labels), config)
    normalization = normalization or Normalization()
    norm = jax.jit(normalization.__call__)
    images = [np.asarray(norm(im)) for im in images]

    key = jax.random.PRNGKey(seed)
    k_init, k_train = jax.random.split(key)
    model = init_model(config, k_init, normalization=normalization)
    optimizer = optax.adam(learning_rate)
    state = TrainState(model.params, model.batch_stats, optimizer.init(model.params), jnp.zeros((), jnp.int32))
    full_step = _jitted_full_step(config, float(learning_rate), int(batch_size), float(foreground_fraction),
                                  augmentation)
    data = _slice_data(images, labels, config) if config.dims == 2 else _patch_data(images, labels, config, seed)

    history: dict[str, list[float]] = {"loss": []}
    start = time.perf_counter()
    bar = tqdm(total=epochs * steps_per_epoch, desc="train U-Net", unit="step", disable=not progress)
    for epoch in range(epochs):
        losses = []
        for step_key in jax.random.split(jax.random.fold_in(k_train, epoch), steps_per_epoch):
            state, loss = full_step(state, data, step_key)
            losses.append(loss)
            bar.update(1)
        loss = float(np.mean(jax.device_get(losses)))
        if not np.isfinite(loss):
            bar.close()
            raise ValueError(f"training diverged (loss {loss} in epoch {epoch}); lower the learning rate")
        history["loss"].append(loss)
        bar.set_postfix(epoch=epoch + 1, loss=f"{loss:.4f}")
    bar.close()
    seconds = time.perf_counter() - start
    summary = {
        "epochs": int(epochs),
        "steps_per_epoch": int(steps_per_epoch),
        "batch_size": int(batch_size),
        "learning_rate": float(learning_rate),
        "seed": int(seed),
        "foreground_fraction": float(foreground_fraction),
        "augmentation": dataclasses.asdict(augmentation),
        "num_volumes": len(images),
        "final_loss": history["loss"][-1],
        "loss_history": history["loss"],
        "seconds": round(seconds, 2),
    }
    trained = SegmentationModel(
        config=config,
        params=state.params,
        batch_stats=state.batch_stats,
        normalization=normalization,
        training=summary,
    )
    return trained, history
