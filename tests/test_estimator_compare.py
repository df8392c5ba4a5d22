"""``ugcn estimators compare``: exact voxel measures against scikit-learn, ranking on a built phantom, CLI."""
import csv
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from ugcn.cli import main
from ugcn.evaluate.estimator_compare import (
    CaseSamples,
    CompareConfig,
    compare_estimators,
    resolve_estimators,
    voxel_measures,
)
from ugcn.uncertainty import list_estimators, register_estimator, stats_from_samples, unregister_estimator

SHAPE = (24, 24, 24)
T = 4


def _ece_numpy(conf, correct, bins=15):
    """Expected calibration error, bins (b/B, (b+1)/B], written out with a Python loop over bins."""
    idx = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.sum() / conf.size * abs(correct[m].mean() - conf[m].mean())
    return total


def test_voxel_measures_match_sklearn_with_ties_and_weights():
    rng = np.random.default_rng(0)
    v = 3000
    errors = rng.random(v) < 0.15
    maps = np.stack([
        np.round(rng.random(v) * 8) / 8 + 0.25 * errors,  # informative, many ties
        rng.random(v),                                     # noise, no ties
        np.round(rng.random(v) * 2),                       # three values only
    ]).astype(np.float32)
    conf = rng.uniform(0.5, 1.0, v).astype(np.float32)
    weights = rng.random(v) < 0.7
    out = voxel_measures(maps, errors, conf, weights=weights, value_ranges=[None, (0.0, 1.0), (0.0, 4.0)])
    e, w = errors[weights], weights
    for k in range(3):
        assert out.auroc[k] == pytest.approx(roc_auc_score(e, maps[k][w]), abs=1e-5)
        assert out.auprc[k] == pytest.approx(average_precision_score(e, maps[k][w]), abs=1e-5)
    assert out.ece_expectation == pytest.approx(_ece_numpy(conf[w], ~e), abs=1e-5)
    seen = maps[0][w]
    scaled = (seen - seen.min()) / (seen.max() - seen.min())  # no declared range: the observed one
    assert out.ece_confidence[0] == pytest.approx(_ece_numpy(1 - scaled, ~e), abs=1e-5)
    assert out.ece_confidence[1] == pytest.approx(_ece_numpy(1 - maps[1][w], ~e), abs=1e-5)
    assert out.ece_confidence[2] == pytest.approx(_ece_numpy(1 - maps[2][w] / 4.0, ~e), abs=1e-5)
    assert out.n_voxels == w.sum() and out.n_errors == e.sum()
    counts = np.histogram(conf[w], bins=np.linspace(0, 1, 16))[0]
    np.testing.assert_allclose(out.bins_count[0], counts)  # no value lies on a bin edge here


