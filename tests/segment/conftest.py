"""Fixtures of the segment tests: tiny U-Nets, a blob image, and two models trained once per session."""
import os

import jax
import pytest
from filelock import FileLock

from ugcn.segment import UNetConfig, init_model, is_model_dir, load_model, save_model
from ugcn.segment.train import NO_AUGMENTATION, train_model

CFG2 = UNetConfig(dims=2, base_features=4, depth=2)
CFG3 = UNetConfig(dims=3, base_features=4, depth=2, patch_size=(12, 12, 8), patch_overlap=0.5)
CFG_TRAIN = UNetConfig(dims=2, base_features=4, depth=1)


@pytest.fixture(scope="session")
def model2():
    return init_model(CFG2, jax.random.PRNGKey(0))


@pytest.fixture(scope="session")
def model3():
    return init_model(CFG3, jax.random.PRNGKey(1))


@pytest.fixture(scope="session")
def image(blob_volume):
    return blob_volume(0)[0]


def trained_once(tmp_path_factory, name, train):
    """``train() -> (model, history)`` run once per test session, also under pytest-xdist.

    Without xdist: ``train()`` in this process. Under xdist (as its documentation advises for session fixtures):
    the first worker to take the file lock trains and saves the model to the session's shared folder
    (``getbasetemp().parent``), the other workers load it; a saved model is bit-identical to the trained one
    and its ``training["loss_history"]`` is the history.
    """
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        return train()
    root = tmp_path_factory.getbasetemp().parent
    folder = root / f"trained-{name}"
    with FileLock(str(root / f"trained-{name}.lock")):
        if not is_model_dir(folder):
            model, history = train()
            save_model(model, folder)
            return model, history
    model = load_model(folder)
    return model, {"loss": model.training["loss_history"]}


@pytest.fixture(scope="session")
def trained2(blob_volume, tmp_path_factory):
    def train():
        vols = [blob_volume(s) for s in range(3)]
        return train_model(
            [v[0] for v in vols], [v[1] for v in vols], CFG_TRAIN, epochs=3, steps_per_epoch=8, batch_size=4,
            learning_rate=1e-2, seed=0, augmentation=NO_AUGMENTATION, progress=False,
        )

    return trained_once(tmp_path_factory, "2d", train)


@pytest.fixture(scope="session")
def trained3(blob_volume, tmp_path_factory):
    def train():
        cfg = UNetConfig(dims=3, base_features=2, depth=1, patch_size=(8, 8, 4))
        vols = [blob_volume(s, shape=(10, 9, 6)) for s in range(2)]
        return train_model(
            [v[0] for v in vols], [v[1] for v in vols], cfg, epochs=2, steps_per_epoch=1, batch_size=2,
            augmentation=NO_AUGMENTATION, progress=False,
        )

    return trained_once(tmp_path_factory, "3d", train)
