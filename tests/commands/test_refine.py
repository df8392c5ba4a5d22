"""``ugcn refine`` and ``ugcn refine-batch`` from NIfTI files: outputs, reports, options reaching the computation."""
import json

import jax
import nibabel as nib
import numpy as np
import pytest


@pytest.fixture
def finished_fits(monkeypatch):
    """Every refinement's ``(config, prep, result)`` as ``ugcn.refine.pipeline._finish`` computed it, in call order:
    what the computation used, next to what the command wrote."""
    import ugcn.refine.pipeline as pipeline

    seen = []
    real = pipeline._finish

    def spy(prep, node_probs, fit_s, config):
        result = real(prep, node_probs, fit_s, config)
        seen.append((config, prep, result))
        return result

    monkeypatch.setattr(pipeline, "_finish", spy)
    return seen


def refine_command(src, *flags) -> list:
    """``ugcn refine`` of write_case's case ``a`` under ``src`` with 30 GCN epochs, quiet, and ``flags``."""
    return ["refine", "--image", str(src / "a.nii.gz"), "--samples", str(src / "samples" / "a.nii.gz"),
            "--prediction", str(src / "predictions" / "a.nii.gz"), "--gcn-epochs", "30", "--quiet", *flags]


def test_cli_refine_and_refine_batch(tmp_path, capsys, sphere_case, write_case):
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
    assert sorted(report["files"]) == sorted(["refined.nii.gz", "refined_unlabelled.nii.gz", "report.json",
                                              "expectation_mask.nii.gz", "prediction.nii.gz", "crf.nii.gz"])
    for name in ("refined", "refined_unlabelled", "expectation_mask", "prediction", "crf"):
        img = nib.load(str(out / f"{name}.nii.gz"))
        np.testing.assert_allclose(img.affine, np.diag([0.8, 0.8, 2.5, 1.0]))
        assert img.shape == (24, 24, 16)
    assert report["status"] == "refined" and report["uncertainty"] == "entropy"
    assert report["dice"]["refined"] > report["dice"]["cnn"]
    assert report["graph"]["nodes"] > 0 and "fit" in report["timings_s"]
    assert report["selfcheck"]["passed"] and report["selection"]["variant"] and report["selection"]["why"]
    assert len(report["selection"]["candidates"]) == 2
    assert main(args) == 2 and "exist" in capsys.readouterr().err  # no silent overwrite
    batch_out = tmp_path / "batch"
    assert main(["refine-batch", "--images", str(src), "--samples-dir", str(src / "samples"),
                 "--labels", str(src / "labels"), "--out", str(batch_out), "--gcn-epochs", "30", "--quiet"]) == 0
    summary = json.loads((batch_out / "summary.json").read_text())
    assert set(summary["volumes"]) == {"a", "b"}
    for case in summary["volumes"].values():  # the self-check's columns
        assert case["status"] == "refined" and case["variant"] in ("configured", "local")
        assert case["validation_balanced_accuracy"] > 0.75
    assert summary["status_counts"] == {"refined": 2}
    # no --predictions: Ŷ = E > 0.5, which the synthetic E makes equal to the prediction. 30 epochs are
    # too few for the all-node output of the second volume; the uncertain-node variant is already better.
    assert summary["mean_dice"]["refined_unlabelled"] > summary["mean_dice"]["cnn"] + 0.1
    assert (batch_out / "b" / "refined.nii.gz").exists()
    assert main(["refine", "--image", str(src / "a.nii.gz"), "--samples", str(src / "labels" / "a.nii.gz"),
                 "--out", str(tmp_path / "bad")]) == 2  # a 3D file is not a set of sample maps


@pytest.mark.slow
def test_cli_refine_with_a_model(tmp_path, sphere_case, write_case):
    """--model: deterministic prediction + MC dropout of a (tiny, untrained) ugcn model, any estimator."""
    import json

    from ugcn.cli import main
    from ugcn.segment import UNetConfig, init_model, save_model

    write_case(tmp_path / "in", "a", sphere_case())
    save_model(init_model(UNetConfig(base_features=2, depth=1), jax.random.PRNGKey(0)), tmp_path / "model")
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


