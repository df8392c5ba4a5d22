"""Lesion baselines and MetaSeg (ugcn.lesion.baselines) against direct numpy aggregations and a learnable rule."""
import numpy as np
import pytest

from ugcn.lesion.baselines import fit_metaseg, lesion_statistics, metaseg_features, metaseg_scores
from ugcn.lesion.components import label_lesions


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
