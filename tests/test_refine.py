"""Method R: the jitted GCN fit, its vmapped batch form, the refinement pipeline and the CRF baseline.

Few epochs (FAST) and few padding buckets, so the module compiles three programs in all: fit_gcn at
SMALL_BUCKET, fit_gcn at the synthetic spheres' natural bucket (3072 nodes, 65536 edges: every pipeline
and CLI test lands there) and fit_batch with B = 2 at that bucket (plus its sequential strategy once).
"""
import jax
import numpy as np
import pytest

from ugcn.graph.voxel_graph import build_voxel_graph
from ugcn.refine.fit import FitConfig, bucket_size, fit_batch, fit_gcn, pad_graph, stack_graphs

FAST = FitConfig(epochs=30)
SMALL_BUCKET = (1280, 12288)
SPHERE_BUCKET = (3072, 65536)


def sphere_case(shape=(24, 24, 16), radius=6.5, seed=0, band=True):
    """A sphere organ; the 'CNN' is right everywhere except a band where it is wrong AND uncertain.

    Returns image, prediction, expectation, uncertainty (bits), label. The intensity is informative
    (organ ~1, background ~0) so a GCN trained on the certain voxels can fix the band.
    """
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    centre = np.array(shape)[:, None, None, None] / 2
    r = np.sqrt(((grid - centre) ** 2).sum(0))
    label = r < radius
    image = (label + rng.normal(0, 0.15, shape)).astype(np.float32)
    prediction = label.copy()
    wrong = np.zeros(shape, bool)
    if band:
        fp = (r >= radius) & (r < radius + 1.5) & (grid[0] < centre[0])  # false-positive shell, one half
        fn = (r < radius) & (r >= radius - 1.5) & (grid[0] >= centre[0])  # false-negative shell, other half
        prediction = (label | fp) & ~fn
        wrong = fp | fn
    expectation = np.where(prediction, 0.97, 0.03).astype(np.float32)
    expectation[wrong] = np.where(prediction[wrong], 0.6, 0.4)
    uncertainty = np.where(wrong, 0.95, 0.15).astype(np.float32)
    return image, prediction, expectation, uncertainty, label


def dense_forward(params, graph):
    """sigmoid(Â ReLU(Â X W1 + b1) W2 + b2) with a dense numpy Â = D^-1/2 (W + I) D^-1/2."""
    n = graph.features.shape[0]
    w = np.zeros((n, n))
    np.add.at(w, (graph.receivers, graph.senders), graph.weights)
    a = w + np.eye(n)
    d = a.sum(axis=1)
    a = a / np.sqrt(d[:, None] * d[None, :])
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    h = np.maximum(a @ graph.features @ p["w1"] + p["b1"], 0)
    return 1 / (1 + np.exp(-(a @ h @ p["w2"] + p["b2"])[:, 0]))


@pytest.fixture(scope="module")
def small_graphs():
    """Two graphs of different sizes from the synthetic case."""
    a = build_voxel_graph(*sphere_case(shape=(16, 16, 12), radius=4.5)[:4], dilation=(1, 3, 3), k_random=4)
    b = build_voxel_graph(*sphere_case(shape=(18, 16, 12), radius=5.0, seed=1)[:4], dilation=(1, 3, 3), k_random=4)
    assert a.n_nodes != b.n_nodes
    return a, b


@pytest.fixture(scope="module")
def fitted(small_graphs):
    padded = pad_graph(small_graphs[0], *SMALL_BUCKET)
    return padded, fit_gcn(padded, jax.random.PRNGKey(0), FAST)


def test_bucket_size_bounds():
    for n in [1, 255, 256, 257, 1000, 4097, 100_000, 123_457]:
        b = bucket_size(n)
        assert b >= n and b >= 256 and (n < 256 or b <= 1.25 * n + 1)
    assert {bucket_size(n) for n in range(16_385, 32_769)} == {20480, 24576, 28672, 32768}


def test_fit_is_deterministic_per_seed_and_loss_decreases(fitted):
    padded, result = fitted
    again = fit_gcn(padded, jax.random.PRNGKey(0), FAST)
    np.testing.assert_array_equal(result.node_probs, again.node_probs)
    other = fit_gcn(padded, jax.random.PRNGKey(1), FAST)
    assert not np.allclose(result.node_probs, other.node_probs)
    losses = np.asarray(result.losses)
    assert losses.shape == (FAST.epochs,) and np.all(np.isfinite(losses))
    assert losses[-5:].mean() < 0.7 * losses[:3].mean()


