"""Winograd F(2, 3) / F(4, 3) convolutions (1D-3D) and the 2D drop-in against lax.conv_general_dilated.

Tolerances: the reference is XLA's direct convolution in f32. F(2, 3)'s transforms only add, subtract and halve,
so it agrees to a few f32 roundings of the output's scale (measured <= 3e-7 x max|y|; asserted 1e-5). F(4, 3)'s
transform constants (up to 8 and 1/24) amplify rounding: measured <= 3e-6 (2D) and 6e-6 (3D) x max|y|;
asserted 3e-5. Gradients (autodiff through the composition): the same bounds relative to each gradient's scale.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from ugcn.segment import conv2d as conv2d_mod
from ugcn.segment.conv3d import conv3d_slices
from ugcn.segment.winograd import batch_chunk_for, transformed_bytes, winograd_conv

LAYOUTS = {1: ("NHC", "HIO", "NHC"), 2: ("NHWC", "HWIO", "NHWC"), 3: ("NDHWC", "DHWIO", "NDHWC")}
TOL = {2: 1e-5, 4: 3e-5}


def _data(shape, kernel_shape, seed=0):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.normal(size=shape).astype(np.float32)),
            jnp.asarray(rng.normal(size=kernel_shape).astype(np.float32)))


def _lax(x, k, pads):
    n = x.ndim - 2
    return lax.conv_general_dilated(x, k, (1,) * n, pads, dimension_numbers=LAYOUTS[n],
                                    precision=lax.Precision.HIGHEST)


def _close(got, want, tol):
    assert got.shape == want.shape
    scale = float(jnp.max(jnp.abs(want)))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=tol * scale)


CASES = [  # (spatial, Ci, Co, pads): odd sizes, SAME / VALID / asymmetric padding, a single input channel
    ((11,), 3, 2, [(1, 1)]),
    ((7, 9), 1, 4, [(1, 1), (1, 1)]),
    ((8, 5), 5, 3, [(0, 0), (0, 0)]),
    ((6, 7), 4, 2, [(2, 0), (0, 3)]),
    ((5, 6, 7), 2, 3, [(1, 1), (0, 0), (1, 1)]),
    ((4, 4, 3), 1, 2, [(1, 1), (1, 1), (1, 1)]),
]


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("spatial,ci,co,pads", CASES)
def test_values_and_gradients_match_lax(m, spatial, ci, co, pads):
    n = len(spatial)
    x, k = _data((2,) + spatial + (ci,), (3,) * n + (ci, co))
    want = _lax(x, k, pads)
    ours = jax.jit(lambda a, b: winograd_conv(a, b, pads, m=m))
    _close(ours(x, k), want, TOL[m])
    weights = jnp.asarray(np.random.default_rng(1).normal(size=want.shape).astype(np.float32))
    grads = [jax.jit(jax.grad(lambda a, b, f=f: jnp.sum(f(a, b) * weights), argnums=(0, 1)))(x, k)
             for f in (ours, lambda a, b: _lax(a, b, pads))]
    for got, ref in zip(*grads):
        _close(got, ref, TOL[m])


def test_batch_chunks_give_the_same_values_and_gradients():
    x, k = _data((5, 6, 6, 3), (3, 3, 3, 2))
    pads = [(1, 1), (1, 1)]
    whole = jax.jit(lambda a, b: winograd_conv(a, b, pads, m=4))(x, k)
    chunked = jax.jit(lambda a, b: winograd_conv(a, b, pads, m=4, batch_chunk=2))(x, k)  # 3 chunks, last padded
    np.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-6 * float(jnp.max(jnp.abs(whole))))
    g = [jax.jit(jax.grad(lambda b, c=c: jnp.sum(winograd_conv(x, b, pads, m=4, batch_chunk=c) ** 2)))(k)
         for c in (None, 2)]
    np.testing.assert_allclose(g[1], g[0], rtol=1e-5, atol=1e-4)


def test_chunk_size_from_transformed_bytes():
    # 128^2 with 16 channels, F(4, 3): 32 tiles of 6 per axis -> 192^2 x 16 floats.
    assert transformed_bytes((128, 128), 16, 4) == 192 * 192 * 16 * 4
    assert batch_chunk_for((128, 128), 16, 4, budget=3 * 192 * 192 * 16 * 4 + 5) == 3
    assert batch_chunk_for((128, 128), 16, 4, budget=1) == 1


def test_rejects_other_kernels_and_negative_padding():
    x, k = _data((1, 6, 6, 2), (3, 2, 2, 2))
    with pytest.raises(ValueError):
        winograd_conv(x, k, [(1, 1), (1, 1)])
    x, k = _data((1, 6, 6, 2), (3, 3, 2, 2))
    with pytest.raises(ValueError):
        winograd_conv(x, k, [(-1, 1), (1, 1)])


@pytest.mark.parametrize("form", ["winograd2", "winograd4", "auto"])
@pytest.mark.parametrize("padding", ["SAME", "VALID", ((2, 0), (1, 1), (0, 2))])
def test_conv3d_winograd_forms_match_lax(form, padding):
    x, k = _data((2, 5, 6, 7, 8), (3, 3, 3, 8, 3))  # 8 input channels: auto picks Winograd
    pads = padding if isinstance(padding, tuple) else padding
    want = lax.conv_general_dilated(x, k, (1, 1, 1), pads, dimension_numbers=LAYOUTS[3])
    _close(jax.jit(lambda a, b: conv3d_slices(a, b, padding, form=form))(x, k), want, TOL[4])


@pytest.mark.parametrize("form", ["xla", "winograd2", "winograd4", "auto"])
@pytest.mark.parametrize("padding", ["SAME", "VALID", ((0, 2), (1, 0))])
def test_conv2d_forms_match_lax(form, padding):
    x, k = _data((3, 9, 7, 8), (3, 3, 8, 5))
    want = lax.conv_general_dilated(x, k, (1, 1), padding, dimension_numbers=LAYOUTS[2])
    _close(jax.jit(lambda a, b: conv2d_mod.conv2d(a, b, padding, form=form))(x, k), want, TOL[4])


def test_conv2d_auto_keeps_xla_for_few_channels_and_other_kernels():
    assert conv2d_mod.auto_form((128, 128), 1, (3, 3)) == "xla"
    assert conv2d_mod.auto_form((128, 128), 16, (1, 1)) == "xla"
    assert conv2d_mod.auto_form((64, 64), 32, (3, 3)) == "winograd4"
    assert conv2d_mod.auto_form((128, 128), 16, (3, 3)) == "xla"  # 2.4 MB transformed per sample
    assert conv2d_mod.auto_form((64, 64), 64, (3, 3)) == "winograd4"  # 2.4 MB, but 64 input channels
    assert conv2d_mod.auto_form((128, 128), 64, (3, 3)) == "xla"  # 9.4 MB


def test_conv2d_drop_in_passes_other_cases_to_lax_and_keeps_flax_parameters():
    x, k = _data((1, 8, 8, 8), (3, 3, 8, 3))
    strided = conv2d_mod.conv_general_dilated(x, k, (2, 2), "SAME", dimension_numbers=LAYOUTS[2])
    np.testing.assert_allclose(strided, lax.conv_general_dilated(x, k, (2, 2), "SAME", dimension_numbers=LAYOUTS[2]),
                               atol=1e-5)
    plain, fast = nn.Conv(3, (3, 3)), nn.Conv(3, (3, 3), conv_general_dilated=conv2d_mod.conv_general_dilated)
    variables = plain.init(jax.random.PRNGKey(0), x)
    assert jax.tree_util.tree_map(jnp.shape, jax.eval_shape(fast.init, jax.random.PRNGKey(0), x)) == \
        jax.tree_util.tree_map(jnp.shape, variables)
    want = plain.apply(variables, x)
    _close(jax.jit(fast.apply)(variables, x), want, TOL[4])


def test_unet_2d_with_the_drop_in_equals_lax_convolutions_values_and_gradients():
    from ugcn.segment.model import init_model
    from ugcn.segment.unet import UNet, UNetConfig

    config = UNetConfig(dims=2, base_features=8, depth=1)
    variables = init_model(config, jax.random.PRNGKey(0)).variables
    x, _ = _data((2, 8, 8, 1), (1,))

    def loss(params, net):
        out, _ = net.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
                           mutable=["batch_stats"])
        return jnp.sum(out**2)

    fast = UNet(config, conv_general_dilated=conv2d_mod.conv_general_dilated)
    plain = UNet(config, conv_general_dilated=lax.conv_general_dilated)
    _close(jax.jit(fast.apply)(variables, x), plain.apply(variables, x), TOL[4])
    got, want = (jax.jit(jax.grad(lambda p, net=net: loss(p, net)))(variables["params"]) for net in (fast, plain))
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        _close(a, b, 1e-4)


def test_conv2d_train_rule_and_purpose():
    assert conv2d_mod.train_form((64, 64), 16, (3, 3)) == "winograd4"
    assert conv2d_mod.train_form((128, 128), 1, (3, 3)) == "xla"
    assert conv2d_mod.train_form((16, 16), 64, (1, 1)) == "xla"
    x, k = _data((2, 9, 7, 8), (3, 3, 8, 5))
    want = _lax(x, k, [(1, 1), (1, 1)])
    _close(jax.jit(lambda a, b: conv2d_mod.conv2d(a, b, "SAME", purpose="train"))(x, k), want, TOL[4])
    with pytest.raises(ValueError, match="purpose"):
        conv2d_mod.conv2d(x, k, "SAME", purpose="training")


@pytest.mark.parametrize("dims", [2, 3])
def test_unet_for_training_equals_lax_convolutions_values_and_gradients(dims):
    """``UNet(config, purpose="train")`` (the training rule; Winograd on the 8-channel layers): the parameter
    tree of the inference network, and lax's values and gradients."""
    from ugcn.segment.model import init_model
    from ugcn.segment.unet import UNet, UNetConfig

    config = UNetConfig(dims=dims, base_features=8, depth=1, patch_size=(4, 4, 4) if dims == 3 else None)
    variables = init_model(config, jax.random.PRNGKey(0)).variables
    x, _ = _data((2,) + (8, 6, 4)[:dims] + (1,), (1,))
    train_net = UNet(config, purpose="train")
    # eval_shape traces init without running it (eager Winograd ops dispatch one by one: ~35 s of the test)
    assert jax.tree_util.tree_map(jnp.shape, jax.eval_shape(train_net.init, jax.random.PRNGKey(0), x)) == \
        jax.tree_util.tree_map(jnp.shape, variables)

    def loss(params, net):
        out, _ = net.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
                           mutable=["batch_stats"])
        return jnp.sum(out**2)

    plain = UNet(config, conv_general_dilated=lax.conv_general_dilated)
    _close(jax.jit(train_net.apply)(variables, x), plain.apply(variables, x), TOL[4])
    got, want = (jax.jit(jax.grad(lambda p, net=net: loss(p, net)))(variables["params"]) for net in (train_net, plain))
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        _close(a, b, 1e-4)
    with pytest.raises(ValueError, match="purpose"):
        UNet(config, purpose="fit").init(jax.random.PRNGKey(0), x)


