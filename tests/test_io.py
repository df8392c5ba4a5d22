"""NIfTI input/output (ugcn.io): round trips, geometry, and every error path."""
from __future__ import annotations

import gzip
import os
import stat

import nibabel as nib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ugcn import io
from ugcn.io import (
    Volume,
    check_finite,
    check_same_grid,
    is_nifti,
    load_mask,
    load_volume,
    nifti_stem,
    save_volume,
    voxel_spacing,
    write_text_atomic,
)

AFFINE = np.array([[0.8, 0, 0, -10.0], [0, 0.7, 0, 5.0], [0, 0, 2.5, -30.0], [0, 0, 0, 1]])


def _rotation(angle_x: float, angle_z: float) -> np.ndarray:
    cx, sx, cz, sz = np.cos(angle_x), np.sin(angle_x), np.cos(angle_z), np.sin(angle_z)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ rx


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.uint8])
def test_round_trip_keeps_values_affine_dtype(tmp_path, suffix, dtype):
    rng = np.random.default_rng(0)
    arr = (rng.uniform(0, 100, size=(5, 6, 7))).astype(dtype)
    path = save_volume(tmp_path / f"x{suffix}", arr, AFFINE)
    vol = load_volume(path, dtype=None)
    assert vol.array.dtype == dtype
    np.testing.assert_array_equal(vol.array, arr)
    np.testing.assert_allclose(vol.affine, AFFINE, atol=1e-6)
    assert vol.path == path and vol.shape == (5, 6, 7)
    as_float = load_volume(path)
    assert as_float.array.dtype == np.float32
    np.testing.assert_allclose(as_float.array, arr.astype(np.float32))


def test_round_trip_4d_and_ndim_option(tmp_path):
    arr = np.arange(3 * 4 * 5 * 2, dtype=np.float32).reshape(3, 4, 5, 2)
    save_volume(tmp_path / "m.nii.gz", arr, AFFINE)
    vol = load_volume(tmp_path / "m.nii.gz")
    np.testing.assert_array_equal(vol.array, arr)
    with pytest.raises(ValueError, match="expected a 3D volume"):
        load_volume(tmp_path / "m.nii.gz", ndim=3)


def test_float64_and_bool_are_stored_compactly(tmp_path):
    save_volume(tmp_path / "f.nii.gz", np.ones((2, 2, 2), np.float64), np.eye(4))
    save_volume(tmp_path / "b.nii.gz", np.ones((2, 2, 2), bool), np.eye(4))
    assert nib.load(str(tmp_path / "f.nii.gz")).get_data_dtype() == np.float32
    assert nib.load(str(tmp_path / "b.nii.gz")).get_data_dtype() == np.uint8


def test_trailing_singleton_axis_is_dropped(tmp_path):
    arr = np.zeros((4, 5, 6, 1), np.uint8)
    arr[1, 2, 3, 0] = 1
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(tmp_path / "s.nii.gz"))
    assert load_volume(tmp_path / "s.nii.gz", ndim=3).shape == (4, 5, 6)
    mask = load_mask(tmp_path / "s.nii.gz")
    assert mask.shape == (4, 5, 6) and mask.array[1, 2, 3] == 1


@settings(max_examples=25, deadline=None)
@given(
    spacing=st.tuples(*[st.floats(0.1, 10.0)] * 3),
    angles=st.tuples(st.floats(-np.pi, np.pi), st.floats(-np.pi, np.pi)),
)
def test_spacing_of_rotated_anisotropic_affine(spacing, angles):
    affine = np.eye(4)
    affine[:3, :3] = _rotation(*angles) @ np.diag(spacing)
    affine[:3, 3] = [3.0, -4.0, 5.0]
    np.testing.assert_allclose(voxel_spacing(affine), spacing, rtol=1e-9)
    assert Volume(np.zeros((1, 1, 1)), affine).spacing == pytest.approx(spacing)


def test_spacing_read_from_file(tmp_path):
    affine = np.eye(4)
    affine[:3, :3] = _rotation(0.3, -1.1) @ np.diag([0.9, 1.1, 3.0])
    save_volume(tmp_path / "r.nii.gz", np.zeros((3, 3, 3), np.float32), affine)
    assert load_volume(tmp_path / "r.nii.gz").spacing == pytest.approx((0.9, 1.1, 3.0), rel=1e-5)


