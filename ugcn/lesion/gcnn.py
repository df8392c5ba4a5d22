"""The lesion GCNN (method L, step 4): two graph convolutions, a mean readout, a linear head.

``GCNN``: ``GraphConv(64) -> ReLU -> GraphConv(64) -> ReLU -> mean over each graph's real nodes -> Dense``.
Two tasks:

* ``"classification"``: 2 logits (TP, FP), softmax cross-entropy on ``IoU_adj < epsilon``;
  lesion uncertainty = ``P(FP)``.
* ``"regression"``: 1 output, mean squared error on ``IoU_adj``; lesion uncertainty = ``1 - prediction``.

Training: Adam with the learning rate decaying exponentially from 1e-2 to 1e-5 over the run
(:func:`learning_rate_schedule`, an optax schedule), batches of 10 graphs in a seeded random order each epoch.
Batches are padded to the rungs of a fixed power-of-two budget ladder
(:data:`ugcn.graph.lesion_graph.DEFAULT_LADDER`), so the jitted train step compiles once per rung, and the
compiled steps are shared by every fit and scoring run. The optimiser is
``optax.inject_hyperparams(optax.adam)``: the learning rate lives in the optimiser state, and each step is given
the schedule's value for that step, so one compiled step serves fits of any length and schedule.

Node features are standardised with the mean and standard deviation of the training nodes (stored with the
model). This is not in the paper; it keeps the tiny variance values and the z-scored intensities on one
scale so that the 1e-2 learning rate suits all of them. ``standardize=False`` feeds the raw features.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph
import numpy as np
import optax
from tqdm.auto import tqdm

from ugcn.config import MAX_SEED, setting
from ugcn.graph.gcn import GraphConv, graph_normalize
from ugcn.graph.lesion_graph import DEFAULT_LADDER, LesionGraphs, padded_batch
from ugcn.lesion.components import FP_EPSILON
from ugcn.model_dir import (
    CONFIG_FILE,
    PARAMS_FILE,
    PathLike,
    read_config,
    read_params,
    restore_params,
    save_model_dir,
)

TASKS = ("classification", "regression")
FORMAT = "ugcn-lesion-model"
FORMAT_VERSION = 1
#: What lesion models written before the common model-directory format carried instead of a header.
LEGACY_KIND = "ugcn.lesion.gcnn"

__all__ = [
    "CONFIG_FILE", "FORMAT", "FORMAT_VERSION", "GCNN", "GCNNConfig", "LesionModel", "PARAMS_FILE", "TASKS",
    "fit_gcnn", "learning_rate_schedule", "load_lesion_model", "predict_raw", "save_lesion_model", "score_lesions",
]


class GCNN(nn.Module):
    """Graph-level network over a padded batch.

    Attributes:
      hidden: width of both graph convolutions (64).
      outputs: 2 (classification logits) or 1 (regression).
    """

    hidden: int = 64
    outputs: int = 2

    @nn.compact
    def __call__(self, graph: jraph.GraphsTuple) -> jnp.ndarray:
        """``graph.nodes: f32[N, F]``, ``graph.edges: f32[E]`` (0 on padding) -> ``f32[G, outputs]``."""
        norm = graph_normalize(graph)
        h = nn.relu(GraphConv(self.hidden)(graph.nodes, norm))
        h = nn.relu(GraphConv(self.hidden)(h, norm))
        num_graphs = graph.n_node.shape[0]
        num_nodes = graph.nodes.shape[0]
        node_graph = jnp.repeat(jnp.arange(num_graphs), graph.n_node, total_repeat_length=num_nodes)
        real = jraph.get_node_padding_mask(graph).astype(h.dtype)
        sums = jax.ops.segment_sum(h * real[:, None], node_graph, num_segments=num_graphs)
        counts = jax.ops.segment_sum(real, node_graph, num_segments=num_graphs)
        readout = sums / jnp.maximum(counts, 1.0)[:, None]
        return nn.Dense(self.outputs)(readout)


@dataclasses.dataclass(frozen=True)
class GCNNConfig:
    """Hyper-parameters of a lesion GCNN (defaults = the paper's).

    Attributes:
      task: ``"classification"`` or ``"regression"``.
      hidden: graph-convolution width.
      epochs: passes over the training lesions.
      batch_size: graphs per batch.
      lr_start, lr_end: exponential learning-rate decay from ``lr_start`` to ``lr_end`` over the run.
      epsilon: FP threshold on ``IoU_adj`` (classification targets).
      standardize: standardise node features with training-set statistics.
      seed: initialisation and shuffling seed.
      feature_names: names of the node features the model was trained on.
    """

    task: str = setting("classification", choices=TASKS)
    hidden: int = setting(64, min=1)
    epochs: int = setting(100, min=1)
    batch_size: int = setting(10, min=1)
    lr_start: float = setting(1e-2, gt=0)
    lr_end: float = setting(1e-5, gt=0)
    epsilon: float = setting(FP_EPSILON, min=0, max=1)
    standardize: bool = True
    seed: int = setting(0, min=0, max=MAX_SEED)
    feature_names: tuple[str, ...] = ()

    @property
    def outputs(self) -> int:
        return 2 if self.task == "classification" else 1


@dataclasses.dataclass(frozen=True)
class LesionModel:
    """A trained lesion GCNN.

    Attributes:
      config: :class:`GCNNConfig`.
      params: flax parameters of :class:`GCNN`.
      feature_mean, feature_std: ``f32[F]`` node-feature standardisation (0 and 1 when disabled).
      history: ``f32[epochs]`` mean training loss per epoch.
    """

    config: GCNNConfig
    params: Any
    feature_mean: np.ndarray
    feature_std: np.ndarray
    history: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.float32))


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def learning_rate_schedule(lr_start: float, lr_end: float, total_steps: int) -> optax.Schedule:
    """Exponential decay from ``lr_start`` at step 0 to ``lr_end`` at step ``total_steps - 1``.

    ``lr(t) = lr_start * (lr_end / lr_start) ** (t / (total_steps - 1))``, constant ``lr_end`` afterwards
    (a single step uses ``lr_start``).
    """
    if lr_start <= 0 or lr_end <= 0:
        raise ValueError(f"learning rates must be positive, got lr_start={lr_start}, lr_end={lr_end}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    return optax.exponential_decay(lr_start, max(total_steps - 1, 1), lr_end / lr_start, end_value=lr_end)


@functools.cache
def _compiled(hidden: int, outputs: int, task: str):
    """Jitted ``init``, ``forward`` and ``train_step`` for one architecture (cached across fits)."""
    model = GCNN(hidden=hidden, outputs=outputs)
    tx = optax.inject_hyperparams(optax.adam)(learning_rate=1e-2)

    def loss_fn(params, graph, targets):
        out = model.apply(params, graph)
        real = jraph.get_graph_padding_mask(graph).astype(jnp.float32)
        if task == "classification":
            per_graph = optax.softmax_cross_entropy_with_integer_labels(out, targets.astype(jnp.int32))
        else:
            per_graph = optax.squared_error(out[:, 0], targets)
        return jnp.sum(per_graph * real) / jnp.maximum(jnp.sum(real), 1.0)

    @jax.jit
    def train_step(params, opt_state, graph, targets, lr):
        """One Adam step at learning rate ``lr`` (the schedule's value for this step)."""
        loss, grads = jax.value_and_grad(loss_fn)(params, graph, targets)
        opt_state.hyperparams["learning_rate"] = jnp.asarray(lr, jnp.float32)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def forward(params, graph):
        return model.apply(params, graph)

    @jax.jit
    def init(key, graph):
        params = model.init(key, graph)
        return params, tx.init(params)

    return init, forward, train_step


def _init_graph(num_features: int) -> jraph.GraphsTuple:
    """A one-node graph (plus padding) of the right width: parameter shapes depend only on the width."""
    one = LesionGraphs(
        nodes=np.zeros((1, num_features), np.float32), senders=np.zeros(0, np.int32),
        receivers=np.zeros(0, np.int32), n_node=np.ones(1, np.int32), n_edge=np.zeros(1, np.int32),
        node_voxel=np.zeros(1, np.int64), feature_names=tuple(f"f{i}" for i in range(num_features)),
    )
    return padded_batch(one, [0], budget=(64, 256))


def _standardized(graphs: LesionGraphs, mean: np.ndarray, std: np.ndarray) -> LesionGraphs:
    return dataclasses.replace(graphs, nodes=((graphs.nodes - mean) / std).astype(np.float32))


def _padded_targets(values: np.ndarray, batch_size: int) -> np.ndarray:
    out = np.zeros(batch_size + 1, np.float32)
    out[: len(values)] = values
    return out


def _class_targets(targets: np.ndarray, task: str, epsilon: float) -> np.ndarray:
    if task == "classification":
        if targets.dtype == np.bool_:
            return targets.astype(np.float32)
        return (targets < epsilon).astype(np.float32)  # 1 = FP
    return targets.astype(np.float32)


def fit_gcnn(
    graphs: LesionGraphs,
    targets: np.ndarray,
    *,
    task: str = "classification",
    epochs: int = 100,
    seed: int = 0,
    hidden: int = 64,
    batch_size: int = 10,
    lr_start: float = 1e-2,
    lr_end: float = 1e-5,
    epsilon: float = FP_EPSILON,
    standardize: bool = True,
    progress: bool = False,
) -> LesionModel:
    """Train a lesion GCNN on (validation-set) lesions.

    Args:
      graphs: :class:`LesionGraphs` with G graphs.
      targets: ``f32[G]`` ``IoU_adj`` of each lesion (classification thresholds it at ``epsilon``; a
        ``bool[G]`` array is taken as the FP flags directly).
      task: ``"classification"`` or ``"regression"``.
      epochs, seed, hidden, batch_size, lr_start, lr_end, epsilon, standardize: see :class:`GCNNConfig`.
      progress: show a progress bar over epochs.

    Returns:
      :class:`LesionModel`.
    """
    _check_task(task)
    targets = np.asarray(targets)
    if graphs.num_graphs == 0:
        raise ValueError("fit_gcnn: no lesions to train on (the validation cases have no predicted lesion)")
    if targets.shape != (graphs.num_graphs,):
        raise ValueError(f"fit_gcnn: targets shape {targets.shape} != ({graphs.num_graphs},) graphs")
    if not np.all(np.isfinite(targets.astype(np.float64))):
        raise ValueError("fit_gcnn: targets hold NaN or infinite values")
    if epochs < 1 or batch_size < 1:
        raise ValueError("fit_gcnn: epochs and batch_size must be >= 1")
    config = GCNNConfig(task, hidden, epochs, batch_size, lr_start, lr_end, epsilon, standardize, seed,
                        tuple(graphs.feature_names))
    if standardize:
        mean = graphs.nodes.mean(axis=0, dtype=np.float64).astype(np.float32)
        std = graphs.nodes.std(axis=0, dtype=np.float64).astype(np.float32)
        std = np.where(std > 1e-8, std, 1.0).astype(np.float32)
    else:
        mean = np.zeros(graphs.num_features, np.float32)
        std = np.ones(graphs.num_features, np.float32)
    data = _standardized(graphs, mean, std)
    y = _class_targets(targets, task, epsilon)

    init, _, train_step = _compiled(hidden, config.outputs, task)
    rng = np.random.default_rng(seed)
    params, opt_state = init(jax.random.PRNGKey(seed), _init_graph(data.num_features))
    ladder = DEFAULT_LADDER
    steps_per_epoch = math.ceil(data.num_graphs / batch_size)
    total_steps = epochs * steps_per_epoch
    schedule = learning_rate_schedule(lr_start, lr_end, total_steps)
    history = np.zeros(epochs, np.float32)
    step = 0
    for epoch in tqdm(range(epochs), desc=f"GCNN {task}", disable=not progress, leave=False):
        order = rng.permutation(data.num_graphs)
        losses = []
        for start in range(0, data.num_graphs, batch_size):
            idx = order[start : start + batch_size]
            batch = padded_batch(data, idx, batch_size=batch_size, ladder=ladder)
            params, opt_state, loss = train_step(
                params, opt_state, batch, _padded_targets(y[idx], batch_size), schedule(step)
            )
            losses.append(loss)
            step += 1
        history[epoch] = float(np.mean(jax.device_get(losses)))
    return LesionModel(config, jax.device_get(params), mean, std, history)


@functools.cache
def _per_device_forward(hidden: int, outputs: int, task: str):
    """``fn(params, batches [b, ...]) -> f32[b, slots, outputs]``: one device's padded batches in turn."""
    _, forward, _ = _compiled(hidden, outputs, task)
    return lambda params, batches: jax.lax.map(lambda graph: forward(params, graph), batches)


def predict_raw(model: LesionModel, graphs: LesionGraphs, *, batch_size: int = 64, devices=None) -> np.ndarray:
    """Network outputs per lesion: ``f32[G, 2]`` logits (classification) or ``f32[G, 1]`` (regression).

    ``devices`` (a count or a :func:`ugcn.parallel.device_mesh`; default ``None``: one device) spreads the
    padded batches over devices: D consecutive batches are padded to one common budget, stacked and split
    along that stacking axis, one batch per device per call. The outputs do not depend on it.
    """
    cfg = model.config
    if graphs.num_features != len(model.feature_mean):
        raise ValueError(
            f"the lesion model expects {len(model.feature_mean)} node features {cfg.feature_names}, "
            f"the graphs have {graphs.num_features} {graphs.feature_names}"
        )
    if cfg.feature_names and tuple(graphs.feature_names) != tuple(cfg.feature_names):
        raise ValueError(
            f"node features {graphs.feature_names} differ from the model's {cfg.feature_names}; "
            "build the graphs with the same estimators and number of image channels"
        )
    out = np.zeros((graphs.num_graphs, cfg.outputs), np.float32)
    if graphs.num_graphs == 0:
        return out
    _, forward, _ = _compiled(cfg.hidden, cfg.outputs, cfg.task)
    data = _standardized(graphs, model.feature_mean, model.feature_std)
    # Sort by size so that each batch lands in a tight bucket.
    order = np.argsort(data.n_node, kind="stable")
    ladder = DEFAULT_LADDER
    batches = [order[start : start + batch_size] for start in range(0, data.num_graphs, batch_size)]
    if devices is None:
        for idx in batches:
            batch = padded_batch(data, idx, batch_size=batch_size, ladder=ladder)
            out[idx] = np.asarray(forward(model.params, batch))[: len(idx)]
        return out
    from ugcn.parallel import mesh_size, resolve_mesh, run_sharded

    mesh = resolve_mesh(devices)
    per_device = _per_device_forward(cfg.hidden, cfg.outputs, cfg.task)
    for start in range(0, len(batches), mesh_size(mesh)):
        group = batches[start : start + mesh_size(mesh)]
        # Budgets grow node and edge counts together, so the largest rung holds every batch of the group.
        budget = max(ladder.budget(int(data.n_node[i].sum()), int(data.n_edge[i].sum())) for i in group)
        stacked = jax.tree_util.tree_map(
            lambda *parts: np.stack(parts),
            *[padded_batch(data, idx, batch_size=batch_size, budget=budget) for idx in group],
        )
        raw = np.asarray(run_sharded(per_device, mesh, stacked, shared=(model.params,)))
        for idx, values in zip(group, raw):
            out[idx] = values[: len(idx)]
    return out


def score_lesions(model: LesionModel, graphs: LesionGraphs, *, batch_size: int = 64, devices=None) -> np.ndarray:
    """Lesion uncertainty ``f32[G]``: ``P(FP)`` (classification) or ``1 - predicted IoU_adj`` (regression).

    Higher = more uncertain (more likely a false positive). ``devices``: see :func:`predict_raw`.
    """
    raw = predict_raw(model, graphs, batch_size=batch_size, devices=devices)
    if model.config.task == "classification":
        return np.asarray(jax.nn.softmax(jnp.asarray(raw), axis=-1)[:, 1], np.float32)
    return (1.0 - raw[:, 0]).astype(np.float32)


def save_lesion_model(model: LesionModel, directory: PathLike, *, overwrite: bool = False,
                      extra_files: Optional[Mapping[str, Union[str, bytes]]] = None) -> Path:
    """Write ``model`` as a model directory (:mod:`ugcn.model_dir`), atomically.

    ``config.json`` holds the header, ``gcnn`` (the :class:`GCNNConfig`), the feature standardisation and
    the training history; ``params.msgpack`` the flax parameters; ``extra_files`` (``{name: text or bytes}``,
    e.g. the side learners of :func:`ugcn.lesion.baselines.side_learners_text`) are written in the same
    atomic step.

    Raises:
      ValueError: ``directory`` is not empty and ``overwrite`` is False, or it is an existing file.
    """
    settings = {
        "gcnn": {**dataclasses.asdict(model.config), "feature_names": list(model.config.feature_names)},
        "feature_mean": np.asarray(model.feature_mean, np.float32),
        "feature_std": np.asarray(model.feature_std, np.float32),
        "history": np.asarray(model.history, np.float32),
    }
    return save_model_dir(directory, format=FORMAT, format_version=FORMAT_VERSION, settings=settings,
                          params=model.params, extra_files=extra_files, overwrite=overwrite)


def load_lesion_model(directory: PathLike) -> LesionModel:
    """Read a model written by :func:`save_lesion_model` (or by ugcn versions before the common format).

    Raises:
      ValueError: not a lesion model directory, or corrupt / inconsistent files (one line naming the file).
    """
    directory = Path(directory)
    payload = read_config(directory, format=FORMAT, format_version=FORMAT_VERSION, what="lesion model",
                          legacy_kind=LEGACY_KIND)
    cfg_path = directory / CONFIG_FILE
    try:
        raw = payload["gcnn"] if "gcnn" in payload else payload["config"]  # "config": before the common format
        config = GCNNConfig(**{**raw, "feature_names": tuple(raw["feature_names"])})
        _check_task(config.task)
        mean = np.asarray(payload["feature_mean"], np.float32)
        std = np.asarray(payload["feature_std"], np.float32)
        history = np.asarray(payload.get("history") or [], np.float32)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{cfg_path}: not a valid lesion model config ({type(err).__name__}: {err})") from None
    if mean.shape != std.shape or mean.ndim != 1 or mean.size == 0:
        raise ValueError(f"{cfg_path}: feature_mean and feature_std must be two lists of equal length")
    template = jax.eval_shape(lambda: _compiled(config.hidden, config.outputs, config.task)[0](
        jax.random.PRNGKey(0), _init_graph(len(mean)))[0])
    params = restore_params(template, read_params(directory), where=directory / PARAMS_FILE)
    return LesionModel(config, jax.device_get(params), mean, std, history)
