"""The U-Net modules (ugcn.segment.unet): channel-wise dropout, dropout-rate defaults."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ugcn.segment import UNetConfig
from ugcn.segment.unet import channel_dropout


@pytest.mark.parametrize("dims", [2, 3])
def test_channel_dropout_drops_whole_channels(dims):
    shape = (6,) + (5,) * dims + (16,)
    x = jnp.ones(shape)
    rngs = {"dropout": jax.random.PRNGKey(3)}
    y = np.asarray(channel_dropout(0.5, dims).apply({}, x, deterministic=False, rngs=rngs))
    per_map = y.reshape(6, -1, 16)
    # every (sample, channel) map is constant: all 0 (dropped) or all 1/(1-0.5) = 2 (kept)
    assert np.all(per_map.min(1) == per_map.max(1))
    assert set(np.unique(per_map)) == {0.0, 2.0}
    dropped = (per_map[:, 0, :] == 0).mean()
    assert 0.25 < dropped < 0.75
    y_off = channel_dropout(0.5, dims).apply({}, x, deterministic=True)
    np.testing.assert_array_equal(np.asarray(y_off), 1.0)


def test_dropout_rate_defaults():
    assert UNetConfig(dims=2).rate == 0.3 and UNetConfig(dims=3).rate == 0.2
    assert UNetConfig(dims=2, dropout_rate=0.1).rate == 0.1
    cfg = UNetConfig(dims=3, patch_size=(16, 16, 8), depth=3)
    assert UNetConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