def test_train_step_uses_the_training_convolutions(monkeypatch):
    import optax

    from ugcn.segment import unet as unet_mod
    from ugcn.segment.model import init_model
    from ugcn.segment.train import Batch, TrainState, make_train_step
    from ugcn.segment.unet import UNetConfig

    calls = {"train": 0, "inference": 0}

    def counting(name):
        def conv(*args, **kwargs):
            calls[name] += 1
            return lax.conv_general_dilated(*args, **kwargs)
        return conv

    monkeypatch.setitem(unet_mod.TRAIN_CONV, 2, counting("train"))
    monkeypatch.setitem(unet_mod.DEFAULT_CONV, 2, counting("inference"))
    config = UNetConfig(dims=2, base_features=2, depth=1)
    model = init_model(config, jax.random.PRNGKey(0))
    optimizer = optax.adam(1e-3)
    state = TrainState(model.params, model.batch_stats, optimizer.init(model.params), jnp.zeros((), jnp.int32))
    x, _ = _data((2, 4, 4, 1), (1,))
    batch = Batch(x, jnp.zeros((2, 4, 4), jnp.int32), jnp.ones((2, 4, 4), jnp.float32))
    calls.update(train=0, inference=0)  # init_model traced the inference network
    make_train_step(config, optimizer)(state, batch, jax.random.PRNGKey(1))
    assert calls["train"] > 0 and calls["inference"] == 0
