"""``ugcn mcdo``: maps, report and geometry from a model (MC dropout or TTA) or from sample maps; one-line errors."""
import json

import jax
import nibabel as nib
import numpy as np
import pytest

from ugcn.uncertainty.tta import tta_transforms


@pytest.fixture(scope="module")
def mcdo_inputs(tmp_path_factory):
    from ugcn.segment.checkpoint import save_model
    from ugcn.segment.model import init_model
    from ugcn.segment.unet import UNetConfig

    root = tmp_path_factory.mktemp("mcdo")
    config = UNetConfig(dims=2, base_features=2, depth=1)
    model = init_model(config, jax.random.PRNGKey(0))
    save_model(model, root / "model")
    affine = np.diag([0.8, 0.7, 2.5, 1.0])
    affine[:3, 3] = [-30.0, 12.0, 4.0]
    img = np.random.default_rng(0).normal(size=(16, 12, 8)).astype(np.float32)
    nib.save(nib.Nifti1Image(img, affine), str(root / "img.nii.gz"))
    return root, affine


def test_mcdo_cli_end_to_end(mcdo_inputs):
    from ugcn.cli import main

    root, affine = mcdo_inputs
    out = root / "out"
    argv = ["mcdo", "--model", str(root / "model"), "--image", str(root / "img.nii.gz"), "--out", str(out),
            "--n-samples", "3", "--chunk", "2", "--seed", "1",
            "--estimators", "entropy,variance,pcs,mutual_information", "--save-samples", "--quiet"]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["n_samples"] == 3 and set(report["estimators"]) == {"entropy", "variance", "pcs",
                                                                        "mutual_information"}
    assert "mc_sampling_s" in report["timings"]
    for name in ("prediction", "expectation", "entropy", "variance", "pcs", "mutual_information", "samples"):
        img = nib.load(str(out / f"{name}.nii.gz"))
        np.testing.assert_allclose(img.affine, affine, atol=1e-5, err_msg=name)
        assert img.shape[:3] == (16, 12, 8)
    assert nib.load(str(out / "samples.nii.gz")).shape == (16, 12, 8, 3)
    assert nib.load(str(out / "prediction.nii.gz")).get_data_dtype() == np.uint8
    # the maps agree with the saved samples (independent numpy computation)
    fg = np.moveaxis(np.asarray(nib.load(str(out / "samples.nii.gz")).dataobj), -1, 0).astype(np.float64)
    np.testing.assert_allclose(nib.load(str(out / "variance.nii.gz")).get_fdata(), fg.var(0), atol=1e-5)
    np.testing.assert_allclose(nib.load(str(out / "expectation.nii.gz")).get_fdata(), fg.mean(0), atol=1e-6)
    assert not any(p.name.startswith(".mcdo") for p in out.iterdir())  # no temporary left-overs
    assert main(argv) == 2  # existing outputs are refused without --overwrite (before any work)
    # --config reruns the recorded settings (T, chunk, seed, estimators, --save-samples): the same maps
    rerun = root / "rerun"
    assert main(["mcdo", "--model", str(root / "model"), "--image", str(root / "img.nii.gz"), "--out", str(rerun),
                 "--config", str(out / "report.json"), "--quiet"]) == 0
    assert sorted(p.name for p in rerun.iterdir()) == sorted(p.name for p in out.iterdir())
    for name in ("prediction", "expectation", "entropy", "mutual_information", "samples"):
        np.testing.assert_array_equal(nib.load(str(rerun / f"{name}.nii.gz")).get_fdata(),
                                      nib.load(str(out / f"{name}.nii.gz")).get_fdata(), err_msg=name)

    # the same maps from the saved samples of "another framework"
    out2 = root / "out2"
    argv2 = ["mcdo", "--samples", str(out / "samples.nii.gz"), "--out", str(out2), "--quiet"]
    assert main(argv2) == 0
    assert main(argv2) == 2
    assert main(argv2 + ["--overwrite"]) == 0
    np.testing.assert_allclose(
        nib.load(str(out2 / "entropy.nii.gz")).get_fdata(), nib.load(str(out / "entropy.nii.gz")).get_fdata(),
        atol=1e-5,
    )
    np.testing.assert_allclose(nib.load(str(out2 / "pcs.nii.gz")).affine, affine, atol=1e-5)


