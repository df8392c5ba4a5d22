"""Method L on lesion data (ugcn.lesion.protocol): edge cases (no lesion, one-voxel and border lesions, no FP)."""
import math

import numpy as np
import pytest

from ugcn.lesion.protocol import (
    case_lesions,
    evaluate_lesion_scores,
    fit_lesion_methods,
    merge_cases,
    method_names,
    score_lesion_methods,
)

NAMES = ("entropy", "variance", "one_minus_pcs")
SHAPE = (16, 16, 12)


def _maps(rng, shape=SHAPE):
    return {n: rng.random(shape).astype(np.float32) for n in NAMES}


def test_case_without_predicted_lesion_gives_no_rows():
    rng = np.random.default_rng(0)
    gt = np.zeros(SHAPE, np.uint8)
    gt[3:5, 3:5, 3:5] = 1
    c = case_lesions("empty", rng.random(SHAPE), np.zeros(SHAPE), _maps(rng), gt)
    assert c.table.n == 0 and c.graphs.num_graphs == 0 and c.dice == 0.0
    lesions = merge_cases([c])
    assert lesions.n == 0
    methods = fit_lesion_methods(lesions, gcnn_epochs=1)
    assert methods.gcnn_classif is None
    scores = score_lesion_methods(methods, lesions)
    assert list(scores) == method_names(NAMES) and all(v.shape == (0,) for v in scores.values())
    metrics = evaluate_lesion_scores(scores, lesions.is_fp, lesions.stats["voxels"])
    assert all(math.isnan(m["auc"]) for m in metrics.values())


def test_one_voxel_and_border_lesions_and_all_tp_fold():
    rng = np.random.default_rng(1)
    pred = np.zeros(SHAPE, np.uint8)
    pred[0, 0, 0] = 1  # one voxel at the corner
    pred[15, 5:8, 11] = 1  # on the border
    pred[7:9, 7:9, 5:7] = 1
    c = case_lesions("a", rng.random(SHAPE), pred, _maps(rng), pred.copy())
    assert c.table.n == 3 and not c.table.is_fp.any() and c.dice == 1.0
    lesions = merge_cases([c, c])
    assert list(lesions.lesion) == [1, 2, 3, 1, 2, 3]
    methods = fit_lesion_methods(lesions, gcnn_epochs=2)  # all TP: trains, MetaSeg falls back
    scores = score_lesion_methods(methods, lesions)
    assert all(np.all(np.isfinite(v)) for v in scores.values())
    metrics = evaluate_lesion_scores(scores, lesions.is_fp, lesions.stats["voxels"])
    assert all(math.isnan(m["auc"]) for m in metrics.values())  # no FP: undefined
    assert metrics["size"]["spearman"] == pytest.approx(-1.0)
