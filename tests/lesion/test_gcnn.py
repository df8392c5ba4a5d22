"""The lesion GCNN learns a synthetic rule (FP iff the lesion's entropy is high); checkpoints round-trip."""
import numpy as np
import pytest

from ugcn.evaluate.accuracy_confidence import accuracy_confidence_auc, spearman
from ugcn.lesion.gcnn import fit_gcnn, load_lesion_model, save_lesion_model, score_lesions


@pytest.fixture(scope="module")
def data(lesion_rule_data):
    return lesion_rule_data(0), lesion_rule_data(1)


def test_classification_learns_rule_and_roundtrips(data, tmp_path):
    (train, y_train), (test, y_test) = data
    model = fit_gcnn(train, y_train, task="classification", epochs=8, seed=0)
    assert model.history[-1] < model.history[0]
    scores = score_lesions(model, test)
    assert scores.shape == (test.num_graphs,) and np.all((scores >= 0) & (scores <= 1))
    assert accuracy_confidence_auc(scores, y_test < 0.1) > 0.9
    # Seeded: the same seed gives the same model.
    again = fit_gcnn(train, y_train, task="classification", epochs=8, seed=0)
    np.testing.assert_allclose(score_lesions(again, test), scores, rtol=1e-5, atol=1e-6)
    save_lesion_model(model, tmp_path / "m")
    with pytest.raises(ValueError, match="overwrite"):
        save_lesion_model(model, tmp_path / "m")
    loaded = load_lesion_model(tmp_path / "m")
    np.testing.assert_allclose(score_lesions(loaded, test), scores, rtol=1e-6, atol=1e-7)
    assert loaded.config == model.config


def test_regression_tracks_iou(data):
    (train, y_train), (test, y_test) = data
    model = fit_gcnn(train, y_train, task="regression", epochs=8, seed=1)
    scores = score_lesions(model, test)
    assert spearman(scores, 1 - y_test) > 0.8


def test_fit_rejects_bad_input(data):
    (train, y_train), _ = data
    with pytest.raises(ValueError, match="task"):
        fit_gcnn(train, y_train, task="ranking")
    with pytest.raises(ValueError, match="targets"):
        fit_gcnn(train, y_train[:-1])
    with pytest.raises(ValueError, match="no lesions"):
        fit_gcnn(train.select([]), y_train[:0])