def test_header_metadata_kept(tmp_path):
    img = nib.Nifti1Image(np.zeros((3, 3, 3), np.float32), AFFINE)
    img.header["descrip"] = b"scanner X"
    img.set_qform(AFFINE, code=1)
    img.set_sform(AFFINE, code=2)
    nib.save(img, str(tmp_path / "src.nii.gz"))
    src = load_volume(tmp_path / "src.nii.gz")
    save_volume(tmp_path / "out.nii.gz", src.array, src.affine, header=src.header)
    out = nib.load(str(tmp_path / "out.nii.gz"))
    assert out.header["descrip"].tobytes().rstrip(b"\0") == b"scanner X"
    assert int(out.header["sform_code"]) == 2
    np.testing.assert_allclose(out.affine, AFFINE, atol=1e-6)


def test_names():
    assert is_nifti("a/b.nii") and is_nifti("b.nii.gz") and not is_nifti("b.npy") and not is_nifti("b.gz")
    assert nifti_stem("/x/case_01.nii.gz") == "case_01" and nifti_stem("y.nii") == "y"
    assert nifti_stem("z.txt") == "z.txt"


# ----------------------------------------------------------------------------------------------------------
# Error paths
# ----------------------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        load_volume(tmp_path / "nope.nii.gz")


def test_not_nifti(tmp_path):
    (tmp_path / "x.npy").write_bytes(b"\x93NUMPY")
    with pytest.raises(ValueError, match="not a NIfTI file"):
        load_volume(tmp_path / "x.npy")


@pytest.mark.parametrize(
    "name, payload",
    [
        ("garbage.nii.gz", b"\x00\x01 this is garbage, not gzip"),
        ("garbage.nii", b"short"),
        ("badgz.nii.gz", gzip.compress(b"not a nifti header" * 3, mtime=0)),
    ],
    ids=["not-gzip", "short", "gzip-not-nifti"],  # fixed ids: pytest-xdist workers must collect the same names
)
def test_corrupt_file(tmp_path, name, payload):
    (tmp_path / name).write_bytes(payload)
    with pytest.raises(ValueError, match="cannot read NIfTI"):
        load_volume(tmp_path / name)


def test_truncated_file(tmp_path):
    save_volume(tmp_path / "t.nii", np.ones((8, 8, 8), np.float32), np.eye(4))
    data = (tmp_path / "t.nii").read_bytes()
    (tmp_path / "t.nii").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cannot read NIfTI"):
        load_volume(tmp_path / "t.nii")


@pytest.mark.parametrize("shape", [(4, 5), (2, 3, 4, 2, 2)])
def test_wrong_ndim(tmp_path, shape):
    nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), np.eye(4)), str(tmp_path / "d.nii.gz"))
    with pytest.raises(ValueError, match="expected a 3 or 4D volume"):
        load_volume(tmp_path / "d.nii.gz")


def test_nan_voxels(tmp_path):
    arr = np.zeros((3, 3, 3), np.float32)
    arr[0, 0, 0], arr[1, 1, 1] = np.nan, np.inf
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(tmp_path / "n.nii.gz"))
    with pytest.raises(ValueError, match="2 voxels are NaN or infinite"):
        load_volume(tmp_path / "n.nii.gz")
    assert np.isnan(load_volume(tmp_path / "n.nii.gz", allow_nonfinite=True).array[0, 0, 0])
    with pytest.raises(ValueError, match="probs: holds NaN"):
        check_finite(arr, "probs")
    check_finite(np.zeros(3), "fine")
    check_finite(np.zeros(3, np.int32), "ints")


def test_same_grid_checks():
    a = Volume(np.zeros((4, 4, 4)), np.eye(4))
    check_same_grid(a, Volume(np.zeros((4, 4, 4, 2)), np.eye(4) + 1e-5))
    with pytest.raises(ValueError, match=r"shape \(4, 4, 5\) does not match"):
        check_same_grid(a, Volume(np.zeros((4, 4, 5)), np.eye(4)))
    shifted = np.eye(4)
    shifted[2, 3] = 0.5
    with pytest.raises(ValueError, match="affine differs .* by up to 0.5 mm"):
        check_same_grid(a, Volume(np.zeros((4, 4, 4)), shifted))
    check_same_grid(a, Volume(np.zeros((4, 4, 4)), shifted), atol=0.6)


@pytest.mark.parametrize(
    "values, match",
    [((-1.0,), "non-negative integers"), ((0.5,), "non-negative integers"), ((300.0,), "above 255")],
)
def test_bad_label_values(tmp_path, values, match):
    arr = np.zeros((3, 3, 3), np.float32)
    arr[0, 0, : len(values)] = values
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(tmp_path / "l.nii.gz"))
    with pytest.raises(ValueError, match=match):
        load_mask(tmp_path / "l.nii.gz")


def test_label_is_uint8(tmp_path):
    arr = np.zeros((3, 3, 3), np.int16)
    arr[1, 1, 1] = 2
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(tmp_path / "l.nii.gz"))
    mask = load_mask(tmp_path / "l.nii.gz")
    assert mask.array.dtype == np.uint8 and mask.array[1, 1, 1] == 2