def test_fit_output_equals_dense_forward_of_its_params(fitted, small_graphs):
    padded, result = fitted
    n = small_graphs[0].n_nodes
    expected = dense_forward(result.params, small_graphs[0])
    np.testing.assert_allclose(np.asarray(result.node_probs)[:n], expected, rtol=1e-4, atol=1e-5)
    assert np.all(np.asarray(result.node_probs)[n:] == 0)  # padding


def test_batch_equals_per_volume_fits_at_other_paddings(small_graphs):
    a, b = small_graphs
    keys = jax.random.split(jax.random.PRNGKey(5), 2)
    single_a = fit_gcn(pad_graph(a, *SMALL_BUCKET), keys[0], FAST)
    single_b = fit_gcn(pad_graph(b, *SMALL_BUCKET), keys[1], FAST)
    # A bigger common bucket than the single fits': the padding differs.
    stacked = stack_graphs([a, b], *SPHERE_BUCKET)
    for strategy in ("parallel", "sequential"):
        batch = fit_batch(stacked, keys, FAST, strategy=strategy)
        for i, (g, single) in enumerate([(a, single_a), (b, single_b)]):
            np.testing.assert_allclose(batch.node_probs[i, : g.n_nodes], single.node_probs[: g.n_nodes], atol=2e-4)
            np.testing.assert_allclose(batch.losses[i], single.losses, rtol=1e-4, atol=1e-5)


def test_pad_graph_rejects_too_small_bucket(small_graphs):
    with pytest.raises(ValueError, match="bucket"):
        pad_graph(small_graphs[0], n_nodes=8)


# ---------------------------------------------------------------- pipeline
from ugcn.refine.crf import crf_available, dense_crf  # noqa: E402
from ugcn.refine.pipeline import RefineConfig, RefineInput, refine_batch, refine_volume  # noqa: E402

PIPE = RefineConfig(fit=FAST)


def reference_dice(a, b):
    a, b = a.astype(bool), b.astype(bool)
    return 2 * np.sum(a & b) / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def sphere_result():
    image, prediction, expectation, uncertainty, label = sphere_case()
    graph = build_voxel_graph(image, prediction, expectation, uncertainty)
    assert (bucket_size(graph.n_nodes), bucket_size(graph.n_edges)) == SPHERE_BUCKET  # compile sharing
    return sphere_case(), refine_volume(image, prediction, expectation, uncertainty, config=PIPE, label=label, crf=True)


def test_refinement_raises_dice_where_the_cnn_is_wrong_only_where_uncertain(sphere_result):
    (image, prediction, expectation, uncertainty, label), r = sphere_result
    assert r.status == "refined"
    cnn = reference_dice(prediction, label)
    assert r.dice["cnn"] == pytest.approx(cnn)
    assert r.dice["refined"] == pytest.approx(reference_dice(r.refined, label))
    assert r.dice["refined"] > cnn + 0.05
    assert r.dice["refined_unlabelled"] > cnn + 0.1


def test_result_masks_are_consistent(sphere_result):
    (image, prediction, expectation, uncertainty, label), r = sphere_result
    g = r.graph
    outside = np.ones(label.shape, bool)
    outside[g.roi] = False
    for name, mask in r.masks().items():
        assert mask.dtype == np.uint8 and mask.shape == label.shape and not mask[outside].any(), name
    node = np.zeros(label.shape, bool)
    node[tuple(g.node_coords.T)] = True
    assert not r.refined[~node].any()  # ROI voxels that are not nodes are 0
    lab = tuple(g.node_coords[g.label_mask].T)
    np.testing.assert_array_equal(r.refined_unlabelled[lab], prediction[lab])
    np.testing.assert_array_equal(r.refined[tuple(g.node_coords.T)], r.node_probs > 0.5)
    np.testing.assert_array_equal(r.expectation_mask[g.roi], expectation[g.roi] > 0.5)
    rep = r.report()
    assert rep["graph"]["nodes"] == g.n_nodes and set(rep["dice"]) == set(r.masks())
    assert r.crf is not None and r.crf.shape == label.shape


def test_batch_equals_single_volume_refinements(sphere_result):
    cases = [sphere_case(), sphere_case(radius=6.0, seed=3)]
    inputs = [RefineInput(*c) for c in cases]
    batch = refine_batch(inputs, config=PIPE, seeds=[0, 7], progress=False)
    singles = [sphere_result[1], refine_volume(*cases[1][:4], config=PIPE, seed=7, label=cases[1][4])]
    for b, s in zip(batch, singles):
        assert b.status == s.status == "refined"
        np.testing.assert_allclose(b.node_probs, s.node_probs, atol=2e-4)
        assert b.dice["refined"] == pytest.approx(s.dice["refined"], abs=2e-3)