def test_cli_lam_reaches_the_edge_weights(tmp_path, capsys, monkeypatch, sphere_case, write_case):
    """--lam scales the diversity term of the graph that is fitted: w(λ) - w(0) = λ · D(E_i, E_j), with D
    computed here from the expectation of the sample file and the edges' end points."""
    import math

    import ugcn.refine.pipeline as pipeline
    from ugcn.cli import main

    src = tmp_path / "in"
    case = sphere_case()
    write_case(src, "a", case)
    graphs = []  # (lam it was built with, graph): the configured graph is the first built per run
    real = pipeline.build_voxel_graph

    def spy(*a, **k):
        graphs.append((k.get("lam"), real(*a, **k)))
        return graphs[-1][1]

    monkeypatch.setattr(pipeline, "build_voxel_graph", spy)
    # The published configuration: the configured graph only (no variants), its fit kept (no fallback).
    base = ["refine", "--image", str(src / "a.nii.gz"), "--samples", str(src / "samples" / "a.nii.gz"),
            "--gcn-epochs", "5", "--preset", "reference", "--no-check-fallback", "--quiet"]
    assert main(base + ["--out", str(tmp_path / "bad"), "--lam", "-1"]) == 2
    assert "--lam" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "o0"), "--lam", "0"]) == 0
    first = len(graphs)
    assert main(base + ["--out", str(tmp_path / "o2"), "--lam", "2"]) == 0
    (lam0, g0), (lam2, g2) = graphs[0], graphs[first]
    assert (lam0, lam2) == (0.0, 2.0)
    np.testing.assert_array_equal(g0.senders, g2.senders)  # same seed: same edges, only the weights differ
    np.testing.assert_array_equal(g0.receivers, g2.receivers)
    expectation = case[2]  # every sample map of the file is E, so the file's expectation is E
    div = []
    for i, j in zip(g0.senders, g0.receivers):
        p = min(max(float(expectation[tuple(g0.node_coords[i])]), 1e-15), 1 - 1e-15)
        q = min(max(float(expectation[tuple(g0.node_coords[j])]), 1e-15), 1 - 1e-15)
        div.append((p - q) * (math.log2(p / q) - math.log2((1 - p) / (1 - q))))
    div = np.array(div)
    assert div.max() > 0.1  # the term is not trivially zero on this case
    np.testing.assert_allclose(g2.weights - g0.weights, 2.0 * div, rtol=1e-3, atol=1e-4)
    r0 = np.asarray(nib.load(str(tmp_path / "o0" / "refined.nii.gz")).dataobj)
    r2 = np.asarray(nib.load(str(tmp_path / "o2" / "refined.nii.gz")).dataobj)
    assert not np.array_equal(r0, r2)  # and it changes the refined mask
    report = json.loads((tmp_path / "o2" / "report.json").read_text())
    assert (report["config"]["lam"], report["config"]["tau_mode"], report["config"]["replace"],
            report["config"]["variants"]) == (2.0, "absolute", "all", [])
    assert report["config"]["check"]["fallback"] is False
    assert [c["name"] for c in report["selection"]["candidates"]] == ["configured"]
    assert report["status"] == ("refined" if report["selfcheck"]["passed"] else "check_failed")


def test_refine_batch_resumes_to_the_clean_run(tmp_path, sphere_case, write_case, folder_resumes):
    from ugcn.cli import main

    src = tmp_path / "in"
    for i in range(3):
        write_case(src, f"c{i}", sphere_case(shape=(16, 16, 12), radius=4.5, seed=i))
    argv = ["refine-batch", "--images", str(src), "--samples-dir", str(src / "samples"), "--labels",
            str(src / "labels"), "--gcn-epochs", "5", "--batch-size", "1", "--quiet"]
    assert main(argv + ["--out", str(tmp_path / "clean")]) == 0
    clean = json.loads((tmp_path / "clean" / "summary.json").read_text())
    resumed = folder_resumes(argv, tmp_path / "out")
    assert resumed == clean
    assert sum(clean["status_counts"].values()) == 3
    assert all(set(v) >= {"status", "variant", "dice"} for v in clean["volumes"].values())
    for i in range(3):
        rep = json.loads((tmp_path / "out" / f"c{i}" / "report.json").read_text())
        assert "prediction.nii.gz" in rep["files"] and rep["run_settings"]["seed"] == 0


