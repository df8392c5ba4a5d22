"""Fixtures of the segment tests: tiny U-Nets, a blob image, and two models trained once per session."""
import jax
import pytest

from ugcn.segment import UNetConfig, init_model
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


@pytest.fixture(scope="session")
def trained2(blob_volume):
    vols = [blob_volume(s) for s in range(3)]
    model, history = train_model(
        [v[0] for v in vols], [v[1] for v in vols], CFG_TRAIN, epochs=3, steps_per_epoch=8, batch_size=4,
        learning_rate=1e-2, seed=0, augmentation=NO_AUGMENTATION, progress=False,
    )
    return model, history


@pytest.fixture(scope="session")
def trained3(blob_volume):
    cfg = UNetConfig(dims=3, base_features=2, depth=1, patch_size=(8, 8, 4))
    vols = [blob_volume(s, shape=(10, 9, 6)) for s in range(2)]
    return train_model(
        [v[0] for v in vols], [v[1] for v in vols], cfg, epochs=2, steps_per_epoch=1, batch_size=2,
        augmentation=NO_AUGMENTATION, progress=False,
    )
