"""Device mesh and batch padding (ugcn.parallel.mesh) on one device."""
import numpy as np
import pytest

from ugcn.parallel import describe, device_mesh, pad_batch, padded_size, unpad


def test_pad_and_unpad_leading_axis():
    tree = {"a": np.arange(10).reshape(5, 2), "b": np.ones(5, bool)}
    padded, n = pad_batch(tree, 4)
    assert n == 5 and padded["a"].shape == (8, 2) and padded["b"].shape == (8,)
    np.testing.assert_array_equal(padded["a"][5:], np.repeat(tree["a"][:1], 3, axis=0))  # copies of item 0
    np.testing.assert_array_equal(unpad(padded, n)["a"], tree["a"])
    assert pad_batch(tree, 5)[0]["a"].shape == (5, 2)  # a multiple already: unchanged
    assert [padded_size(n, 4) for n in (1, 4, 5, 8, 9)] == [4, 4, 8, 8, 12]
    with pytest.raises(ValueError, match="leading"):
        pad_batch({"a": np.zeros(3), "b": np.zeros(4)}, 2)


def test_mesh_on_one_device():
    mesh = device_mesh()
    assert mesh.axis_names == ("batch",) and mesh.shape["batch"] == 1
    assert describe(mesh, 7) == "1 device (cpu), 7 volumes per device"
    with pytest.raises(ValueError, match="xla_force_host_platform_device_count"):
        device_mesh(2)
    with pytest.raises(ValueError, match="positive"):
        device_mesh(0)