def test_cli_removal_margin_reaches_the_refined_mask(tmp_path, finished_fits, sphere_case, write_case):
    """--removal-margin: the written mask is, on the uncertain nodes, the GCN's probabilities thresholded with
    the flag's margin for removals (numpy here) and the confidence margin for additions."""
    from ugcn.cli import main

    src = tmp_path / "in"
    case = sphere_case()
    write_case(src, "a", case)
    # the margins alone (tests/refine/test_sparse_*.py)
    base = refine_command(src, "--sparse-removal", "0", "--sparse-addition", "0", "--context-removal", "0",
                          "--thin-removal", "0")
    for margin in ("0.1", "0.45"):
        assert main(base + ["--out", str(tmp_path / margin), "--removal-margin", margin]) == 0
    seen = [(config.removal_margin, result.node_probs, result.graph) for config, _, result in finished_fits]
    assert [m for m, _, _ in seen] == [0.1, 0.45]
    removed = []
    for margin, probs, graph in seen:
        refined = np.asarray(nib.load(str(tmp_path / str(margin) / "refined.nii.gz")).dataobj)
        free = ~graph.label_mask
        coords = tuple(graph.node_coords[free].T)
        pred, p = case[1][coords], probs[free]
        np.testing.assert_array_equal(refined[coords], np.where(p > 0.9, 1, np.where(p <= 0.5 - margin, 0, pred)))
        removed.append(int((pred & (refined[coords] == 0)).sum()))
        report = json.loads((tmp_path / str(margin) / "report.json").read_text())
        assert report["config"]["removal_margin"] == margin
        assert (report["config"]["sparse_removal"], report["config"]["sparse_addition"]) == (0.0, 0.0)
    assert removed[0] > removed[1]  # the looser margin removes more


def test_cli_context_options_reach_the_refined_mask(tmp_path, finished_fits, sphere_case, write_case):
    """--context-addition, --context-sigma and --context-reach reach the check (recomputed here on the whole volume
    with the file's voxel size) and the refined mask follows the rule (numpy here); the sparse rules are off."""
    from scipy import ndimage

    import ugcn.refine.pipeline as pipeline
    from ugcn.cli import main

    src = tmp_path / "in"
    case = sphere_case()
    write_case(src, "a", case)
    image, pred = case[0], case[1].astype(bool)
    spacing = (0.8, 0.8, 2.5)  # write_case's affine
    base = refine_command(src, "--sparse-removal", "0", "--sparse-addition", "0", "--context-removal", "0",
                          "--thin-removal", "0", "--fill-addition", "1")
    runs = {"off": ["--context-addition", "1"],
            "on": ["--context-addition", "0.5", "--context-sigma", "0.8", "--context-reach", "2"]}
    for name, flags in runs.items():
        assert main(base + ["--out", str(tmp_path / name)] + flags) == 0
    (off, ctx_off, p_off, _), (on, ctx, p, g) = [(c, f.context, r.node_probs, r.graph) for c, f, r in finished_fits]
    assert ctx_off is None and (on.context_addition, on.context_sigma, on.context_reach) == (0.5, 0.8, 2.0)
    idx = tuple(g.node_coords.T)
    fg = g.label_mask & pred[idx]
    bg = g.label_mask & ~pred[idx]
    sig = [0.8 / s for s in spacing]
    outside = pipeline.masked_smooth(image, ~pred, sig)[idx]
    organ = np.median(pipeline.masked_smooth(image, pred, sig)[idx][fg])
    near = bg & (ndimage.distance_transform_edt(~pred, sampling=spacing)[idx] < 2.0)
    background = np.median(outside[near])
    want = np.abs(outside - background) > np.abs(outside - organ)
    np.testing.assert_array_equal(ctx, want)
    free = ~g.label_mask
    loose = free & ~pred[idx] & (p > 0.5) & (p <= 0.9) & want
    assert loose.sum() >= 3
    refined = np.asarray(nib.load(str(tmp_path / "on" / "refined.nii.gz")).dataobj)
    rule = np.where((p > 0.9) | loose, 1, np.where(p <= 0.02, 0, pred[idx]))
    np.testing.assert_array_equal(refined[tuple(g.node_coords[free].T)], rule[free])
    np.testing.assert_allclose(p_off, p, atol=1e-6)  # same fit: the rule alone differs
    refined_off = np.asarray(nib.load(str(tmp_path / "off" / "refined.nii.gz")).dataobj)
    np.testing.assert_array_equal(refined != refined_off, np.isin(np.arange(refined.size).reshape(refined.shape),
                                                                  np.ravel_multi_index(
                                                                      tuple(g.node_coords[loose].T), refined.shape)))
    report = json.loads((tmp_path / "on" / "report.json").read_text())
    assert (report["config"]["context_addition"], report["config"]["context_sigma"],
            report["config"]["context_reach"]) == (0.5, 0.8, 2.0)


