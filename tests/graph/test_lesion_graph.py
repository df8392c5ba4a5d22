"""Lesion graphs of method L (ugcn.graph.lesion_graph) against a slow per-lesion reference; selection,
concatenation, padding."""
import itertools

import numpy as np
import pytest
from scipy import ndimage

from ugcn.graph.lesion_graph import bucket_budget, build_lesion_graphs, concat_lesion_graphs, padded_batch
from ugcn.lesion.components import label_lesions


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
    n_real = int(g.n_edge[:3].sum())
    assert batch.edges[:n_real].min() == 1 and batch.edges[n_real:].max(initial=0) == 0