def test_empty_prediction_gives_empty_result():
    image, prediction, expectation, uncertainty, label = sphere_case(band=False)
    r = refine_volume(image, np.zeros_like(prediction), expectation, uncertainty, config=PIPE, label=label, crf=True)
    assert r.status == "empty_prediction" and "empty" in r.messages[0]
    assert all(not m.any() for m in r.masks().values())
    assert r.dice["refined"] == 0.0


def test_no_uncertain_voxels_returns_prediction():
    image, prediction, expectation, uncertainty, label = sphere_case()
    r = refine_volume(image, prediction, expectation, np.zeros_like(uncertainty), config=PIPE)
    assert r.status == "no_uncertain_voxels" and r.node_probs is None
    np.testing.assert_array_equal(r.refined, prediction)


def test_all_uncertain_returns_prediction_with_warning():
    image, prediction, expectation, uncertainty, label = sphere_case()
    # Absolute tau: the adaptive default would raise tau above a constant U (nothing uncertain then).
    absolute = RefineConfig(fit=FAST, tau_mode="absolute")
    with pytest.warns(RuntimeWarning, match="no labelled node"):
        r = refine_volume(image, prediction, expectation, np.ones_like(uncertainty), config=absolute)
    assert r.status == "no_labelled_nodes"
    np.testing.assert_array_equal(r.refined_unlabelled, prediction)


def test_labelled_nodes_of_one_class_only_fall_back_to_the_prediction():
    image, prediction, expectation, uncertainty, label = sphere_case()
    uncertainty = np.where(prediction & ~(np.asarray(uncertainty) > 0.8), 0.1, 0.95).astype(np.float32)
    with pytest.warns(RuntimeWarning, match="self-check"):
        r = refine_volume(image, prediction, expectation, uncertainty, config=PIPE)
    # The fit can only learn "foreground": it collapses, and the self-check returns the prediction.
    assert any("only learn to predict foreground" in m for m in r.messages)
    assert r.status == "fallback" and "collapsed" in r.selfcheck["reason"]
    assert np.all(np.isfinite(r.node_probs))
    np.testing.assert_array_equal(r.refined, prediction)


def test_node_budget_and_bad_inputs():
    image, prediction, expectation, uncertainty, label = sphere_case()
    with pytest.raises(ValueError, match="max_nodes"):
        refine_volume(image, prediction, expectation, uncertainty, config=RefineConfig(max_nodes=100))
    with pytest.raises(ValueError, match="shape"):
        refine_volume(image, prediction, expectation[:-1], uncertainty, config=PIPE)
    with pytest.raises(ValueError, match="label"):
        refine_volume(image, prediction, expectation, np.zeros_like(uncertainty), config=PIPE, label=label[:-1])


@pytest.mark.skipif(not crf_available(), reason="pydensecrf not installed")
def test_dense_crf_follows_a_sharp_image_edge():
    image = np.zeros((16, 12, 8), np.float32)
    image[8:] = 100.0
    rng = np.random.default_rng(0)
    prob = np.where(image > 0, 0.6, 0.4) + rng.uniform(-0.15, 0.15, image.shape)  # noisy, weak unary
    out = dense_crf(image, prob.astype(np.float32))
    assert out.dtype == np.uint8 and out.shape == image.shape
    np.testing.assert_array_equal(out, image > 0)
    assert ((prob > 0.5) != (image > 0)).any()  # the unary alone was wrong somewhere


# ---------------------------------------------------------------- command line
def write_case(folder, stem, case, n_samples=4):
    from ugcn.io import save_volume

    image, prediction, expectation, uncertainty, label = case
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    folder.mkdir(parents=True, exist_ok=True)
    save_volume(folder / f"{stem}.nii.gz", image, affine)
    samples = np.repeat(expectation[..., None], n_samples, axis=-1)  # entropy of E = the designed U
    (folder / "samples").mkdir(exist_ok=True)
    (folder / "labels").mkdir(exist_ok=True)
    (folder / "predictions").mkdir(exist_ok=True)
    save_volume(folder / "samples" / f"{stem}.nii.gz", samples.astype(np.float32), affine)
    save_volume(folder / "labels" / f"{stem}.nii.gz", label.astype(np.uint8), affine)
    save_volume(folder / "predictions" / f"{stem}.nii.gz", prediction.astype(np.uint8), affine)


