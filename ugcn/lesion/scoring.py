"""Scoring the lesions of new images with a fitted lesion model folder (written by ``ugcn lesions fit``).

:class:`LesionScorer` holds the lesion GCNN, the MetaSeg and shape baselines saved beside it and the
estimators it was fitted with; :meth:`LesionScorer.score` gives one case's lesion table with every score
(the GCNN, the mean/logsum aggregation of each estimator, ``size_score`` = 1/size, MetaSeg and shape) and
:meth:`LesionScorer.write` writes it as the files of :data:`SCORE_FILES` (``ugcn lesions score``, one folder
per image).
"""
from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

#: The files of one scored image: the lesion table, each lesion's GCNN score on its voxels, the lesion ids
#: (k = row ``lesion == k`` of the table, as the lesion protocol's ``cases/<case>/lesions.nii.gz``) and the
#: predicted mask.
SCORE_FILES = {"table": "lesions.csv", "uncertainty": "lesion_uncertainty.nii.gz", "lesions": "lesions.nii.gz",
               "prediction": "prediction.nii.gz"}
SCORE_BATCH = 64  # lesion graphs per GCNN call


def model_estimators(feature_names: Sequence[str]) -> tuple[tuple[str, ...], int]:
    """``(estimators, image channels)`` of a lesion model from its node feature names
    (``intensity_0 .. intensity_{M-1}, label, <estimator>...``).

    Raises:
      ValueError: no ``label`` feature (not a model of ``ugcn lesions fit``).
    """
    names = list(feature_names)
    if "label" not in names:
        raise ValueError("the lesion model's feature names lack 'label'; was it made by ugcn lesions fit?")
    at = names.index("label")
    return tuple(names[at + 1 :]), at


@dataclasses.dataclass(frozen=True)
class ScoredCase:
    """One case's scored lesions.

    Attributes:
      columns: the table's columns, in order.
      rows: one dict per lesion (``lesion`` = its id in ``labels``).
      uncertainty: ``f32[X, Y, Z]``: each lesion's GCNN score on its voxels, 0 elsewhere.
      labels: ``int[X, Y, Z]`` lesion ids ``0..n``.
    """

    columns: list[str]
    rows: list[dict]
    uncertainty: np.ndarray
    labels: np.ndarray

    @property
    def n(self) -> int:
        """The number of lesions."""
        return len(self.rows)

    def csv(self) -> str:
        """The table as CSV text (header row first)."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        return buf.getvalue()


@dataclasses.dataclass(frozen=True)
class LesionScorer:
    """A fitted lesion model folder, ready to score cases.

    Attributes:
      lesion_model: the :class:`~ugcn.lesion.gcnn.LesionModel`.
      side: the side learners saved with it (``{"metaseg": ..., "shape": ...}``, either may be missing).
      estimators: the uncertainty maps it needs, in order.
      channels: the image channels it was fitted on.
    """

    lesion_model: Any
    side: dict
    estimators: tuple[str, ...]
    channels: int

    @classmethod
    def load(cls, folder: Any) -> LesionScorer:
        """Read a lesion model folder (:func:`~ugcn.lesion.gcnn.load_lesion_model` and its side learners)."""
        from ugcn.lesion.baselines import load_side_learners
        from ugcn.lesion.gcnn import load_lesion_model

        lesion_model = load_lesion_model(folder)
        estimators, channels = model_estimators(lesion_model.config.feature_names)
        return cls(lesion_model, load_side_learners(folder) or {}, estimators, channels)

    def check_channels(self, path: Any, image: np.ndarray) -> None:
        """Raise ``ValueError`` unless ``image`` (``[X, Y, Z]`` or ``[X, Y, Z, M]``) has the model's channels."""
        got = 1 if np.ndim(image) == 3 else np.shape(image)[-1]
        if got != self.channels:
            raise ValueError(f"{path}: {got} channel(s), the lesion model was fitted on {self.channels}")

    def score(self, name: str, image: np.ndarray, pred: np.ndarray, maps: dict, *,
              affine: Optional[np.ndarray] = None, devices: Any = None) -> ScoredCase:
        """The lesions of one case (26-connected components of ``pred``) and every score of each.

        Args:
          name: the case's name.
          image: ``f32[X, Y, Z(, M)]``; pred: ``[X, Y, Z]`` predicted mask; maps: ``{estimator: f32[X, Y, Z]}``
            holding at least :attr:`estimators`.
          affine: the image's affine (centroids in mm); devices: the GCNN's lesion batches spread over them.
        """
        from ugcn.lesion.baselines import metaseg_features, metaseg_scores, shape_features, shape_scores
        from ugcn.lesion.gcnn import score_lesions
        from ugcn.lesion.protocol import case_lesions

        estimators, side = self.estimators, self.side
        case = case_lesions(name, image, pred, maps, affine=affine, estimators=estimators)
        gcnn = score_lesions(self.lesion_model, case.graphs, batch_size=SCORE_BATCH, devices=devices)
        column = "gcnn_classif" if self.lesion_model.config.task == "classification" else "gcnn_reg"
        rows = case.table.rows()
        for k, row in enumerate(rows):
            row[column] = float(gcnn[k])
            for e in estimators:
                row[f"{e}_mean"] = float(case.stats[f"{e}_mean"][k])
                row[f"{e}_logsum"] = float(case.stats[f"{e}_logsum"][k])
            row["size_score"] = float(case.stats["size"][k])
        extra: dict[str, np.ndarray] = {}
        if "metaseg" in side:
            extra.update(metaseg_scores(side["metaseg"], metaseg_features(case.stats, side["metaseg"].estimators)))
        if "shape" in side:
            extra["shape_logreg"] = shape_scores(side["shape"], shape_features(case.stats))
        for k, row in enumerate(rows):
            row.update({col: float(v[k]) for col, v in extra.items()})
        columns = (["lesion", "size"] + [f"centroid_{a}" for a in "xyz"] + [f"centroid_{a}_mm" for a in "xyz"]
                   + [column] + [f"{e}_{agg}" for e in estimators for agg in ("mean", "logsum")] + ["size_score"]
                   + list(extra))
        # Lesion k's voxels hold its score; background 0 (a lookup table indexed by the label map).
        uncertainty = np.concatenate([[0.0], gcnn]).astype(np.float32)[case.table.labels]
        return ScoredCase(columns, rows, uncertainty, case.table.labels)

    def write(self, folder: Path, volume: Any, pred: np.ndarray, maps: dict, name: str, *,
              devices: Any = None) -> dict:
        """:meth:`score` a case and write :data:`SCORE_FILES` into ``folder`` (an existing folder).

        Args:
          volume: the image :class:`~ugcn.io.Volume` (its affine and header go to every file).

        Returns:
          ``{"lesions": n, "files": [file names]}`` for the case's report.
        """
        from ugcn.io import save_volume

        scored = self.score(name, volume.array, pred, maps, affine=volume.affine, devices=devices)
        folder = Path(folder)
        (folder / SCORE_FILES["table"]).write_text(scored.csv())
        for key, array in (("uncertainty", scored.uncertainty), ("lesions", scored.labels.astype(np.int16)),
                           ("prediction", (np.asarray(pred) != 0).astype(np.uint8))):
            save_volume(folder / SCORE_FILES[key], array, volume.affine, header=volume.header)
        return {"lesions": scored.n, "files": list(SCORE_FILES.values())}
