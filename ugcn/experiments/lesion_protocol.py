"""The k-fold lesion-uncertainty protocol (method L, the paper's Table 2) as an experiment.

From a labelled data set folder: k folds (25 % test, the rest 80 % train / 20 % validation); per fold a 3D
U-Net trained on the train cases and T MC-dropout passes on validation and test cases (or, with
``samples_dir``, any model's 4D sample maps), lesions (:func:`ugcn.lesion.case_lesions`), the learned
methods fitted on validation lesions (:func:`ugcn.lesion.fit_lesion_methods`), test lesions scored and
evaluated. Writes the results table, per-fold counts, every test lesion's scores, per-case maps and the
curves, as CSV/JSON/Markdown/PNG/NIfTI. The conventions (mask source, undefined AUCs, folds without
validation lesions) are those of :mod:`ugcn.lesion.protocol`.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from ugcn.config import MAX_SEED, setting
from ugcn.data import find_cases, kfold_splits, load_case
from ugcn.evaluate.accuracy_confidence import AccuracyConfidence, accuracy_confidence_curve
from ugcn.evaluate.lesion_summary import summarize_lesion_rankings, unreliable_folds
from ugcn.evaluate.plots import figures_or_warn, plot_accuracy_confidence
from ugcn.graph.lesion_graph import DEFAULT_ESTIMATORS
from ugcn.io import CANONICAL, atomic_directory, canonical_affine, from_canonical, jsonable, to_canonical
from ugcn.lesion.baselines import LOGSUM_MODES
from ugcn.lesion.case_outputs import write_case_outputs
from ugcn.lesion.components import FP_EPSILON, missed_lesions
from ugcn.lesion.protocol import (
    GCNN_METHODS,
    LEARNED_METHODS,
    MASK_SOURCES,
    CaseLesions,
    case_lesions,
    fit_lesion_methods,
    merge_cases,
    method_names,
    score_lesion_methods,
)
from ugcn.refine.inputs import find_sample_file
from ugcn.segment import UNetConfig, make_volume_fn
from ugcn.segment.train import train_model
from ugcn.uncertainty.sources import from_model, from_sample_file


@dataclasses.dataclass(frozen=True)
class LesionProtocolConfig:
    """Settings of :func:`run_protocol` (defaults: the paper's protocol with a CPU-sized U-Net).

    Attributes:
      folds, val_fraction, seed: k folds, validation share of the non-test cases, seed of everything.
      estimators: voxel uncertainty maps (registry names of :mod:`ugcn.uncertainty`).
      mc_samples, mc_chunk: T MC-dropout passes, evaluated ``mc_chunk`` at a time.
      mask_from: ``"mean"`` (MC expectation) or ``"deterministic"`` (dropout off).
      unet_*: the 3D U-Net (``ugcn.segment.UNetConfig`` / ``train_model`` settings); ``unet_dropout``
        None = docs/method.md's 0.2 (tiny CPU networks need ~0.1 to train in a few hundred steps).
      unet_patch_overlap: share of an MC-dropout tile overlapped by its neighbours (0.5 costs 8 network
        passes per voxel in 3D; 0 with tiles that cover the volume exactly costs one).
      unet_inference_patch: MC-dropout tile size when it differs from the training patch (the U-Net is fully
        convolutional), each a multiple of 2**depth.
      gcnn_epochs, gcnn_batch_size: GCNN training.
      epsilon: FP threshold on ``IoU_adj``.
      logsum: ``"log_of_sum"`` or ``"sum_of_logs"`` (see :mod:`ugcn.lesion.baselines`).
      min_val_fp: a fold whose validation set holds fewer FP lesions is unreliable for the learned methods
        and left out of the evaluation (:mod:`ugcn.evaluate.lesion_summary`).
      n_bootstrap: subject-bootstrap replicates of every confidence interval.
      samples_dir: instead of training a U-Net per fold: a folder of 4D NIfTI ``(X, Y, Z, T)`` of T foreground
        probability maps per case (``<case>.nii.gz`` or ``<case>_samples.nii.gz``), from any model; the
        U-Net settings are then unused. The model must not have been trained on the cases it is evaluated on.
      write_cases: write ``cases/<case>/`` (prediction, lesion ids, uncertainty maps) for every test case.
    """

    folds: int = setting(4, min=2, help="k folds of the cross-validation")
    val_fraction: float = setting(0.2, gt=0, lt=1, help="validation share of the non-test cases")
    seed: int = setting(0, min=0, max=MAX_SEED, help="seed of the folds, U-Nets, MC dropout and GCNNs")
    estimators: tuple[str, ...] = setting(DEFAULT_ESTIMATORS, metavar="NAME")
    mc_samples: int = setting(20, min=1, metavar="T", help="T MC-dropout passes")
    mc_chunk: int = setting(4, min=1, help="MC-dropout passes computed together")
    mask_from: str = setting("mean", choices=MASK_SOURCES)
    unet_base_features: int = setting(8, min=1, help="U-Net feature maps of the first block")
    unet_depth: int = setting(2, min=1, help="U-Net down-samplings")
    unet_patch: Optional[tuple[int, int, int]] = setting(None, min=1, help="U-Net training patch, each a multiple "
                                                         "of 2**depth (none: the whole volume)")
    unet_patch_overlap: float = setting(0.5, min=0, lt=1)
    unet_inference_patch: Optional[tuple[int, int, int]] = setting(None, min=1)
    unet_epochs: int = setting(10, min=1, help="U-Net epochs (of --unet-steps-per-epoch steps) per fold")
    unet_steps_per_epoch: int = setting(20, min=1, help="U-Net Adam steps per epoch")
    unet_batch_size: int = setting(4, min=1, help="U-Net patches per step")
    unet_learning_rate: float = setting(1e-3, gt=0, help="U-Net Adam learning rate")
    unet_dropout: Optional[float] = setting(None, min=0, lt=1, help="U-Net channel-wise dropout rate, also used by "
                                            "MC dropout (none: 0.2, docs/method.md)")
    gcnn_epochs: int = setting(100, min=1, help="lesion GCNN epochs")
    gcnn_batch_size: int = setting(10, min=1, help="lesion graphs per GCNN batch")
    epsilon: float = setting(FP_EPSILON, min=0, max=1)
    logsum: str = setting("sum_of_logs", choices=LOGSUM_MODES)
    min_val_fp: int = setting(5, min=0)
    n_bootstrap: int = setting(2000, min=1)
    samples_dir: Optional[str] = None
    write_cases: bool = True

    def __post_init__(self) -> None:
        if int(self.min_val_fp) < 0:
            raise ValueError(f"min_val_fp must be >= 0, got {self.min_val_fp!r}")
        if int(self.n_bootstrap) < 1:
            raise ValueError(f"n_bootstrap must be >= 1, got {self.n_bootstrap!r}")
        if self.samples_dir is not None:
            if not Path(self.samples_dir).is_dir():
                raise ValueError(f"samples_dir {self.samples_dir}: no such folder")
            object.__setattr__(self, "samples_dir", str(self.samples_dir))
        if self.mask_from not in MASK_SOURCES:
            raise ValueError(f"mask_from must be one of {MASK_SOURCES}, got {self.mask_from!r}")
        for name in ("folds", "mc_samples", "mc_chunk", "unet_epochs", "gcnn_epochs", "gcnn_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not self.estimators:
            raise ValueError("estimators: give at least one uncertainty estimator")
        object.__setattr__(self, "estimators", tuple(self.estimators))
        for name in ("unet_patch", "unet_inference_patch"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, tuple(int(p) for p in getattr(self, name)))


def mc_uncertainty(
    model: Any,
    image: np.ndarray,
    key: Any,
    *,
    estimators: Sequence[str],
    n_samples: int = 20,
    chunk_size: int = 4,
    mask_from: str = "mean",
    volume_fn: Any = None,
    affine: Optional[np.ndarray] = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """MC dropout on one image: ``(pred_mask u8[X, Y, Z], {estimator: f32[X, Y, Z]})``.

    Args:
      model: a ``ugcn.segment.SegmentationModel``.
      image: ``f32[X, Y, Z]`` or ``f32[X, Y, Z, M]``.
      key: a ``jax.random`` key.
      volume_fn: the stochastic volume function of ``model`` (pass the same one for every image, so the
        sampler compiles once).
      affine: the image's voxel-to-world matrix: the passes then run in RAS+ order (as ``ugcn train``
        trains) and the mask and maps come back in the image's voxel order; ``None`` takes the array as it is.
    """
    if affine is not None:
        from ugcn.segment.model import check_spacing

        check_spacing(model, affine)
    sampled = from_model(model, image, list(estimators), key=key, n_samples=n_samples, chunk_size=chunk_size,
                         prediction="mean" if mask_from == "mean" else "deterministic", volume_fn=volume_fn,
                         affine=affine)
    return (sampled.prediction > 0).astype(np.uint8), sampled.maps


@dataclasses.dataclass(frozen=True)
class ProtocolResult:
    """What :func:`run_protocol` measured.

    Attributes:
      table: one dict per method (:func:`ugcn.evaluate.lesion_summary.summarize_lesion_rankings`):
        ``method``, pooled ``auc_pct`` with its subject-bootstrap interval ``auc_low_pct``/``auc_high_pct``,
        ``auc_mean_pct`` (mean over folds), ``delta_pct`` (to the best baseline) with its interval,
        ``spearman`` (against the size), ``retention_auc``, ``auc_all_folds_pct``, ``reliable``, per-fold AUCs.
      folds: one dict per fold: ``fold, dice, tp, fp`` (test lesions), ``val_tp, val_fp``, ``missed``
        (ground-truth test lesions no prediction touches), ``reliable``, train/val/test case counts.
      lesions: one dict per test lesion (fold, case, lesion, size = voxel count, iou_adj, fp, every score;
        the Size method's score is ``size_score``).
      curves: pooled accuracy-confidence curve of each method over the evaluated folds (``None`` when undefined).
      notes: remarks on unreliable folds and undefined quantities.
      seconds: wall time.
      summary: best baseline, evaluated/unreliable folds, lesion and subject counts, bootstrap settings.
    """

    table: list[dict]
    folds: list[dict]
    lesions: list[dict]
    curves: dict[str, Optional[AccuracyConfidence]]
    notes: list[str]
    seconds: float
    summary: dict = dataclasses.field(default_factory=dict)

    def markdown(self) -> str:
        """The results as Markdown: methods table, per-fold table, notes."""
        sm = self.summary
        level = int(round(100 * sm.get("bootstrap", {}).get("level", 0.95)))
        best = sm.get("best_baseline")
        lines = [
            f"Test lesions of folds {sm.get('evaluated_folds')}: {sm.get('lesions')} ({sm.get('tp')} TP, "
            f"{sm.get('fp')} FP) of {sm.get('subjects')} subjects; {level} % intervals from "
            f"{sm.get('bootstrap', {}).get('replicates')} bootstrap replicates of the subjects; best baseline: "
            f"{best}.", "",
            f"| Method | pooled AUC (%) [{level} % CI] | mean over folds (%) | Δ vs {best} [{level} % CI] | "
            "Spearman ρ (size) | retention AUC | folds |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for row in self.table:
            flag = "" if row.get("reliable", True) else " (unreliable)"
            lines.append(
                f"| {row['method']}{flag} | {_fmt(row['auc_pct'], 1)} [{_fmt(row['auc_low_pct'], 1)}, "
                f"{_fmt(row['auc_high_pct'], 1)}] | {_fmt(row['auc_mean_pct'], 1)} | {_fmt(row['delta_pct'], 1)} "
                f"[{_fmt(row['delta_low_pct'], 1)}, {_fmt(row['delta_high_pct'], 1)}] | {_fmt(row['spearman'], 2)} | "
                f"{_fmt(row['retention_auc'], 3)} | {row['folds_defined']} |"
            )
        lines += ["", "| Fold | Dice | test TP | test FP | missed | val TP | val FP | reliable |",
                  "|---|---:|---:|---:|---:|---:|---:|---|"]
        for f in self.folds:
            lines.append(f"| {f['fold']} | {_fmt(f['dice'], 3)} | {f['tp']} | {f['fp']} | {f['missed']} | "
                         f"{f['val_tp']} | {f['val_fp']} | {'yes' if f['reliable'] else 'no'} |")
        if self.notes:
            lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"


def _fmt(v: float, digits: int = 2) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _nanmean(values: Sequence[float]) -> float:
    arr = np.asarray(values, np.float64)
    return float(np.nanmean(arr)) if np.any(np.isfinite(arr)) else float("nan")


def _fit_unet(images, labels, cfg: LesionProtocolConfig, seed: int, progress: bool):
    """A fold's U-Net on RAS+-ordered ``images``/``labels`` (recorded as its orientation, as ``ugcn train`` does)."""
    channels = 1 if images[0].ndim == 3 else images[0].shape[-1]
    unet = UNetConfig(dims=3, in_channels=channels, num_classes=1, base_features=cfg.unet_base_features,
                      depth=cfg.unet_depth, patch_size=cfg.unet_patch, dropout_rate=cfg.unet_dropout,
                      patch_overlap=cfg.unet_patch_overlap)
    model, _ = train_model(images, labels, unet, epochs=cfg.unet_epochs, steps_per_epoch=cfg.unet_steps_per_epoch,
                           batch_size=cfg.unet_batch_size, learning_rate=cfg.unet_learning_rate, seed=seed,
                           progress=progress)
    model.training["orientation"] = CANONICAL
    if cfg.unet_inference_patch is not None:  # fully convolutional: infer on larger tiles than it was trained on
        model = dataclasses.replace(model, config=dataclasses.replace(model.config,
                                                                      patch_size=cfg.unet_inference_patch))
    return model


def _samples_uncertainty(samples_dir: Any, case: str, image: Any, estimators: Sequence[str]):
    sampled = from_sample_file(find_sample_file(samples_dir, case), list(estimators), reference=image,
                               keep_samples=False)
    return (sampled.prediction > 0).astype(np.uint8), sampled.maps


def run_protocol(
    data_dir: Any,
    config: LesionProtocolConfig = LesionProtocolConfig(),
    *,
    out_dir: Any = None,
    overwrite: bool = False,
    progress: bool = True,
) -> ProtocolResult:
    """The k-fold lesion-uncertainty protocol on a labelled data set folder.

    Cases are loaded one at a time when needed (nothing but their lesion graphs is kept between folds), so
    memory holds one fold's lesions and one volume's maps, not the data set.

    Args:
      data_dir: a data set folder readable by ``ugcn.data.find_cases`` (Decathlon layout, ...).
      config: :class:`LesionProtocolConfig`.
      out_dir: where to write ``results.{csv,json,md}``, ``folds.csv``, ``lesions.csv``, ``curves.png`` and
        ``cases/<case>/{prediction,lesions,<estimator>}.nii.gz`` (``None``: write nothing). Must not exist or
        be empty unless ``overwrite``; built in a temporary sibling and swapped in at the end.
      overwrite: replace an existing ``out_dir``.
      progress: progress bars.

    Returns:
      :class:`ProtocolResult`.
    """
    if out_dir is None:
        return _run_protocol(data_dir, config, None, progress)
    _check_out_dir(Path(out_dir), overwrite)
    with atomic_directory(Path(out_dir), overwrite=True) as tmp:
        result = _run_protocol(data_dir, config, tmp, progress)
        _write_results(result, tmp, config)
    return result


def _fold_lesions(cases, indices, desc: str, *, config: LesionProtocolConfig, model, volume_fn, key, progress: bool,
                  out_cases: Optional[Path]) -> tuple[list[CaseLesions], int]:
    """The lesions of ``cases[indices]`` under one fold's U-Net (or the sample maps), and the GT lesions missed;
    writes ``out_cases/<case>/`` when given. Cases are loaded one at a time."""
    found, missed = [], 0
    for i in tqdm(indices, desc=desc, disable=not progress, leave=False):
        image, label = load_case(cases[i])
        if label is None:
            raise ValueError(f"case {cases[i].name}: no label; the protocol needs a labelled data set")
        # Everything runs in RAS+ voxel order (as the U-Net was trained), so a case's lesions, their ids and
        # scores do not depend on the order its file stores the axes in; the case files go back in that order.
        affine = image.affine
        array, truth = to_canonical(image.array, affine), to_canonical(label.array, affine)
        if config.samples_dir is not None:
            pred, maps = _samples_uncertainty(config.samples_dir, cases[i].name, image, config.estimators)
            pred, maps = to_canonical(pred, affine), {k: to_canonical(v, affine) for k, v in maps.items()}
        else:
            pred, maps = mc_uncertainty(
                model, array, jax.random.fold_in(key, int(i)), estimators=config.estimators,
                n_samples=config.mc_samples, chunk_size=config.mc_chunk, mask_from=config.mask_from,
                volume_fn=volume_fn,
            )
        c = case_lesions(cases[i].name, array, pred, maps, truth, affine=canonical_affine(affine, image.array.shape),
                         estimators=config.estimators, epsilon=config.epsilon, logsum=config.logsum)
        missed += missed_lesions(pred, truth)
        if out_cases is not None:
            write_case_outputs(out_cases / cases[i].name, from_canonical(pred, affine),
                               from_canonical(c.table.labels, affine),
                               {k: from_canonical(v, affine) for k, v in maps.items()}, affine, header=image.header)
        found.append(c)
    return found, missed


def _run_protocol(data_dir: Any, config: LesionProtocolConfig, out: Optional[Path], progress: bool) -> ProtocolResult:
    start = time.time()
    cases = find_cases(data_dir)
    splits = kfold_splits(len(cases), config.folds, seed=config.seed, val_fraction=config.val_fraction)
    if config.samples_dir is not None:
        for case in cases:  # fail before the work when a file is missing
            find_sample_file(config.samples_dir, case.name)

    names = method_names(config.estimators)
    fold_rows: list[dict[str, Any]] = []
    lesion_rows: list = []
    notes: list[str] = []
    pooled_scores: dict[str, list[np.ndarray]] = {m: [] for m in names}
    pooled_fp, pooled_vox, pooled_case, pooled_fold = [], [], [], []
    for fold, split in enumerate(tqdm(splits, desc="folds", disable=not progress)):
        fold_seed = config.seed * 1000 + fold
        model = volume_fn = None
        if config.samples_dir is None:
            images, labels = [], []
            for case_index in split.train:  # in RAS+ voxel order, as ``ugcn train`` trains
                im, lb = load_case(cases[case_index])
                if lb is None:
                    raise ValueError(f"{cases[case_index].image_path}: no label; the protocol trains on labelled cases")
                images.append(to_canonical(im.array, im.affine))
                labels.append(to_canonical(lb.array, im.affine))
            model = _fit_unet(images, labels, config, fold_seed, progress)
            del images, labels
            volume_fn = make_volume_fn(model, stochastic=True)
        key = jax.random.PRNGKey(fold_seed)

        fold_source: dict[str, Any] = dict(config=config, model=model, volume_fn=volume_fn, key=key,
                                           progress=progress)
        case_dir = out / "cases" if out is not None and config.write_cases else None
        val_cases, _ = _fold_lesions(cases, split.val, f"fold {fold} val", out_cases=None, **fold_source)
        test_cases, missed = _fold_lesions(cases, split.test, f"fold {fold} test", out_cases=case_dir, **fold_source)
        val, test = merge_cases(val_cases), merge_cases(test_cases)
        n_val_fp = int(val.is_fp.sum())
        reliable = n_val_fp >= config.min_val_fp
        if not reliable:
            notes.append(f"fold {fold}: {n_val_fp} FP lesion(s) among {val.n} validation lesions "
                         f"(< {config.min_val_fp}): too few to fit the learned methods (GCNN, MetaSeg, shape); "
                         "the fold is left out of the evaluation of every method (its AUCs are still listed per fold)")
        methods = fit_lesion_methods(val, estimators=config.estimators, gcnn_epochs=config.gcnn_epochs,
                                     gcnn_batch_size=config.gcnn_batch_size, seed=fold_seed,
                                     epsilon=config.epsilon, progress=progress)
        scores = score_lesion_methods(methods, test)
        n_fp, n_tp = int(test.is_fp.sum()), int((~test.is_fp).sum())
        if n_fp == 0 or n_tp == 0:
            notes.append(f"fold {fold}: {n_tp} TP and {n_fp} FP test lesions; its AUC is undefined (NaN)")
        fold_rows.append({
            "fold": fold, "dice": _nanmean([c.dice for c in test_cases]), "tp": n_tp, "fp": n_fp, "missed": missed,
            "val_tp": int(val.n - n_val_fp), "val_fp": n_val_fp, "reliable": reliable,
            "train_cases": len(split.train), "val_cases": len(split.val), "test_cases": len(split.test),
        })
        for k in range(test.n):
            row = {"fold": fold, "case": str(test.case[k]), "lesion": int(test.lesion[k]),
                   "size": int(test.stats["voxels"][k]), "iou_adj": float(test.iou_adj[k]), "fp": bool(test.is_fp[k])}
            # The Size method's score (1/size) is its own column; ``size`` stays the voxel count.
            row.update({("size_score" if m == "size" else m): float(scores[m][k]) for m in names})
            lesion_rows.append(row)
        for m in names:
            pooled_scores[m].append(scores[m])
        pooled_fp.append(test.is_fp)
        pooled_vox.append(test.stats["voxels"])
        pooled_case.append(test.case)
        pooled_fold.append(np.full(test.n, fold))

    is_fp = np.concatenate(pooled_fp)
    fold_of = np.concatenate(pooled_fold)
    scores_all = {m: np.concatenate(v) for m, v in pooled_scores.items()}
    bad = unreliable_folds({f["fold"]: f["val_fp"] for f in fold_rows}, config.min_val_fp)
    table, summary = summarize_lesion_rankings(
        scores_all, is_fp, np.concatenate(pooled_case), fold_of, np.concatenate(pooled_vox),
        learned=LEARNED_METHODS, unreliable=bad, missed={f["fold"]: f["missed"] for f in fold_rows},
        reference_excludes=GCNN_METHODS, n_boot=config.n_bootstrap, seed=config.seed,
    )
    if bad and len(bad) == len(fold_rows):
        notes.append("no fold is reliable: every fold is evaluated and the learned methods are marked unreliable")
    keep = np.isin(fold_of, summary["evaluated_folds"])
    curves = {}
    for m in names:
        s = scores_all[m][keep]
        defined = s.size and np.all(np.isfinite(s)) and 0 < is_fp[keep].sum() < s.size
        curves[m] = accuracy_confidence_curve(s, is_fp[keep]) if defined else None
    return ProtocolResult(table, fold_rows, lesion_rows, curves, notes, time.time() - start, summary)


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise ValueError(f"{out_dir}: exists and is not empty (pass --overwrite to replace it)")


def _csv(rows: list[dict]) -> str:
    if not rows:
        return ""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[k for k in rows[0] if not isinstance(rows[0][k], list)],
                            extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _write_results(result: ProtocolResult, folder: Path, config: Optional[LesionProtocolConfig]) -> None:
    (folder / "results.csv").write_text(_csv(result.table))
    (folder / "folds.csv").write_text(_csv(result.folds))
    (folder / "lesions.csv").write_text(_csv(result.lesions))
    (folder / "results.md").write_text(result.markdown())
    payload = {"table": result.table, "folds": result.folds, "summary": result.summary, "notes": result.notes,
               "seconds": result.seconds, "config": dataclasses.asdict(config) if config is not None else None}
    (folder / "results.json").write_text(json.dumps(jsonable(payload), indent=2) + "\n")
    curves = {m: c for m, c in result.curves.items() if c is not None}
    if figures_or_warn("curves.png"):
        plot_accuracy_confidence(curves, folder / "curves.png",
                                 title="Accuracy-confidence curves (pooled test lesions of the evaluated folds)")


def write_protocol_outputs(
    result: ProtocolResult, out_dir: Path, *, config: Optional[LesionProtocolConfig] = None, overwrite: bool = False
) -> Path:
    """Write ``results.csv/json/md``, ``folds.csv``, ``lesions.csv``, ``curves.png`` into ``out_dir``.

    Everything is written into a temporary sibling folder that replaces ``out_dir`` at the end, so an
    error never leaves half the results. JSON holds ``null`` for undefined (NaN) values.
    """
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, overwrite)
    with atomic_directory(out_dir, overwrite=True) as tmp:
        _write_results(result, tmp, config)
    return out_dir
