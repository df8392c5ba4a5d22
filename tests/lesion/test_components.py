"""Lesion components, MetaSeg IoU_adj and the lesion table (ugcn.lesion.components) against hand-checked / slow
references."""
import numpy as np
from scipy import ndimage

from ugcn.lesion.components import adjusted_iou, label_lesions, lesion_table


def _vol(shape=(12, 6, 4)):
    return np.zeros(shape, np.uint8)


def test_label_lesions_is_26_connected():
    m = _vol((5, 5, 5))
    m[0, 0, 0] = 1
    m[1, 1, 1] = 1  # corner neighbour: same lesion under 26-connectivity
    m[3, 3, 3] = 1  # separated by a gap
    labels, n = label_lesions(m)
    assert n == 2
    assert labels[0, 0, 0] == labels[1, 1, 1] != labels[3, 3, 3]


def test_label_lesions_matches_scipy_full_connectivity():
    rng = np.random.default_rng(0)
    m = rng.random((15, 14, 13)) < 0.2
    labels, n = label_lesions(m)
    ref, n_ref = ndimage.label(m, structure=ndimage.generate_binary_structure(3, 3))
    assert n == n_ref
    np.testing.assert_array_equal(labels, ref)
    assert labels.dtype == np.int32


def test_iou_adj_ground_truth_split_into_two_predictions():
    gt, pred = _vol(), _vol()
    gt[0:10, 0, 0] = 1
    pred[0:4, 0, 0] = 1
    pred[6:10, 0, 0] = 1
    labels, n = label_lesions(pred)
    # K' = the 10 GT voxels, Q = the other prediction (4 voxels): |k ∩ K'| = 4, |k ∪ (K' \ Q)| = 6.
    np.testing.assert_allclose(adjusted_iou(labels, n, gt), [4 / 6, 4 / 6], rtol=1e-6)


def test_iou_adj_prediction_covering_two_ground_truth_lesions():
    gt, pred = _vol(), _vol()
    gt[0:3, 0, 0] = 1
    gt[0:2, 1, 0] = 1  # part of the first GT lesion outside the prediction
    gt[6:9, 0, 0] = 1
    pred[0:10, 0, 0] = 1
    labels, n = label_lesions(pred)
    # K' = 8 voxels, 6 inside k; union = 10 + 2.
    np.testing.assert_allclose(adjusted_iou(labels, n, gt), [6 / 12], rtol=1e-6)


def test_iou_adj_no_overlap_and_no_ground_truth():
    gt, pred = _vol(), _vol()
    gt[0:3, 0, 0] = 1
    pred[8:10, 4, 2] = 1
    pred[5, 5, 3] = 1
    labels, n = label_lesions(pred)
    np.testing.assert_array_equal(adjusted_iou(labels, n, gt), [0, 0])
    np.testing.assert_array_equal(adjusted_iou(labels, n, _vol()), [0, 0])
    assert adjusted_iou(*label_lesions(_vol()), gt).shape == (0,)


def test_iou_adj_against_slow_definition_on_random_masks():
    rng = np.random.default_rng(3)
    for _ in range(3):
        pred = rng.random((10, 9, 8)) < 0.15
        gt = rng.random((10, 9, 8)) < 0.15
        labels, n = label_lesions(pred)
        gt_labels, n_gt = ndimage.label(gt, structure=np.ones((3, 3, 3)))
        ref = []
        for k in range(1, n + 1):
            lesion = labels == k
            hit = np.unique(gt_labels[lesion & gt])
            hit = hit[hit > 0]
            kprime = np.isin(gt_labels, hit)
            q = pred & ~lesion
            union = (lesion | (kprime & ~q)).sum()
            ref.append((lesion & kprime).sum() / union if hit.size else 0.0)
        np.testing.assert_allclose(adjusted_iou(labels, n, gt), ref, rtol=1e-6)


def test_lesion_table_sizes_centroids_and_fp():
    pred, gt = _vol(), _vol()
    pred[0:4, 0, 0] = 1
    pred[8:10, 4, 2] = 1
    gt[0:4, 0, 0] = 1
    affine = np.diag([2.0, 3.0, 4.0, 1.0])
    affine[:3, 3] = [10, 20, 30]
    table = lesion_table(pred, gt, affine=affine)
    assert table.n == 2
    np.testing.assert_array_equal(table.size, [4, 2])
    np.testing.assert_allclose(table.centroid_voxel, [[1.5, 0, 0], [8.5, 4, 2]])
    np.testing.assert_allclose(table.centroid_mm, [[13, 20, 30], [27, 32, 38]])
    np.testing.assert_array_equal(table.is_fp, [False, True])
    rows = table.rows()
    assert rows[1]["lesion"] == 2 and rows[1]["fp"] is True
    empty = lesion_table(_vol(), gt)
    assert empty.n == 0 and empty.rows() == [] and empty.centroid_mm.shape == (0, 3)