def test_undefined_measures_are_nan_and_bin_edges():
    v = 3000  # the shapes of the test above: no recompilation
    maps = np.random.default_rng(1).random((3, v)).astype(np.float32)
    conf = np.where(np.arange(v) < v // 2, 0.0, 1.0).astype(np.float32)
    out = voxel_measures(maps, np.zeros(v, bool), conf)  # nothing is wrong
    assert np.all(np.isnan(out.auroc)) and np.all(np.isnan(out.auprc))
    # confidence 0 falls in the first bin, 1 in the last; all correct: ECE = 0.5 * |1 - 0| + 0.5 * |1 - 1|
    assert out.bins_count[0, 0] == v // 2 and out.bins_count[0, -1] == v - v // 2
    assert out.ece_expectation == pytest.approx(0.5)


# --- a phantom built so that one estimator knows where the prediction is wrong --------------------------


def _ball(centre, radius):
    grid = np.indices(SHAPE).astype(np.float32)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2


def _phantom_case(i: int):
    """Organ (ball) + small lesions; the prediction shifts the organ, misses a lesion and adds two FP blobs.

    Samples: ``E`` = 0.8 / 0.2 everywhere (so entropy, PCS... know nothing of the errors); the samples spread
    ±0.15 around ``E`` at wrong voxels and ±0.02 elsewhere, which the "informative" estimator reads.
    """
    rng = np.random.default_rng(i)
    centre = np.array([12, 12, 12]) + rng.integers(-1, 2, 3)
    organ = _ball(centre, 6.5)
    lesions = [_ball(c, 2) for c in ([4, 4, 4], [19, 4, 19], [4, 19, 19])]
    label = organ | lesions[0] | lesions[1] | lesions[2]
    shift = np.roll(organ, 1 + i % 2, axis=i % 3)
    corners = [[19, 19, 4], [4, 19, 5], [19, 5, 10], [12, 20, 3]]
    a, b = rng.choice(len(corners), 2, replace=False)
    fp = _ball(corners[a], 2) | _ball(corners[b], 1.5)
    pred = shift | lesions[0] | lesions[1] | fp
    wrong = pred != label
    e = np.where(pred, 0.8, 0.2).astype(np.float32)
    spread = np.where(wrong, 0.15, 0.02).astype(np.float32)
    signs = np.array([1, -1, 1, -1], np.float32).reshape(T, 1, 1, 1)
    fg = np.clip(e[None] + signs * spread[None], 0.0, 1.0)
    samples = np.stack([1 - fg, fg], axis=-1).astype(np.float32)
    image = (label.astype(np.float32) + 0.1 * rng.standard_normal(SHAPE)).astype(np.float32)
    return f"case_{i}", image, label.astype(np.uint8), samples, wrong


def _noise_field(stats, seed):
    """Uniform noise ``f32[X, Y, Z]``, different for every case (the key folds in a checksum of the data)."""
    checksum = (jnp.sum(stats.sum_p2[..., 1] * jnp.arange(stats.sum_p2[..., 1].size).reshape(stats.sum_p2.shape[:-1]) % 7)
                * 1000).astype(jnp.int32)
    return jax.random.uniform(jax.random.fold_in(jax.random.PRNGKey(seed), checksum), stats.sum_p.shape[:-1])


def _informative(stats):
    """Sample standard deviation of the foreground plus uniform noise of amplitude 0.2."""
    mean = stats.sum_p[..., 1] / stats.count
    std = jnp.sqrt(jnp.maximum(stats.sum_p2[..., 1] / stats.count - mean**2, 0.0))
    return std + 0.2 * _noise_field(stats, 0)


def _noise(stats):
    """Pure noise."""
    return _noise_field(stats, 1)


def _sample_spread(samples):
    """Max minus min of the foreground over the samples (needs the samples)."""
    return samples[..., 1].max(0) - samples[..., 1].min(0)


@pytest.fixture(scope="module")
def registered():
    names = {"cmp_informative": (_informative, "stats"), "cmp_noise": (_noise, "stats"),
             "cmp_spread": (_sample_spread, "samples")}
    for name, (fn, needs) in names.items():
        register_estimator(name, fn=fn, needs=needs, overwrite=True)
    yield list(names)
    for name in names:
        unregister_estimator(name)


@pytest.fixture(scope="module")
def phantom():
    return [_phantom_case(i) for i in range(4)]


CONFIG = CompareConfig(region="volume", r_epochs=30, r_sweep=(0.95,), gcnn_epochs=3, l_folds=2)


@pytest.fixture(scope="module")
def comparison(registered, phantom):
    cases = (CaseSamples(n, im, lab, stats_from_samples(s), None) for n, im, lab, s, _ in phantom)
    return compare_estimators(cases, ["cmp_informative", "cmp_noise", "entropy"], CONFIG, progress=False)


def test_comparison_ranks_informative_above_noise(comparison, phantom):
    assert comparison.ranking("auroc")[0] == "cmp_informative"
    assert comparison.ranking("auprc")[0] == "cmp_informative"
    assert comparison.ranking("auroc").index("cmp_informative") < comparison.ranking("auroc").index("cmp_noise")
    inf, noise = comparison.row("cmp_informative"), comparison.row("cmp_noise")
    assert inf["auroc"] > 0.9 and abs(noise["auroc"] - 0.5) < 0.05
    assert inf["auprc"] > 3 * noise["auprc"]
    assert inf["l_auc_mean"] > 0.9 and inf["l_auc_mean"] > noise["l_auc_mean"]


def test_comparison_values_match_sklearn_on_pooled_voxels(comparison, phantom):
    errors = np.concatenate([w.ravel() for *_, w in phantom])
    stats = [stats_from_samples(s) for *_, s, _ in phantom]
    noise = np.concatenate([np.asarray(_noise_field(st, 1)).ravel() for st in stats])
    spread = [s[..., 1] for *_, s, _ in phantom]
    std = np.concatenate([np.sqrt(np.maximum((x**2).mean(0) - x.mean(0) ** 2, 0)).ravel() for x in spread])
    field = np.concatenate([np.asarray(_noise_field(st, 0)).ravel() for st in stats])
    informative = (std + 0.2 * field).astype(np.float32)
    for name, values in (("cmp_informative", informative), ("cmp_noise", noise)):
        row = comparison.row(name)
        assert row["auroc"] == pytest.approx(roc_auc_score(errors, values), abs=2e-4)
        assert row["auprc"] == pytest.approx(average_precision_score(errors, values), abs=2e-4)
    assert comparison.summary["error_voxels"] == errors.sum()
    assert comparison.summary["voxels"] == errors.size


def test_comparison_has_r_and_l_columns(comparison):
    assert comparison.row("entropy")["r_default_tau"] == "abs 0.8"
    assert comparison.row("cmp_noise")["r_default_tau"].startswith("q ")
    for row in comparison.rows:
        for key in ("r_dice_default", "r_dice_best", "l_auc_mean", "l_auc_gcnn", "ece_confidence"):
            assert math.isfinite(row[key]) or comparison.notes, (row["estimator"], key)
        assert 0.0 <= row["r_dice_best"] <= 1.0 and row["r_best_quantile"] in CONFIG.r_sweep
        assert 0.0 <= row["l_auc_gcnn"] <= 1.0
    assert comparison.summary["l_fp_lesions"] == 8 and comparison.summary["l_tp_lesions"] == 12
    table = comparison.markdown()
    assert "cmp_informative" in table and "| estimator |" in table


def test_resolve_estimators_defaults_to_every_registered(registered):
    names = [e.name for e in resolve_estimators(None)]
    assert names == list_estimators()
    more = [e.name for e in resolve_estimators(f"all,{__name__}:_noise")]
    # an import spec naming a registered function is the registered estimator, not a duplicate
    assert more == list_estimators()
    with pytest.raises(ValueError, match="unknown estimator"):
        resolve_estimators("entropy,nope")


def test_samples_estimator_without_samples_is_refused(registered, phantom):
    n, im, lab, s, _ = phantom[0]
    with pytest.raises(ValueError, match="need the samples"):
        compare_estimators([CaseSamples(n, im, lab, stats_from_samples(s), None)], ["cmp_spread"], CONFIG,
                           progress=False)


# --- the command ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, phantom):
    from ugcn.data import write_decathlon
    from ugcn.io import save_volume

    root = tmp_path_factory.mktemp("cmp")
    affine = np.eye(4)
    write_decathlon(root / "data", [(n, im, lab, affine) for n, im, lab, _, _ in phantom], name="cmp")
    for n, _, _, s, _ in phantom:
        save_volume(root / "samples" / f"{n}_samples.nii.gz", np.moveaxis(s[..., 1], 0, -1), affine)
    return root


def test_cli_compare_with_samples_dir(dataset, registered, capsys):
    out = dataset / "out"
    argv = ["estimators", "compare", "--data", str(dataset / "data"), "--samples-dir", str(dataset / "samples"),
            "--out", str(out), "--estimators", "entropy,pcs,one_minus_pcs,cmp_noise,cmp_spread", "--region", "volume",
            "--no-r", "--gcnn-epochs", "3", "--folds", "2"]  # method R runs in the library test above
    assert main(argv + ["--quiet"]) == 0
    assert capsys.readouterr().out == ""
    with open(out / "comparison.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["estimator"] for r in rows] == ["entropy", "pcs", "one_minus_pcs", "cmp_noise", "cmp_spread"]
    assert rows[4]["needs"] == "samples" and rows[1]["higher_is_uncertain"] == "False"
    assert rows[0]["r_dice_default"] == "" and rows[0]["l_auc_gcnn"] != ""  # --no-r: empty cells, not errors
    payload = json.loads((out / "comparison.json").read_text())
    assert payload["source"]["samples_dir"].endswith("samples") and payload["versions"]["jax"] == jax.__version__
    # pcs is a confidence: oriented as 1 - pcs, it ranks voxels exactly as one_minus_pcs
    pcs, one_minus = payload["rows"][1], payload["rows"][2]
    assert pcs["auroc"] == pytest.approx(one_minus["auroc"], abs=1e-6)
    assert pcs["l_auc_mean"] == pytest.approx(one_minus["l_auc_mean"], abs=1e-6)
    assert (out / "comparison.png").stat().st_size > 10_000
    assert main(argv + ["--quiet"]) == 2  # refuses to overwrite
    assert "--overwrite" in capsys.readouterr().err


def test_cli_list_shows_registered_and_user_estimators(registered, capsys):
    assert main(["estimators", "list"]) == 0
    out = capsys.readouterr().out
    for name in list_estimators():
        assert name in out
    assert "confidence" in out and "samples" in out


@pytest.mark.parametrize("source", ["tta"])  # the "mc" path is the CLI test of --quick; one U-Net compile here
def test_cases_from_model_feed_the_comparison(source, phantom, registered):
    from ugcn.evaluate.estimator_compare import cases_from_model
    from ugcn.segment import UNetConfig
    from ugcn.segment.model import init_model

    model = init_model(UNetConfig(dims=2, base_features=2, depth=1, dropout_rate=0.5), jax.random.PRNGKey(0))
    items = [(n, im, lab) for n, im, lab, _, _ in phantom[:2]]
    cases = list(cases_from_model(items, model, n_samples=3, chunk_size=3, keep_samples=True, source=source))
    assert [c.name for c in cases] == ["case_0", "case_1"]
    assert float(cases[0].stats.count) == 3 and cases[0].samples.shape == (3,) + SHAPE + (2,)
    result = compare_estimators(cases, ["entropy", "cmp_spread"], CompareConfig(method_r=False, method_l=False),
                                progress=False)
    assert [r["estimator"] for r in result.rows] == ["entropy", "cmp_spread"]
    assert result.summary["cases"] == 2
