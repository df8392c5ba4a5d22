"""Method R's node features (RefineConfig.node_features): the selected columns reach the fit, and on a case
built so that the uncertainty feature misleads the fit, intensity-only features do no harm."""
import dataclasses

import jax
import numpy as np
import pytest

from ugcn.graph.voxel_graph import build_voxel_graph
from ugcn.refine.fit import FitConfig, fit_gcn, pad_graph
from ugcn.refine.pipeline import RefineConfig, refine_volume, select_node_features

FAST = FitConfig(epochs=30)


def test_select_node_features_keeps_the_named_columns():
    features = np.arange(20, dtype=np.float32).reshape(4, 5)  # M = 3 intensity channels, then E, U
    np.testing.assert_array_equal(select_node_features(features, "all"), features)
    np.testing.assert_array_equal(select_node_features(features, "no_uncertainty"), features[:, [0, 1, 2, 3]])
    np.testing.assert_array_equal(select_node_features(features, "intensity"), features[:, [0, 1, 2]])
    with pytest.raises(ValueError, match="node_features"):
        select_node_features(features, "shape")
    with pytest.raises(ValueError, match="node_features"):
        RefineConfig(node_features="shape")
    assert RefineConfig().node_features == "intensity"
    assert RefineConfig.preset("reference").node_features == "all"


@pytest.mark.parametrize("node_features, columns", [("intensity", [0]), ("no_uncertainty", [0, 1]), ("all", [0, 1, 2])])
def test_node_features_reach_the_fit(sphere_case, node_features, columns):
    image, pred, e, u, label = sphere_case()
    config = RefineConfig(fit=FAST, variants=(), node_features=node_features)
    r = refine_volume(image, pred, e, u, config=config, seed=3)
    full = build_voxel_graph(image, pred, e, u, seed=3, **config.graph_kwargs())
    np.testing.assert_array_equal(r.graph.features, full.features[:, columns])
    # The fit on the hand-sliced features gives the same probabilities: the selection is what the GCN saw.
    sliced = dataclasses.replace(full, features=full.features[:, columns])
    padded = pad_graph(sliced, bucket_nodes(r), bucket_edges(r))
    probs = np.asarray(fit_gcn(padded, jax.random.PRNGKey(3), FAST).node_probs)[: full.n_nodes]
    np.testing.assert_allclose(r.node_probs, probs, atol=2e-4)


def bucket_nodes(r):
    from ugcn.refine.fit import bucket_size

    return bucket_size(r.graph.n_nodes, RefineConfig().min_bucket_nodes)


def bucket_edges(r):
    from ugcn.refine.fit import bucket_size

    return bucket_size(r.graph.n_edges, RefineConfig().min_bucket_edges)


def misleading_uncertainty_case(shape=(20, 20, 14), radius=5.0, noise=0.6, seed=0):
    """A sphere whose 'CNN' is exactly right, with an uncertain shell of background around it.

    The certain organ nodes have a higher ``U`` (0.6) than the certain background (0.05): selected by
    ``U <= τ``, the labelled nodes tie ``U`` to the class, and the shell's ``U = 0.95`` lies beyond every
    labelled node. A fit that sees ``U`` extrapolates the shell to foreground; the intensity (organ 1,
    background 0, noise ``noise``) says background. Returns ``(image, prediction, E, U, label)``.
    """
    rng = np.random.default_rng(seed)
    grid = np.indices(shape, dtype=np.float64)
    r = np.sqrt(((grid - np.array(shape, np.float64)[:, None, None, None] / 2) ** 2).sum(0))
    label = r < radius
    image = (label + rng.normal(0, noise, shape)).astype(np.float32)
    shell = (r >= radius) & (r < radius + 1.5)
    e = np.where(label, 0.9, 0.02).astype(np.float32)
    e[shell] = 0.45
    u = np.where(label, 0.6, 0.05).astype(np.float32)
    u[shell] = 0.95
    return image, label, e, u, label


def test_intensity_features_do_no_harm_where_the_uncertainty_feature_misleads():
    image, pred, e, u, label = misleading_uncertainty_case()
    # The sparse addition off: this case isolates what the node features do to the fit's additions (with it,
    # the thin part of the "all" fit's shell is withheld: 37 of the 75 voxels kept).
    runs = {nf: refine_volume(image, pred, e, u, label=label,
                              config=RefineConfig(node_features=nf, margin=4, sparse_addition=0.0))
            for nf in ("all", "intensity")}
    shell = (~pred) & (u > 0.8)
    for r in runs.values():
        assert r.status == "refined" and r.dice["cnn"] == 1.0
        np.testing.assert_array_equal(r.refined[~shell], pred[~shell])  # only uncertain nodes may change
    # With U and E, the fit marks a large part of the background shell as organ; with intensity only it
    # leaves nearly all of it (measured: 75 vs 8 of the 704 shell voxels at seed 0).
    added = {nf: int(r.refined[shell].sum()) for nf, r in runs.items()}
    assert added["all"] > 0.07 * shell.sum()
    assert added["intensity"] < 0.03 * shell.sum()
    assert runs["all"].dice["refined"] < 0.95
    assert runs["intensity"].dice["refined"] > 0.98