def test_save_refuses_overwrite_and_bad_input(tmp_path):
    path = save_volume(tmp_path / "o.nii.gz", np.zeros((2, 2, 2), np.float32), np.eye(4))
    with pytest.raises(ValueError, match="exists already"):
        save_volume(path, np.ones((2, 2, 2), np.float32), np.eye(4))
    assert load_volume(path).array.max() == 0  # untouched
    save_volume(path, np.ones((2, 2, 2), np.float32), np.eye(4), overwrite=True)
    assert load_volume(path).array.max() == 1
    with pytest.raises(ValueError, match="must end in .nii"):
        save_volume(tmp_path / "o.npy", np.zeros((2, 2, 2)), np.eye(4))
    with pytest.raises(ValueError, match="3D or 4D"):
        save_volume(tmp_path / "p.nii.gz", np.zeros((2, 2)), np.eye(4))
    with pytest.raises(ValueError, match="finite 4x4"):
        save_volume(tmp_path / "q.nii.gz", np.zeros((2, 2, 2)), np.eye(3))
    bad = np.eye(4)
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="finite 4x4"):
        save_volume(tmp_path / "q.nii.gz", np.zeros((2, 2, 2)), bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.nii.gz"]


def test_atomic_write_leaves_no_temp_file(tmp_path, monkeypatch):
    save_volume(tmp_path / "a.nii.gz", np.zeros((2, 2, 2), np.float32), np.eye(4))
    write_text_atomic(tmp_path / "r.json", "{}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz", "r.json"]

    def failing_save(img, filename):
        with open(filename, "wb") as fh:
            fh.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(io.nib, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_volume(tmp_path / "b.nii.gz", np.zeros((2, 2, 2), np.float32), np.eye(4))
    with pytest.raises(OSError, match="disk full"):
        save_volume(tmp_path / "a.nii.gz", np.ones((2, 2, 2), np.float32), np.eye(4), overwrite=True)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz", "r.json"]
    assert load_volume(tmp_path / "a.nii.gz").array.max() == 0  # the old file survived the failed overwrite


def test_written_files_follow_umask(tmp_path):
    old = os.umask(0o022)
    try:
        save_volume(tmp_path / "a.nii.gz", np.zeros((2, 2, 2), np.float32), np.eye(4))
        write_text_atomic(tmp_path / "r.txt", "x")
    finally:
        os.umask(old)
    for name in ("a.nii.gz", "r.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644


def test_write_text_atomic(tmp_path):
    path = write_text_atomic(tmp_path / "sub" / "t.csv", "a,b\n")
    assert path.read_text() == "a,b\n"
    write_text_atomic(path, "c\n")
    assert path.read_text() == "c\n"
    with pytest.raises(ValueError, match="exists already"):
        write_text_atomic(path, "d\n", overwrite=False)
    assert path.read_text() == "c\n"


def test_atomic_directory_replaces_only_on_success(tmp_path):
    from ugcn.io import atomic_directory

    out = tmp_path / "out"
    with atomic_directory(out) as tmp:
        (tmp / "a.txt").write_text("first")
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]
    with pytest.raises(ValueError, match="not empty"):
        with atomic_directory(out) as tmp:
            pass
    with pytest.raises(RuntimeError):
        with atomic_directory(out, overwrite=True) as tmp:
            (tmp / "b.txt").write_text("second")
            raise RuntimeError("crash midway")
    assert (out / "a.txt").read_text() == "first" and not (out / "b.txt").exists()
    with atomic_directory(out, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("second")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folders left behind


def test_image_folder_lists_visible_niftis_and_explains_failures(tmp_path):
    from ugcn.io import image_folder, nifti_files

    for name in ("b.nii.gz", "a.nii", ".hidden.nii.gz", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "dir.nii.gz").mkdir()
    assert [p.name for p in image_folder(tmp_path)] == ["a.nii", "b.nii.gz"]
    assert nifti_files(tmp_path / "missing") == []
    with pytest.raises(ValueError, match="not a directory"):
        image_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .nii"):
        image_folder(tmp_path / "empty")


def test_jsonable_gives_strict_json():
    import json

    from ugcn.io import jsonable

    value = {1: np.float32(0.5), "a": np.array([[1, 2]], np.int64), "nan": float("nan"),
             "t": (np.inf, np.bool_(True)), "arr_nan": np.array([np.nan, 2.0])}
    out = jsonable(value)
    assert out == {"1": 0.5, "a": [[1, 2]], "nan": None, "t": [None, True], "arr_nan": [None, 2.0]}
    json.dumps(out, allow_nan=False)  # raises on any NaN left behind
