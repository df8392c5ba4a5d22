"""Lesion components, MetaSeg IoU_adj, lesion graphs and baselines against hand-checked / slow references."""
import itertools

import numpy as np
import pytest
from scipy import ndimage

from ugcn.graph.lesion_graph import (
    bucket_budget,
    build_lesion_graphs,
    concat_lesion_graphs,
    padded_batch,
)
from ugcn.lesion.baselines import fit_metaseg, lesion_statistics, metaseg_features, metaseg_scores
from ugcn.lesion.components import adjusted_iou, label_lesions, lesion_table


def _vol(shape=(12, 6, 4)):
    return np.zeros(shape, np.uint8)


# ---------------------------------------------------------------- components


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


# ---------------------------------------------------------------- graphs


def _slow_graphs(labels, n, image, pred, maps, names):
    """Reference: per-lesion scipy dilation and an all-pairs neighbour test."""
    image = image[..., None] if image.ndim == 3 else image
    z = (image - image.mean((0, 1, 2))) / image.std((0, 1, 2))
    out = []
    for k in range(1, n + 1):
        dil = ndimage.binary_dilation(labels == k, structure=np.ones((3, 3, 3)))
        coords = np.argwhere(dil)  # C order = sorted flat index
        edges = set()
        for i, j in itertools.permutations(range(len(coords)), 2):
            if np.max(np.abs(coords[i] - coords[j])) == 1:
                edges.add((i, j))
        feats = np.concatenate(
            [z[tuple(coords.T)], (pred[tuple(coords.T)] != 0)[:, None]]
            + [maps[nm][tuple(coords.T)][:, None] for nm in names],
            axis=1,
        )
        out.append((np.ravel_multi_index(coords.T, labels.shape), edges, feats))
    return out


@pytest.mark.parametrize("channels", [1, 2])
def test_lesion_graphs_match_slow_reference(channels):
    rng = np.random.default_rng(1)
    shape = (9, 8, 7)
    pred = np.zeros(shape, np.uint8)
    pred[0, 0, 0] = 1  # one-voxel lesion in the corner (dilation clipped)
    pred[2:4, 2:4, 1:3] = 1
    pred[5, 2:4, 2] = 1  # one-voxel gap from the previous lesion: dilations overlap
    pred[7:9, 6:8, 5:7] = 1  # touching the far border
    labels, n = label_lesions(pred)
    assert n == 4
    image = rng.normal(3, 2, shape + ((channels,) if channels > 1 else ())).astype(np.float32)
    names = ["entropy", "my_estimator"]
    maps = {nm: rng.random(shape).astype(np.float32) for nm in names + ["unused"]}
    graphs = build_lesion_graphs(labels, n, image, pred, maps, names)
    ref = _slow_graphs(labels, n, image, pred, maps, names)
    assert graphs.num_graphs == n
    assert graphs.num_features == channels + 1 + len(names)
    assert graphs.feature_names[-2:] == ("entropy", "my_estimator")
    node_off, edge_off = graphs.node_offsets(), graphs.edge_offsets()
    for g, (voxels, edges, feats) in enumerate(ref):
        sl = slice(node_off[g], node_off[g + 1])
        np.testing.assert_array_equal(graphs.node_voxel[sl], voxels)
        np.testing.assert_allclose(graphs.nodes[sl], feats, rtol=1e-5, atol=1e-5)
        es = slice(edge_off[g], edge_off[g + 1])
        got = set(zip(graphs.senders[es] - node_off[g], graphs.receivers[es] - node_off[g]))
        assert got == edges
        assert graphs.n_edge[g] == len(edges)
    # The shared voxels of the overlapping dilations are owned by both graphs.
    assert len(set(ref[1][0]) & set(ref[2][0])) > 0


