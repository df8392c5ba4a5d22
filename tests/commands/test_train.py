"""``ugcn train`` on a Decathlon folder: the model it writes, refusals."""
from __future__ import annotations

import jax
import numpy as np

from ugcn.segment import UNetConfig, load_model


def test_cli_train(tmp_path, blob_volume):
    from ugcn.cli import main
    from ugcn.data.layout import write_decathlon

    vols = [blob_volume(s) for s in range(3)]
    write_decathlon(tmp_path / "data", [(f"case_{i}", v[0], v[1] * 3, np.eye(4)) for i, v in enumerate(vols)],
                    name="blobs")
    out = tmp_path / "model"
    args = ["train", "--data", str(tmp_path / "data"), "--out", str(out), "--unet-dims", "2", "--unet-epochs", "1",
            "--unet-steps-per-epoch", "2", "--unet-batch-size", "4", "--unet-learning-rate", "1e-2",
            "--unet-base-features", "4", "--unet-depth", "1", "--augment", "none", "--seed", "3", "--quiet"]
    assert main(args) == 0
    model = load_model(out)
    assert model.config == UNetConfig(dims=2, base_features=4, depth=1)
    assert model.training["cases"] == ["case_0", "case_1", "case_2"]
    # every training flag reached train_model: the loss history has 1 epoch and the record its settings
    assert len(model.training["loss_history"]) == 1
    assert {k: model.training[k] for k in ("epochs", "steps_per_epoch", "batch_size", "learning_rate", "seed")} == {
        "epochs": 1, "steps_per_epoch": 2, "batch_size": 4, "learning_rate": 1e-2, "seed": 3}
    assert model.training["augmentation"] == {"flips": False, "rotate90": False, "scale": 0.0, "shift": 0.0,
                                              "noise": 0.0}
    assert main(args) == 2  # exists already, no --overwrite
    # --config reruns the recorded configuration: the same parameters, bit for bit
    again = tmp_path / "again"
    assert main(["train", "--data", str(tmp_path / "data"), "--out", str(again), "--config",
                 str(out / "config.json"), "--quiet"]) == 0
    rerun = load_model(again)
    assert rerun.config == model.config
    for a, b in zip(jax.tree_util.tree_leaves(model.params), jax.tree_util.tree_leaves(rerun.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # an explicit flag overrides the recorded value
    assert main(["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "seed4"), "--config",
                 str(out / "config.json"), "--seed", "4", "--quiet"]) == 0
    assert load_model(tmp_path / "seed4").training["seed"] == 4
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "m2")]) == 2
    assert not (tmp_path / "m2").exists()
