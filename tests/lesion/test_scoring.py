"""ugcn.lesion.scoring: what a lesion model folder needs, and the lesion table's CSV (the scores themselves are
checked against scipy's components through ``ugcn lesions score`` in tests/commands/test_lesions.py)."""
import csv
import io

import numpy as np
import pytest

from ugcn.lesion.scoring import LesionScorer, ScoredCase, model_estimators


def test_model_estimators_and_channels_from_the_feature_names():
    assert model_estimators(("intensity_0", "intensity_1", "label", "entropy", "variance")) == (
        ("entropy", "variance"), 2)
    assert model_estimators(("intensity_0", "label")) == ((), 1)
    with pytest.raises(ValueError, match="lack 'label'"):
        model_estimators(("intensity_0", "entropy"))


def test_check_channels():
    scorer = LesionScorer(lesion_model=None, side={}, estimators=("entropy",), channels=2)
    scorer.check_channels("a.nii.gz", np.zeros((4, 4, 4, 2)))
    with pytest.raises(ValueError, match=r"a.nii.gz: 1 channel\(s\), the lesion model was fitted on 2"):
        scorer.check_channels("a.nii.gz", np.zeros((4, 4, 4)))


def test_csv_round_trip():
    labels = np.zeros((3, 3, 3), np.int16)
    labels[0, 0, 0], labels[2, 2, 2] = 1, 2
    rows = [{"lesion": 1, "size": 1, "gcnn_classif": 0.25}, {"lesion": 2, "size": 1, "gcnn_classif": 0.5}]
    case = ScoredCase(["lesion", "size", "gcnn_classif"], rows, np.where(labels == 1, 0.25, 0.0), labels)
    assert case.n == 2
    back = list(csv.DictReader(io.StringIO(case.csv())))
    assert [(int(r["lesion"]), float(r["gcnn_classif"])) for r in back] == [(1, 0.25), (2, 0.5)]
    assert case.csv().splitlines()[0] == "lesion,size,gcnn_classif"
