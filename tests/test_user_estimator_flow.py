"""A user estimator registered in THIS test module flows through mcdo, method R and method L unchanged.

Nothing in the library knows about ``expected_gini`` (the mean over samples of the Gini impurity
``1 - Σ_c p_t,c²``, not a built-in): it is registered here with the decorator, and every consumer finds it
by name (or by the ``module:function`` import spec). Each step is checked against plain numpy.
"""
import json

import nibabel as nib
import numpy as np
import pytest

from ugcn.uncertainty import estimator_maps, register_estimator, stats_from_samples

NAME = "expected_gini"


@register_estimator(NAME, value_range=(0.0, 1.0), overwrite=True)  # overwrite: safe if imported twice
def expected_gini(stats):
    """Expected Gini impurity mean_t (1 - sum_c p_tc^2), from the running sums (streaming)."""
    return 1.0 - stats.sum_p2.sum(-1) / stats.count


def np_expected_gini(samples):
    s = np.asarray(samples, np.float64)
    return np.mean(1.0 - (s * s).sum(-1), axis=0)


def np_entropy_bits(samples):
    e = np.asarray(samples, np.float64).mean(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(e > 0, e * np.log2(np.where(e > 0, e, 1.0)), 0.0).sum(-1)


@pytest.fixture(scope="module")
def organ_case():
    """A blob ('organ') with soft, noisy MC samples at its border; p exactly 0 far out and 1 deep in."""
    rng = np.random.default_rng(0)
    shape, t = (14, 14, 6), 6
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"), -1)
    dist = np.linalg.norm((grid - np.array([7.0, 6.5, 2.5])) / np.array([4.5, 3.5, 2.5]), axis=-1)
    logits = (1.0 - dist)[None] * 6.0 + rng.normal(scale=1.5, size=(t,) + shape)
    fg = 1.0 / (1.0 + np.exp(-logits))
    fg[:, dist > 1.6] = 0.0
    fg[:, dist < 0.4] = 1.0
    samples = np.stack([1.0 - fg, fg], -1).astype(np.float32)
    label = dist < 1.0
    image = (label + 0.3 * rng.normal(size=shape)).astype(np.float32)
    return image, samples, label


def test_registered_name_and_import_spec_through_mcdo(organ_case, tmp_path):
    from ugcn.cli import main

    _, samples, _ = organ_case
    maps_path = tmp_path / "samples.nii.gz"
    nib.save(nib.Nifti1Image(np.moveaxis(samples[..., 1], 0, -1), np.eye(4)), str(maps_path))
    spec = f"{__name__}:expected_gini"  # the test module is importable (pytest puts tests/ on sys.path)
    out = tmp_path / "out"
    assert main(["mcdo", "--samples", str(maps_path), "--out", str(out), "--estimators",
                 f"entropy,{NAME},{spec}", "--quiet"]) == 0
    reference = np_expected_gini(samples)
    report = json.loads((out / "report.json").read_text())
    assert report["estimators"][NAME]["value_range"] == [0.0, 1.0]
    assert report["estimators"][NAME]["description"].startswith("Expected Gini impurity")
    for name in (NAME, spec):
        written = nib.load(str(out / report["estimators"][name]["file"])).get_fdata()
        np.testing.assert_allclose(written, reference, atol=1e-6, err_msg=name)


def test_method_r_thresholds_the_user_estimator(organ_case):
    from ugcn.refine.fit import FitConfig
    from ugcn.refine.pipeline import RefineConfig, refine_volume

    image, samples, label = organ_case
    stats = stats_from_samples(samples)
    u = np.asarray(estimator_maps([NAME], stats)[NAME])
    e = samples[..., 1].astype(np.float64).mean(0)
    tau = 0.7
    # node_features="all": the GCN also sees U (the default sees intensity only; U still makes the split)
    config = RefineConfig(tau=tau, tau_mode="quantile", dilation=(1, 3, 3), k_random=4, fit=FitConfig(epochs=3),
                          node_features="all")
    result = refine_volume(image, e > 0.5, e.astype(np.float32), u, config=config, label=label,
                           uncertainty_name=NAME)
    assert result.status == "refined" and result.report()["uncertainty"] == NAME
    graph = result.graph
    reference = np_expected_gini(samples)
    threshold = np.quantile(reference[graph.roi], tau)
    np.testing.assert_allclose(graph.tau_value, threshold, atol=1e-6)
    at_nodes = reference[tuple(graph.node_coords.T)]
    expected_labelled = at_nodes <= threshold
    near = np.abs(at_nodes - threshold) < 1e-6  # float32 vs float64 ties at the threshold may go either way
    np.testing.assert_array_equal(graph.label_mask[~near], expected_labelled[~near])
    assert 0 < (~graph.label_mask).sum() < graph.n_nodes
    np.testing.assert_allclose(graph.features[:, -1], at_nodes, atol=1e-6)  # U feature = the user's map
    # the split is the user's estimator's, not entropy's (they rank voxels differently here)
    entropy = np_entropy_bits(samples)
    entropy_nodes = entropy[tuple(graph.node_coords.T)] <= np.quantile(entropy[graph.roi], tau)
    assert np.any(entropy_nodes != expected_labelled)


def test_method_l_aggregates_and_uses_the_user_estimator(organ_case):
    from ugcn.lesion.protocol import case_lesions, fit_lesion_methods, merge_cases, score_lesion_methods

    image, samples, _ = organ_case
    # Two 'lesions' (the blob's halves, split by an empty plane) and a ground truth that covers one of them.
    fg_mean = samples[..., 1].astype(np.float64).mean(0)
    pred = fg_mean > 0.5
    pred[7] = False
    gt = pred.copy()
    gt[8:] = False
    estimators = ("entropy", NAME)
    maps = {k: np.asarray(v) for k, v in estimator_maps(list(estimators), stats_from_samples(samples)).items()}
    cases = [case_lesions(f"c{i}", image, pred, maps, gt, estimators=estimators) for i in range(2)]
    case = cases[0]
    assert case.table.n == 2
    reference = np_expected_gini(samples)
    for k in (1, 2):
        voxels = case.table.labels == k
        np.testing.assert_allclose(case.stats[f"{NAME}_mean"][k - 1], reference[voxels].mean(), atol=1e-6)
    # node features: the user's map sampled at each node's voxel
    column = case.graphs.feature_names.index(NAME)
    np.testing.assert_allclose(case.graphs.nodes[:, column], reference.ravel()[case.graphs.node_voxel], atol=1e-6)
    lesions = merge_cases(cases)
    methods = fit_lesion_methods(lesions, estimators=estimators, gcnn_epochs=2, gcnn_batch_size=2)
    scores = score_lesion_methods(methods, lesions)
    assert {f"{NAME}_mean", f"{NAME}_logsum", "gcnn_classif", "metaseg_classif"} <= set(scores)
    np.testing.assert_allclose(scores[f"{NAME}_mean"][:2], case.stats[f"{NAME}_mean"], atol=1e-12)
    assert all(np.all(np.isfinite(s)) for s in scores.values())