def test_lesion_graphs_empty_volume_and_missing_map():
    shape = (4, 4, 4)
    labels, n = label_lesions(np.zeros(shape))
    maps = {"entropy": np.zeros(shape), "variance": np.zeros(shape), "one_minus_pcs": np.zeros(shape)}
    g = build_lesion_graphs(labels, n, np.ones(shape), np.zeros(shape), maps)
    assert g.num_graphs == 0 and g.nodes.shape == (0, 5)
    with pytest.raises(ValueError, match="variance"):
        build_lesion_graphs(labels, n, np.ones(shape), np.zeros(shape), {"entropy": np.zeros(shape)})


def test_select_concat_and_padding():
    rng = np.random.default_rng(2)
    shape = (10, 10, 10)
    pred = (rng.random(shape) < 0.05).astype(np.uint8)
    labels, n = label_lesions(pred)
    maps = {"entropy": rng.random(shape)}
    g = build_lesion_graphs(labels, n, rng.random(shape), pred, maps, ["entropy"])
    both = concat_lesion_graphs([g, g])
    assert both.num_graphs == 2 * n
    sub = both.select([n + 2, 1])
    ref = g.select([2, 1])
    for field in ("nodes", "senders", "receivers", "n_node", "n_edge", "node_voxel"):
        np.testing.assert_array_equal(getattr(sub, field), getattr(ref, field))
    batch = padded_batch(g, [0, 1, 2], batch_size=10)
    assert batch.n_node.shape == (11,)
    nodes_budget, edges_budget = bucket_budget(int(g.n_node[:3].sum()), int(g.n_edge[:3].sum()))
    assert batch.nodes.shape[0] == nodes_budget and batch.senders.shape[0] == edges_budget
    assert batch.edges[: int(g.n_edge[:3].sum())].min() == 1 and batch.edges[int(g.n_edge[:3].sum()):].max(initial=0) == 0


# ---------------------------------------------------------------- baselines


def test_baselines_against_direct_numpy():
    rng = np.random.default_rng(4)
    shape = (12, 11, 10)
    pred = rng.random(shape) < 0.08
    labels, n = label_lesions(pred)
    names = ["entropy", "variance", "one_minus_pcs", "mi"]
    maps = {nm: rng.random(shape) for nm in names}
    maps["one_minus_pcs"][labels == 1] = 0.0  # exact zeros must not break the logs
    st = lesion_statistics(labels, n, maps, names, logsum="log_of_sum")
    st_logs = lesion_statistics(labels, n, maps, names)  # default: sum of the logs
    for k in range(1, n + 1):
        sel = labels == k
        assert st["voxels"][k - 1] == sel.sum()
        assert st["size"][k - 1] == pytest.approx(1 / sel.sum())
        for nm in names:
            v = maps[nm][sel]
            assert st[f"{nm}_mean"][k - 1] == pytest.approx(v.mean())
            assert st[f"{nm}_logsum"][k - 1] == pytest.approx(np.log(max(v.sum(), 1e-12)))
            assert st_logs[f"{nm}_logsum"][k - 1] == pytest.approx(np.log(np.maximum(v, 1e-12)).sum())


def test_metaseg_ranks_a_learnable_rule():
    rng = np.random.default_rng(5)
    n = 200
    stats = {"entropy_mean": rng.random(n), "variance_mean": rng.random(n), "voxels": rng.integers(1, 50, n)}
    iou = np.clip(1 - stats["entropy_mean"] + 0.05 * rng.normal(size=n), 0, 1)
    x = metaseg_features(stats, ["entropy", "variance"])
    assert x.shape == (n, 3)
    model = fit_metaseg(x, iou, estimators=["entropy", "variance"])
    s = metaseg_scores(model, x)
    assert np.corrcoef(s["metaseg_reg"], stats["entropy_mean"])[0, 1] > 0.9
    fp = iou < 0.1
    assert s["metaseg_classif"][fp].mean() > s["metaseg_classif"][~fp].mean() + 0.3
    # All-TP training data: no classifier, constant score, no crash.
    m2 = fit_metaseg(x, np.full(n, 0.9))
    assert np.all(metaseg_scores(m2, x)["metaseg_classif"] == 0)