def test_mcdo_cli_errors(mcdo_inputs, capsys):
    from ugcn.cli import main

    root, _ = mcdo_inputs
    base = ["mcdo", "--model", str(root / "model"), "--image", str(root / "img.nii.gz"), "--out", str(root / "e")]
    assert main(base + ["--estimators", "entropyy"]) == 2
    assert "unknown estimator" in capsys.readouterr().err
    assert main(base + ["--n-samples", "0"]) == 2
    assert main(["mcdo", "--image", str(root / "img.nii.gz"), "--out", str(root / "e")]) == 2
    assert not (root / "e").exists()


def test_mcdo_cli_source_tta(tmp_path, np_tta_samples):
    from ugcn.cli import main
    from ugcn.segment.checkpoint import save_model
    from ugcn.segment.model import init_model, predict_probabilities
    from ugcn.segment.unet import UNetConfig

    model = init_model(UNetConfig(dims=2, base_features=2, depth=1), jax.random.PRNGKey(0))
    save_model(model, tmp_path / "model")
    img = np.random.default_rng(1).normal(size=(12, 12, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(img, np.eye(4)), str(tmp_path / "img.nii.gz"))
    out = tmp_path / "out"
    argv = ["mcdo", "--model", str(tmp_path / "model"), "--image", str(tmp_path / "img.nii.gz"), "--out", str(out),
            "--source", "tta", "--n-samples", "4", "--seed", "2", "--tta-max-shift", "1", "--save-samples",
            "--estimators", "variance,variation_ratio", "--quiet"]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["source"] == "tta" and "tta_sampling_s" in report["timings"]
    transforms = np.asarray(report["tta"]["transforms"])
    np.testing.assert_array_equal(transforms, tta_transforms(4, seed=2, shifts=(-1, 0, 1)))
    # every saved sample = the deterministic model on the transformed, edge-padded image, transformed back
    ref = np_tta_samples(lambda x: predict_probabilities(model, x.astype(np.float32)), img, transforms, 1)
    samples = np.moveaxis(np.asarray(nib.load(str(out / "samples.nii.gz")).dataobj), -1, 0)
    np.testing.assert_allclose(samples, ref[..., 1], atol=1e-5)
    np.testing.assert_allclose(nib.load(str(out / "variance.nii.gz")).get_fdata(), ref[..., 1].var(0), atol=1e-5)
    # --source is for models; sample maps bring their own samples
    assert main(["mcdo", "--samples", str(out / "samples.nii.gz"), "--out", str(tmp_path / "o2"),
                 "--source", "tta"]) == 2
    assert main(argv[:-1] + ["--out", str(tmp_path / "o3"), "--tta-max-shift", "-1"]) == 2


def test_mcdo_images_resumes_and_equals_the_single_image_run(mcdo_inputs, tmp_path, folder_resumes):
    from ugcn.cli import main

    root, affine = mcdo_inputs
    images = tmp_path / "images"
    images.mkdir()
    for i, shape in enumerate([(16, 16, 8), (12, 16, 8), (16, 16, 8)]):  # two shapes: two stacks
        img = np.random.default_rng(i).normal(size=shape).astype(np.float32)
        nib.save(nib.Nifti1Image(img, affine), str(images / f"c{i}.nii.gz"))
    common = ["mcdo", "--model", str(root / "model"), "--n-samples", "3", "--chunk", "2", "--seed", "1",
              "--estimators", "entropy,variance", "--quiet"]
    argv = common + ["--images", str(images), "--batch-size", "2"]
    assert main(argv + ["--out", str(tmp_path / "clean")]) == 0
    clean = json.loads((tmp_path / "clean" / "summary.json").read_text())
    assert folder_resumes(argv, tmp_path / "out") == clean
    assert sorted(clean["volumes"]) == ["c0", "c1", "c2"]
    # each case folder holds what `ugcn mcdo --image` writes for that image alone
    assert main(common + ["--image", str(images / "c1.nii.gz"), "--out", str(tmp_path / "one")]) == 0
    case = tmp_path / "out" / "c1"
    assert sorted(p.name for p in case.iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    for name in ("prediction", "expectation", "entropy", "variance"):
        np.testing.assert_allclose(nib.load(str(case / f"{name}.nii.gz")).get_fdata(),
                                   nib.load(str(tmp_path / "one" / f"{name}.nii.gz")).get_fdata(), atol=1e-5,
                                   err_msg=name)
    assert clean["volumes"]["c1"]["predicted_voxels"] == int(
        np.asarray(nib.load(str(case / "prediction.nii.gz")).dataobj).sum())
