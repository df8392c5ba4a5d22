"""Shape descriptors against scipy/numpy per-lesion references; MetaSeg and the shape baseline against
scikit-learn pipelines, and their JSON round trip."""
import json

import numpy as np
import pytest
from scipy import ndimage
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ugcn.lesion.baselines import (
    SHAPE_FEATURES,
    MetaSeg,
    fit_metaseg,
    fit_shape_baseline,
    lesion_shape_statistics,
    metaseg_scores,
    shape_scores,
)
from ugcn.lesion.components import label_lesions


def _reference_shape(mask):
    """One lesion's descriptors, computed directly."""
    size = mask.sum()
    eroded = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(3, 1), border_value=0)
    coords = np.argwhere(mask).astype(float)
    lo, hi = coords.min(0), coords.max(0)
    extent = hi - lo + 1
    cov = np.cov(coords.T, bias=True) + np.eye(3) / 12.0 if size > 1 else np.eye(3) / 12.0
    eig = np.linalg.eigvalsh(cov)
    return [np.log(size), (size - eroded.sum()) / size, size / np.prod(extent), np.sqrt(eig[2] / eig[0]),
            np.log(extent.max())]


def test_shape_statistics_match_per_lesion_reference():
    rng = np.random.default_rng(0)
    mask = ndimage.binary_opening(rng.random((20, 18, 16)) < 0.35)
    mask[0:4, 0:4, 0:4] = True  # a cube touching the border
    mask[10, 10, 10] = True
    labels, n = label_lesions(mask)
    got = lesion_shape_statistics(labels, n)
    assert list(got) == list(SHAPE_FEATURES)
    for k in range(n):
        np.testing.assert_allclose([got[f][k] for f in SHAPE_FEATURES], _reference_shape(labels == k + 1),
                                   rtol=1e-9, atol=1e-9)


def test_cube_by_hand():
    labels = np.zeros((6, 6, 6), np.int32)
    labels[1:5, 1:5, 1:5] = 1
    got = lesion_shape_statistics(labels, 1)
    assert got["shape_surface_fraction"][0] == pytest.approx(56 / 64)
    assert got["shape_fill"][0] == 1.0 and got["shape_elongation"][0] == pytest.approx(1.0)


def _data(seed, n=80, k=4):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, k)) * [1, 10, 0.1, 100]
    iou = np.clip(0.5 + 0.2 * x[:, 0] + 0.1 * rng.normal(size=n), 0, 1)
    return x, iou


def test_metaseg_matches_sklearn_pipelines_and_round_trips():
    x, iou = _data(1)
    model = fit_metaseg(x, iou, estimators=("a", "b", "c"))
    ref_c = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, iou < 0.1)
    ref_r = make_pipeline(StandardScaler(), LinearRegression()).fit(x, iou)
    xt, _ = _data(2)
    got = metaseg_scores(model, xt)
    np.testing.assert_allclose(got["metaseg_classif"], ref_c.predict_proba(xt)[:, 1], rtol=1e-6)
    np.testing.assert_allclose(got["metaseg_reg"], 1 - ref_r.predict(xt), rtol=1e-6)
    back = MetaSeg.from_json(json.loads(json.dumps(model.to_json())))
    np.testing.assert_allclose(metaseg_scores(back, xt)["metaseg_classif"], got["metaseg_classif"])
    assert back.estimators == ("a", "b", "c")
    with pytest.raises(ValueError, match="columns"):
        metaseg_scores(model, xt[:, :2])
    with pytest.raises(ValueError, match="not a valid"):
        MetaSeg.from_json({"kind": "other"})


def test_single_class_falls_back_to_the_rate_and_shape_baseline_scores_fp():
    x, iou = _data(3)
    model = fit_metaseg(x, np.ones_like(iou))
    assert model.classif_coef is None and np.all(metaseg_scores(model, x)["metaseg_classif"] == 0.0)
    shape = fit_shape_baseline(x, iou)
    assert shape.features == "shape"
    p = shape_scores(shape, x)
    assert np.mean(p[iou < 0.1]) > np.mean(p[iou >= 0.1])
