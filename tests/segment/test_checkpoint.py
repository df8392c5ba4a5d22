"""Model checkpoints (ugcn.segment.checkpoint): round trip, bad folders."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from ugcn.segment import Normalization, load_model, predict_probabilities, save_model


def test_checkpoint_round_trip(trained2, tmp_path, image):
    model, _ = trained2
    out = save_model(model, tmp_path / "m")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "params.msgpack"]
    loaded = load_model(out)
    assert loaded.config == model.config and loaded.normalization == model.normalization
    assert loaded.training["final_loss"] == model.training["final_loss"]
    a_leaves, a_def = jax.tree_util.tree_flatten(model.variables)
    b_leaves, b_def = jax.tree_util.tree_flatten(loaded.variables)
    assert a_def == b_def
    for a, b in zip(a_leaves, b_leaves):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(predict_probabilities(loaded, image), predict_probabilities(model, image))
    clipped = type(model)(model.config, model.params, model.batch_stats, Normalization(clip=(-50.0, 150.0)))
    assert load_model(save_model(clipped, tmp_path / "c")).normalization.clip == (-50.0, 150.0)
    with pytest.raises(ValueError, match="not empty"):
        save_model(model, out)
    save_model(model, out, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "m"]  # no temporary leftovers


def test_bad_checkpoints(tmp_path):
    with pytest.raises(ValueError, match="no such model"):
        load_model(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match="not a segmentation model directory"):
        load_model(tmp_path / "plain")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        load_model(tmp_path / "broken")