def test_cli_refine_and_refine_batch(tmp_path, capsys):
    import json

    import nibabel as nib

    from ugcn.cli import main

    src = tmp_path / "in"
    write_case(src, "a", sphere_case())
    write_case(src, "b", sphere_case(radius=6.0, seed=3))
    out = tmp_path / "out"
    args = ["refine", "--image", str(src / "a.nii.gz"), "--samples", str(src / "samples" / "a.nii.gz"),
            "--prediction", str(src / "predictions" / "a.nii.gz"), "--label", str(src / "labels" / "a.nii.gz"),
            "--out", str(out), "--gcn-epochs", "30", "--crf"]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    for name in ("refined", "refined_unlabelled", "expectation_mask", "cnn", "crf"):
        img = nib.load(str(out / f"{name}.nii.gz"))
        np.testing.assert_allclose(img.affine, np.diag([0.8, 0.8, 2.5, 1.0]))
        assert img.shape == (24, 24, 16)
    assert report["status"] == "refined" and report["uncertainty"] == "entropy"
    assert report["dice"]["refined"] > report["dice"]["cnn"]
    assert report["graph"]["nodes"] > 0 and "fit" in report["timings_s"]
    assert report["selfcheck"]["passed"] and report["selection"]["variant"] and report["selection"]["why"]
    assert len(report["selection"]["candidates"]) == 3
    assert main(args) == 2 and "exist" in capsys.readouterr().err  # no silent overwrite
    batch_out = tmp_path / "batch"
    assert main(["refine-batch", "--images", str(src), "--samples-dir", str(src / "samples"),
                 "--labels", str(src / "labels"), "--out", str(batch_out), "--gcn-epochs", "30", "--quiet"]) == 0
    summary = json.loads((batch_out / "summary.json").read_text())
    assert set(summary["volumes"]) == {"a", "b"}
    for case in summary["volumes"].values():  # the self-check's columns
        assert case["status"] == "refined" and case["variant"] in ("configured", "local", "knn")
        assert case["validation_balanced_accuracy"] > 0.75
    assert summary["status_counts"] == {"refined": 2}
    # no --predictions: Ŷ = E > 0.5, which the synthetic E makes equal to the prediction. 30 epochs are
    # too few for the all-node output of the second volume; the uncertain-node variant is already better.
    assert summary["mean_dice"]["refined_unlabelled"] > summary["mean_dice"]["cnn"] + 0.1
    assert (batch_out / "b" / "refined.nii.gz").exists()
    assert main(["refine", "--image", str(src / "a.nii.gz"), "--samples", str(src / "labels" / "a.nii.gz"),
                 "--out", str(tmp_path / "bad")]) == 2  # a 3D file is not a set of sample maps


@pytest.mark.slow
def test_cli_refine_with_a_model(tmp_path):
    """--model: deterministic prediction + MC dropout of a (tiny, untrained) ugcn model, any estimator."""
    import json

    from ugcn.cli import main
    from ugcn.segment import UNetConfig, init_model, save_model

    write_case(tmp_path / "in", "a", sphere_case())
    save_model(init_model(UNetConfig(base_features=4, depth=2), jax.random.PRNGKey(0)), tmp_path / "model")
    out = tmp_path / "out"
    assert main(["refine", "--image", str(tmp_path / "in" / "a.nii.gz"), "--model", str(tmp_path / "model"),
                 "--prediction", str(tmp_path / "in" / "predictions" / "a.nii.gz"), "--out", str(out),
                 "--gcn-epochs", "30", "--n-samples", "2", "--chunk", "2", "--uncertainty", "variance",
                 "--tau", "0.5", "--tau-mode", "quantile", "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    # An untrained model: the fit may fail the self-check, which the report must then say.
    assert report["status"] in ("refined", "fallback") and report["uncertainty"] == "variance"
    assert report["selfcheck"]["passed"] == (report["status"] == "refined")
    assert report["n_samples"] == 2 and report["model"] == str(tmp_path / "model")
    assert (out / "refined.nii.gz").exists()


def test_cli_lam_reaches_the_edge_weights(tmp_path, capsys):
    import json

    from ugcn.cli import main

    src = tmp_path / "in"
    write_case(src, "a", sphere_case())
    base = ["refine", "--image", str(src / "a.nii.gz"), "--samples", str(src / "samples" / "a.nii.gz"),
            "--gcn-epochs", "5", "--quiet"]
    assert main(base + ["--out", str(tmp_path / "bad"), "--lam", "-1"]) == 2
    assert "--lam" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "o"), "--lam", "0"]) == 0
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["config"]["lam"] == 0.0
    assert main(base + ["--out", str(tmp_path / "r"), "--preset", "reference", "--no-check-fallback"]) == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert (report["config"]["tau_mode"], report["config"]["replace"], report["config"]["variants"]) == (
        "absolute", "all", [])
    assert report["config"]["check"]["fallback"] is False
    assert [c["name"] for c in report["selection"]["candidates"]] == ["configured"]
    assert report["status"] == ("refined" if report["selfcheck"]["passed"] else "check_failed")
