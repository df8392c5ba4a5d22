"""Model directories (ugcn.model_dir) for both model kinds: round trips, permissions, atomic writes, old layouts,
one-line errors; and the lesion GCNN's learning-rate schedule and optimiser."""
import json
import os
import stat

import flax.serialization
import jax
import numpy as np
import pytest

from ugcn.graph.lesion_graph import LesionGraphs
from ugcn.lesion.gcnn import (
    GCNNConfig,
    LesionModel,
    _compiled,
    _init_graph,
    fit_gcnn,
    learning_rate_schedule,
    load_lesion_model,
    save_lesion_model,
)
from ugcn.model_dir import save_model_dir
from ugcn.segment import UNetConfig, init_model, load_model, save_model
from ugcn.segment.normalize import Normalization

N_FEATURES = 5


def _leaves_equal(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def segmentation_model():
    model = init_model(UNetConfig(dims=2, base_features=4, depth=2), jax.random.PRNGKey(0),
                       normalization=Normalization(clip=(-100.0, 200.0)))
    return type(model)(model.config, model.params, model.batch_stats, model.normalization,
                       {"final_loss": np.float32(0.25), "history": np.arange(3, dtype=np.float32)})


@pytest.fixture(scope="module")
def lesion_model():
    config = GCNNConfig(task="regression", hidden=8, epochs=3, feature_names=tuple(f"f{i}" for i in range(N_FEATURES)))
    init, _, _ = _compiled(config.hidden, config.outputs, config.task)
    params, _ = init(jax.random.PRNGKey(3), _init_graph(N_FEATURES))
    rng = np.random.default_rng(0)
    return LesionModel(config, jax.device_get(params), rng.normal(size=N_FEATURES).astype(np.float32),
                       rng.uniform(0.5, 2, N_FEATURES).astype(np.float32), np.array([0.3, 0.2, 0.1], np.float32))


def test_segmentation_round_trip(segmentation_model, tmp_path):
    loaded = load_model(save_model(segmentation_model, tmp_path / "seg"))
    assert loaded.config == segmentation_model.config
    assert loaded.normalization == segmentation_model.normalization
    assert loaded.training == {"final_loss": 0.25, "history": [0.0, 1.0, 2.0]}
    _leaves_equal(loaded.params, segmentation_model.params)
    _leaves_equal(loaded.batch_stats, segmentation_model.batch_stats)


def test_lesion_round_trip(lesion_model, tmp_path):
    out = save_lesion_model(lesion_model, tmp_path / "lesion")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "params.msgpack"]
    header = json.loads((out / "config.json").read_text())
    assert (header["format"], header["format_version"]) == ("ugcn-lesion-model", 1)
    loaded = load_lesion_model(out)
    assert loaded.config == lesion_model.config
    _leaves_equal(loaded.params, lesion_model.params)
    np.testing.assert_array_equal(loaded.feature_mean, lesion_model.feature_mean)
    np.testing.assert_array_equal(loaded.feature_std, lesion_model.feature_std)
    np.testing.assert_array_equal(loaded.history, lesion_model.history)


def test_lesion_model_of_the_old_layout_still_loads(lesion_model, tmp_path):
    """Before the common format, config.json carried {"kind": ..., "config": ...} and no header."""
    old = tmp_path / "old"
    old.mkdir()
    cfg = lesion_model.config
    (old / "config.json").write_text(json.dumps({
        "kind": "ugcn.lesion.gcnn",
        "config": {**{f: getattr(cfg, f) for f in cfg.__dataclass_fields__}, "feature_names": list(cfg.feature_names)},
        "feature_mean": lesion_model.feature_mean.tolist(), "feature_std": lesion_model.feature_std.tolist(),
        "history": lesion_model.history.tolist(),
    }))
    (old / "params.msgpack").write_bytes(flax.serialization.to_bytes(lesion_model.params))
    loaded = load_lesion_model(old)
    assert loaded.config == cfg
    _leaves_equal(loaded.params, lesion_model.params)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_permissions_follow_the_umask(lesion_model, segmentation_model, tmp_path, umask):
    old = os.umask(umask)
    try:
        written = [save_lesion_model(lesion_model, tmp_path / "l"), save_model(segmentation_model, tmp_path / "s")]
    finally:
        os.umask(old)
    for directory in written:
        assert stat.S_IMODE(directory.stat().st_mode) == 0o777 & ~umask
        for f in directory.iterdir():
            assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask, f


def test_failed_save_leaves_nothing_behind(lesion_model, tmp_path):
    params = lesion_model.params
    with pytest.raises(TypeError):  # the third file fails after config.json and params.msgpack were written
        save_model_dir(tmp_path / "m", format="x", format_version=1, settings={}, params=params,
                       extra_files={"extra.txt": object()})
    assert list(tmp_path.iterdir()) == []
    # Replacing an existing model: a failure keeps the old one, complete.
    save_lesion_model(lesion_model, tmp_path / "m")
    before = {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()}
    with pytest.raises(TypeError):
        save_model_dir(tmp_path / "m", format="x", format_version=1, settings={}, params=params,
                       extra_files={"extra.txt": object()}, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["m"]
    assert {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()} == before


def test_overwrite_rules(lesion_model, tmp_path):
    save_lesion_model(lesion_model, tmp_path / "m")
    with pytest.raises(ValueError, match="not empty.*overwrite"):
        save_lesion_model(lesion_model, tmp_path / "m")
    save_lesion_model(lesion_model, tmp_path / "m", overwrite=True)
    (tmp_path / "empty").mkdir()
    save_lesion_model(lesion_model, tmp_path / "empty")  # an empty folder is not a model to protect
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        save_lesion_model(lesion_model, tmp_path / "file", overwrite=True)
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="no config.json"):  # --overwrite never swallows a folder of other files
        save_lesion_model(lesion_model, tmp_path / "user", overwrite=True)