def test_cli_context_removal_options_reach_the_refined_mask(tmp_path, finished_fits, sphere_case, write_case):
    """--context-removal, --context-removal-sigma and --context-removal-share reach the leak level (recomputed here on
    the whole volume with the file's voxel size) and the refined mask follows the rule (numpy here); the other mask
    rules are off."""
    import ugcn.refine.pipeline as pipeline
    from ugcn.cli import main

    src = tmp_path / "in"
    case = sphere_case()
    write_case(src, "a", case)
    image, pred = case[0], case[1].astype(bool)
    base = refine_command(src, "--sparse-removal", "0", "--sparse-addition", "0", "--context-addition", "1",
                          "--thin-removal", "0", "--fill-addition", "1")
    runs = {"off": ["--context-removal", "0"],
            "on": ["--context-removal", "0.6", "--context-removal-sigma", "0.8", "--context-removal-share", "0.3"]}
    for name, flags in runs.items():
        assert main(base + ["--out", str(tmp_path / name)] + flags) == 0
    (off, leak_off, p_off, _), (on, leak, p, g) = [(c, f.leak, r.node_probs, r.graph) for c, f, r in finished_fits]
    assert leak_off is None
    written = nib.load(str(src / "a.nii.gz"))  # the image and voxel size as the command read them (float32)
    image = np.asarray(written.dataobj, np.float32)
    spacing = tuple(float(z) for z in written.header.get_zooms()[:3])
    assert (on.context_removal, on.context_removal_sigma, on.context_removal_share) == (0.6, 0.8, 0.3)
    idx = tuple(g.node_coords.T)
    fg = g.label_mask & pred[idx]
    sig = [0.8 / s for s in spacing]
    inside = pipeline.masked_smooth(image, pred, sig)[idx]
    outside = pipeline.masked_smooth(image, ~pred, sig)[idx]
    organ = np.median(inside[fg])
    with np.errstate(invalid="ignore"):
        want = (inside - organ) / (outside - organ)
    # compared as level x (outside - organ) = inside - organ: the ratio amplifies rounding where the levels nearly meet
    np.testing.assert_array_equal(np.isnan(leak), np.isnan(want))
    ok = ~np.isnan(want)
    np.testing.assert_allclose((leak * (outside - organ))[ok], (inside - organ)[ok], rtol=0, atol=1e-9 * abs(organ))
    free = ~g.label_mask
    leaky = free & pred[idx] & (p < 0.6) & (p > 0.02) & (np.nan_to_num(want, nan=-1.0) > 0.3)
    assert leaky.sum() >= 3
    refined = np.asarray(nib.load(str(tmp_path / "on" / "refined.nii.gz")).dataobj)
    rule = np.where(p > 0.9, 1, np.where((p <= 0.02) | leaky, 0, pred[idx]))
    np.testing.assert_array_equal(refined[tuple(g.node_coords[free].T)], rule[free])
    np.testing.assert_allclose(p_off, p, atol=1e-6)  # same fit: the rule alone differs
    refined_off = np.asarray(nib.load(str(tmp_path / "off" / "refined.nii.gz")).dataobj)
    changed = np.zeros(refined.shape, bool)
    changed[tuple(g.node_coords[leaky].T)] = True
    np.testing.assert_array_equal(refined != refined_off, changed)
    report = json.loads((tmp_path / "on" / "report.json").read_text())
    assert (report["config"]["context_removal"], report["config"]["context_removal_sigma"],
            report["config"]["context_removal_share"]) == (0.6, 0.8, 0.3)


def assert_only_nodes_changed(on, off, coords):
    """The refined masks of the output folders ``on`` and ``off`` differ exactly at the voxels ``coords: [K, 3]``."""
    refined = np.asarray(nib.load(str(on / "refined.nii.gz")).dataobj)
    refined_off = np.asarray(nib.load(str(off / "refined.nii.gz")).dataobj)
    changed = np.zeros(refined.shape, bool)
    changed[tuple(np.asarray(coords).T)] = True
    np.testing.assert_array_equal(refined != refined_off, changed)


