"""The slice-wise 3D convolutions against lax.conv_general_dilated / flax's layers (values and gradients)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from ugcn.segment.conv3d import conv3d_slices, conv_general_dilated, upsample_conv_transpose

DN = ("NDHWC", "DHWIO", "NDHWC")


def _data(shape, kernel_shape, seed=0):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.normal(size=shape).astype(np.float32)),
            jnp.asarray(rng.normal(size=kernel_shape).astype(np.float32)))


@pytest.mark.parametrize("form", ["taps_in", "taps_out", "taps_xy", "im2col", "direct"])
@pytest.mark.parametrize("kernel,padding", [((3, 3, 3), "SAME"), ((3, 2, 1), "SAME"), ((3, 3, 3), "VALID"),
                                            ((1, 1, 1), "SAME"), ((3, 3, 3), ((2, 0), (1, 1), (0, 2)))])
def test_values_and_gradients_match_lax(form, kernel, padding):
    x, k = _data((2, 5, 6, 4, 3), kernel + (3, 4))
    reference = lambda a, b: lax.conv_general_dilated(a, b, (1, 1, 1), padding, dimension_numbers=DN)  # noqa: E731
    ours = lambda a, b: conv3d_slices(a, b, padding, form=form)  # noqa: E731
    np.testing.assert_allclose(ours(x, k), reference(x, k), atol=2e-5, rtol=1e-5)
    weights = jnp.asarray(np.random.default_rng(1).normal(size=reference(x, k).shape).astype(np.float32))
    grads = [jax.grad(lambda a, b, f=f: jnp.sum(f(a, b) * weights), argnums=(0, 1))(x, k) for f in (ours, reference)]
    for got, want in zip(*grads):
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_drop_in_passes_other_cases_to_lax():
    x, k = _data((1, 6, 6, 6, 2), (3, 3, 3, 2, 3))
    strided = conv_general_dilated(x, k, (2, 2, 2), "SAME", dimension_numbers=DN)
    assert strided.shape == (1, 3, 3, 3, 3)
    np.testing.assert_allclose(strided, lax.conv_general_dilated(x, k, (2, 2, 2), "SAME", dimension_numbers=DN),
                               atol=1e-5)


def test_flax_conv_with_the_drop_in_keeps_parameters_and_values():
    x, _ = _data((2, 4, 4, 4, 2), (1,))
    plain, fast = nn.Conv(3, (3, 3, 3)), nn.Conv(3, (3, 3, 3), conv_general_dilated=conv_general_dilated)
    variables = plain.init(jax.random.PRNGKey(0), x)
    assert jax.tree_util.tree_map(jnp.shape, fast.init(jax.random.PRNGKey(0), x)) == \
        jax.tree_util.tree_map(jnp.shape, variables)
    np.testing.assert_allclose(fast.apply(variables, x), plain.apply(variables, x), atol=1e-5)


@pytest.mark.parametrize("dims", [2, 3])
def test_upsample_matches_flax_conv_transpose(dims):
    x, _ = _data((2,) + (3,) * dims + (4,), (1,))
    layer = nn.ConvTranspose(5, (2,) * dims, strides=(2,) * dims)
    variables = layer.init(jax.random.PRNGKey(0), x)
    p = variables["params"]
    got = upsample_conv_transpose(x, p["kernel"]) + p["bias"]
    np.testing.assert_allclose(got, layer.apply(variables, x), atol=1e-5)
    g_ref = jax.grad(lambda k: jnp.sum(layer.apply({"params": {"kernel": k, "bias": p["bias"]}}, x) ** 2))(p["kernel"])
    g_got = jax.grad(lambda k: jnp.sum((upsample_conv_transpose(x, k) + p["bias"]) ** 2))(p["kernel"])
    np.testing.assert_allclose(g_got, g_ref, atol=1e-4, rtol=1e-5)


def test_unet_3d_default_equals_lax_convolutions_values_and_gradients():
    from ugcn.segment.model import init_model
    from ugcn.segment.unet import UNet, UNetConfig

    config = UNetConfig(dims=3, base_features=2, depth=1, patch_size=(4, 4, 4))
    variables = init_model(config, jax.random.PRNGKey(0)).variables
    x, _ = _data((2, 4, 4, 4, 1), (1,))

    def loss(params, net):
        out, _ = net.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
                           mutable=["batch_stats"])
        return jnp.sum(out**2)

    fast, plain = UNet(config), UNet(config, conv_general_dilated=lax.conv_general_dilated)
    # jitted, as in test_winograd.py (run eagerly, every operation compiled on its own: most of the time)
    np.testing.assert_allclose(jax.jit(fast.apply)(variables, x), jax.jit(plain.apply)(variables, x), atol=1e-5)
    got, want = (jax.jit(jax.grad(lambda p, net=net: loss(p, net)))(variables["params"]) for net in (fast, plain))
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("spatial,pads", [((5, 6, 4), ((-1, 2), (1, 0), (0, 1))), ((7, 5), ((1, 1), (2, 0)))])
def test_direct_form_any_rank_and_cropping_pads_match_lax(spatial, pads):
    from ugcn.segment.conv3d import direct_conv

    n = len(spatial)
    x, k = _data((2,) + spatial + (2,), (3,) * n + (2, 5))
    dn = DN if n == 3 else ("NHWC", "HWIO", "NHWC")
    want = lax.conv_general_dilated(x, k, (1,) * n, pads, dimension_numbers=dn, precision=lax.Precision.HIGHEST)
    np.testing.assert_allclose(direct_conv(x, k, pads), want, atol=2e-5, rtol=1e-5)


def test_rules_per_purpose_follow_winograd_rows():
    from ugcn.segment.conv3d import auto_form, train_form, winograd_rows

    assert winograd_rows((8, 8, 8), 4, batch=2) == 16 and winograd_rows((4, 4, 3), 2, batch=8) == 64
    assert auto_form((32, 32, 32), 1, (3, 3, 3), batch=2) == "direct"
    assert train_form((32, 32, 32), 1, (3, 3, 3), batch=2) == "taps_in"
    assert auto_form((32, 32, 32), 16, (3, 3, 3), batch=2) == train_form((32, 32, 32), 16, (3, 3, 3), 2) == "winograd4"
    # 8^3: F(4, 3) has 16 rows with 2 patches, 8 with 1
    assert (auto_form((8,) * 3, 64, (3, 3, 3), 2), auto_form((8,) * 3, 64, (3, 3, 3), 1)) == ("winograd4", "winograd2")
    assert train_form((8,) * 3, 64, (3, 3, 3), 8) == "winograd4"
    # 4^3: F(2, 3) has 16 rows with 2 patches (too few forward), 64 with 8
    assert (auto_form((4,) * 3, 128, (3, 3, 3), 2), auto_form((4,) * 3, 128, (3, 3, 3), 8)) == ("im2col", "winograd2")
    assert train_form((4,) * 3, 128, (3, 3, 3), 2) == "winograd2"
    assert auto_form((8,) * 3, 4, (3, 3, 3), 2) == "taps_in" and auto_form((8,) * 3, 16, (1, 1, 1), 2) == "taps_in"


@pytest.mark.parametrize("purpose", ["inference", "train"])
@pytest.mark.parametrize("shape", [(2, 8, 8, 8, 1), (2, 8, 8, 8, 8), (8, 8, 8, 8, 8), (2, 4, 4, 4, 8), (2, 6, 5, 7, 8)])
def test_auto_per_purpose_matches_lax_values_and_gradients(purpose, shape):
    x, k = _data(shape, (3, 3, 3, shape[-1], 4))
    reference = lambda a, b: lax.conv_general_dilated(a, b, (1, 1, 1), "SAME", dimension_numbers=DN,  # noqa: E731
                                                      precision=lax.Precision.HIGHEST)
    ours = jax.jit(lambda a, b: conv3d_slices(a, b, "SAME", purpose=purpose))
    want = reference(x, k)
    scale = float(jnp.max(jnp.abs(want)))
    np.testing.assert_allclose(ours(x, k), want, rtol=0, atol=3e-5 * scale)  # F(4, 3): see test_winograd.py
    weights = jnp.asarray(np.random.default_rng(1).normal(size=want.shape).astype(np.float32))
    grads = [jax.jit(jax.grad(lambda a, b, f=f: jnp.sum(f(a, b) * weights), argnums=(0, 1)))(x, k)
             for f in (ours, reference)]
    for got, ref in zip(*grads):
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4 * float(jnp.max(jnp.abs(ref))))