def test_loading_errors_are_one_line(lesion_model, segmentation_model, tmp_path):
    seg = save_model(segmentation_model, tmp_path / "seg")
    les = save_lesion_model(lesion_model, tmp_path / "les")
    cases = {
        "no such model directory": lambda: load_lesion_model(tmp_path / "missing"),
        "not a ugcn lesion model .*ugcn-segmentation-model": lambda: load_lesion_model(seg),
        "not a ugcn segmentation model .*ugcn-lesion-model": lambda: load_model(les),
    }
    newer = tmp_path / "newer"
    save_lesion_model(lesion_model, newer)
    config = json.loads((newer / "config.json").read_text())
    (newer / "config.json").write_text(json.dumps({**config, "format_version": 99}))
    cases["newer than this ugcn reads.*upgrade"] = lambda: load_lesion_model(newer)
    corrupt = tmp_path / "corrupt"
    save_lesion_model(lesion_model, corrupt)
    (corrupt / "params.msgpack").write_bytes(b"\x00garbage")
    cases["corrupt parameter file"] = lambda: load_lesion_model(corrupt)
    wrong = tmp_path / "wrong"
    save_lesion_model(lesion_model, wrong)
    config = json.loads((wrong / "config.json").read_text())
    config["gcnn"]["hidden"] = 16
    (wrong / "config.json").write_text(json.dumps(config))
    cases["does not match the recorded architecture"] = lambda: load_lesion_model(wrong)
    incomplete = tmp_path / "incomplete"
    save_lesion_model(lesion_model, incomplete)
    (incomplete / "params.msgpack").unlink()
    cases["incomplete"] = lambda: load_lesion_model(incomplete)
    for pattern, load in cases.items():
        with pytest.raises(ValueError, match=pattern) as err:
            load()
        assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------- GCNN optimiser and schedule


def test_schedule_matches_the_hand_computed_decay():
    total = 7
    schedule = learning_rate_schedule(1e-2, 1e-5, total)
    # lr(t) = 1e-2 * (1e-3) ** (t / 6): 1e-2 at the first step, 1e-5 at the last, a factor 10**-0.5 per step.
    expected = [1e-2, 3.16227766e-3, 1e-3, 3.16227766e-4, 1e-4, 3.16227766e-5, 1e-5]
    np.testing.assert_allclose([float(schedule(t)) for t in range(total)], expected, rtol=1e-5)
    assert float(schedule(50)) == pytest.approx(1e-5)  # stays at the end value
    assert float(learning_rate_schedule(3e-3, 1e-5, 1)(0)) == pytest.approx(3e-3)
    with pytest.raises(ValueError):
        learning_rate_schedule(0.0, 1e-5, 3)


def _tiny_graphs(n_graphs=4):
    rng = np.random.default_rng(1)
    n_node = np.full(n_graphs, 3, np.int32)
    senders = np.concatenate([np.array([0, 1, 1, 2]) + 3 * g for g in range(n_graphs)]).astype(np.int32)
    receivers = np.concatenate([np.array([1, 0, 2, 1]) + 3 * g for g in range(n_graphs)]).astype(np.int32)
    return LesionGraphs(
        nodes=rng.normal(size=(3 * n_graphs, N_FEATURES)).astype(np.float32), senders=senders, receivers=receivers,
        n_node=n_node, n_edge=np.full(n_graphs, 4, np.int32), node_voxel=np.arange(3 * n_graphs, dtype=np.int64),
        feature_names=tuple(f"f{i}" for i in range(N_FEATURES)),
    )


@pytest.mark.parametrize("lr_start", [1e-2, 5e-2])
def test_first_step_moves_each_parameter_by_the_learning_rate(lr_start):
    """Adam's first update is lr * g / (|g| + eps) = ±lr for every parameter with a non-zero gradient: one step
    of fit_gcnn (one epoch, one batch) must move the parameters by exactly the schedule's first rate."""
    graphs = _tiny_graphs()
    model = fit_gcnn(graphs, np.array([0.9, 0.0, 0.5, 0.05], np.float32), task="regression", epochs=1, hidden=8,
                     batch_size=4, seed=2, lr_start=lr_start, lr_end=1e-5)
    init, _, _ = _compiled(8, 1, "regression")
    start, _ = init(jax.random.PRNGKey(2), _init_graph(N_FEATURES))
    steps = np.concatenate([np.abs(np.asarray(a) - np.asarray(b)).ravel() for a, b in zip(
        jax.tree_util.tree_leaves(model.params), jax.tree_util.tree_leaves(start))])
    moved = steps[steps > 1e-9]
    assert moved.size > 0.5 * steps.size
    assert np.max(steps) == pytest.approx(lr_start, rel=1e-4)
    assert np.median(moved) == pytest.approx(lr_start, rel=1e-3)
