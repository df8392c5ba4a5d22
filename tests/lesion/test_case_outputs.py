"""Per-case NIfTI outputs and the missed-lesion count against scipy.ndimage."""
import nibabel as nib
import numpy as np
from scipy import ndimage

from ugcn.lesion.case_outputs import write_case_outputs
from ugcn.lesion.components import lesion_table, missed_lesions


def test_written_files_agree_with_scipy_labels(tmp_path):
    rng = np.random.default_rng(0)
    pred = ndimage.binary_opening(rng.random((20, 16, 12)) < 0.4)
    table = lesion_table(pred)
    maps = {"entropy": rng.random(pred.shape).astype(np.float32), "user.mod:fn": np.zeros(pred.shape, np.float32)}
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    paths = write_case_outputs(tmp_path / "c", pred, table.labels, maps, affine)
    assert [p.name for p in paths] == ["prediction.nii.gz", "lesions.nii.gz", "entropy.nii.gz", "user.mod_fn.nii.gz"]
    written = np.asarray(nib.load(paths[0]).dataobj)
    ids = np.asarray(nib.load(paths[1]).dataobj)
    ref, n = ndimage.label(written, structure=np.ones((3, 3, 3)))
    np.testing.assert_array_equal(ids, ref)  # same ids, same raster order
    assert n == table.n and list(np.bincount(ids.ravel())[1:]) == list(table.size)
    np.testing.assert_allclose(nib.load(paths[2]).affine, affine)
    np.testing.assert_array_equal(np.asarray(nib.load(paths[2]).dataobj), maps["entropy"])


def test_missed_lesions_by_hand():
    gt = np.zeros((10, 10, 10), np.uint8)
    gt[1:3, 1:3, 1:3] = 1  # touched
    gt[6:8, 6:8, 6:8] = 1  # missed
    gt[1, 8, 8] = 1  # missed
    pred = np.zeros_like(gt)
    pred[2:4, 2:4, 2:4] = 1
    pred[5, 5, 5] = 1  # touches nothing (diagonal neighbour of the second GT lesion is not overlap)
    assert missed_lesions(pred, gt) == 2