def test_cli_thin_removal_options_reach_the_refined_mask(tmp_path, finished_fits, sphere_case, write_case,
                                                         neighbour_counts):
    """--thin-removal and --thin-removal-share reach the refined mask: against --thin-removal 0 (same fit), exactly the
    uncertain voxels of Ŷ the margins keep with output <= 0.9, leak level above the share and fewer than the share of
    27 neighbours left in Ŷ minus the margins' removals go (numpy here); the other mask rules are off."""
    from ugcn.cli import main

    src = tmp_path / "in"
    case = sphere_case()
    write_case(src, "a", case)
    pred = case[1].astype(bool)
    base = refine_command(src, "--sparse-removal", "0", "--sparse-addition", "0", "--context-addition", "1",
                          "--context-removal", "0", "--fill-addition", "1")
    runs = {"off": ["--thin-removal", "0"], "on": ["--thin-removal", "0.7", "--thin-removal-share", "0.1"]}
    for name, flags in runs.items():
        assert main(base + ["--out", str(tmp_path / name)] + flags) == 0
    (_, leak_off, p_off, _), (on, leak, p, g) = [(c, f.leak, r.node_probs, r.graph) for c, f, r in finished_fits]
    assert leak_off is None and (on.thin_removal, on.thin_removal_share) == (0.7, 0.1)
    np.testing.assert_allclose(p_off, p, atol=1e-6)  # same fit: the rule alone differs
    idx = tuple(g.node_coords.T)
    free = ~g.label_mask
    cls = np.where(p > 0.9, 1, np.where(p <= 0.02, 0, pred[idx]))
    left = pred.copy()
    left[tuple(g.node_coords[free & pred[idx] & (cls == 0)].T)] = False
    counts = neighbour_counts(left)
    thin = (free & pred[idx] & (cls == 1) & (p <= 0.9) & (np.nan_to_num(leak, nan=-1.0) > 0.1)
            & (counts[idx] < 0.7 * 27))
    assert thin.sum() >= 3
    assert_only_nodes_changed(tmp_path / "on", tmp_path / "off", g.node_coords[thin])
    report = json.loads((tmp_path / "on" / "report.json").read_text())
    assert (report["config"]["thin_removal"], report["config"]["thin_removal_share"]) == (0.7, 0.1)


def test_cli_fill_addition_options_reach_the_refined_mask(tmp_path, finished_fits, sphere_case, write_case,
                                                          neighbour_counts):
    """--fill-addition and its share and gates reach the refined mask: against --fill-addition 1 (same fit), exactly
    the uncertain voxels outside Ŷ the margins leave out with output in (0.1, 0.9] and at least 0.2 * 27 of their
    3x3x3 neighbourhood in Ŷ are added (numpy here), with the gates wide open; the other mask rules are off."""
    from ugcn.cli import main

    src = tmp_path / "in"
    case = sphere_case()
    write_case(src, "a", case)
    pred = case[1].astype(bool)
    base = refine_command(src, "--sparse-removal", "0", "--sparse-addition", "0", "--context-addition", "1",
                          "--context-removal", "0", "--thin-removal", "0")
    runs = {"off": ["--fill-addition", "1"],
            "on": ["--fill-addition", "0.1", "--fill-addition-share", "0.2", "--fill-addition-removed", "1",
                   "--fill-addition-fpr", "1"]}
    for name, flags in runs.items():
        assert main(base + ["--out", str(tmp_path / name)] + flags) == 0
    (off, _, p_off, _), (on, _, p, g) = [(c, f, r.node_probs, r.graph) for c, f, r in finished_fits]
    assert off.fill_addition == 1.0
    assert (on.fill_addition, on.fill_addition_share, on.fill_addition_removed,
            on.fill_addition_fpr) == (0.1, 0.2, 1, 1)
    np.testing.assert_allclose(p_off, p, atol=1e-6)  # same fit: the rule alone differs
    idx = tuple(g.node_coords.T)
    free = ~g.label_mask
    cls = np.where(p > 0.9, 1, np.where(p <= 0.02, 0, pred[idx]))
    counts = neighbour_counts(pred)
    fill = free & ~pred[idx] & (cls == 0) & (p > 0.1) & (p <= 0.9) & (counts[idx] >= 0.2 * 27)
    assert fill.sum() >= 3
    assert_only_nodes_changed(tmp_path / "on", tmp_path / "off", g.node_coords[fill])
    report = json.loads((tmp_path / "on" / "report.json").read_text())
    assert (report["config"]["fill_addition"], report["config"]["fill_addition_share"],
            report["config"]["fill_addition_removed"], report["config"]["fill_addition_fpr"]) == (0.1, 0.2, 1, 1)
