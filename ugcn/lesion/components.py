"""Lesions as connected components, and their MetaSeg target (method L, steps 1-2).

A lesion is a 26-connected component of the predicted mask. Its regression target is MetaSeg's adjusted
IoU (Rottmann et al. 2018): with ``K'`` the union of the ground-truth components that intersect lesion ``k``
and ``Q`` the predicted foreground outside ``k``::

    IoU_adj(k) = |k ∩ K'| / |k ∪ (K' \\ Q)|        (0 when no ground-truth component intersects k)

Ground-truth voxels inside another predicted lesion are not counted against ``k`` (that is what ``Q`` is
for): a ground-truth lesion split into two predictions gives each of them a high score. A lesion is a
false positive (FP) when ``IoU_adj < epsilon`` (0.1), a true positive (TP) otherwise.

Everything is computed for all lesions at once from one sparse contingency table of
(predicted component, ground-truth component) voxel counts; no loop rescans the volume per lesion.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
from scipy import ndimage

#: ``IoU_adj < FP_EPSILON`` marks a false-positive lesion.
FP_EPSILON = 0.1

_STRUCTURE_26 = np.ones((3, 3, 3), dtype=bool)


def _as_mask(mask: np.ndarray, name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"{name}: expected a 3D mask [X, Y, Z], got shape {mask.shape}")
    if np.issubdtype(mask.dtype, np.floating) and not np.all(np.isfinite(mask)):
        raise ValueError(f"{name}: holds NaN or infinite values")
    return mask != 0


def label_lesions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """26-connected components of a binary mask.

    Args:
      mask: ``[X, Y, Z]``, non-zero = foreground.

    Returns:
      ``(labels i32[X, Y, Z], n)``: background 0, lesions ``1..n`` (scipy's raster order).
    """
    labels, n = ndimage.label(_as_mask(mask, "mask"), structure=_STRUCTURE_26)
    return labels.astype(np.int32, copy=False), int(n)


def lesion_sizes(labels: np.ndarray, n: int) -> np.ndarray:
    """Voxel count of each lesion: ``i64[n]`` for ``labels: int[X, Y, Z]`` holding ``0..n``."""
    return np.bincount(np.asarray(labels).ravel(), minlength=n + 1)[1:].astype(np.int64)


def adjusted_iou(pred_labels: np.ndarray, n_pred: int, gt_mask: np.ndarray) -> np.ndarray:
    """MetaSeg's adjusted IoU of every predicted lesion.

    Args:
      pred_labels: ``int[X, Y, Z]`` predicted lesions ``1..n_pred`` (0 = background), e.g. from
        :func:`label_lesions`.
      n_pred: number of predicted lesions.
      gt_mask: ``[X, Y, Z]`` ground-truth mask (non-zero = lesion); its 26-connected components are the
        ground-truth lesions.

    Returns:
      ``f32[n_pred]`` in ``[0, 1]``.
    """
    pred_labels = np.asarray(pred_labels)
    gt = _as_mask(gt_mask, "gt_mask")
    if pred_labels.shape != gt.shape:
        raise ValueError(f"adjusted_iou: prediction shape {pred_labels.shape} != ground truth {gt.shape}")
    if n_pred == 0:
        return np.zeros(0, np.float32)
    gt_labels, n_gt = label_lesions(gt)
    pred_flat = pred_labels.ravel().astype(np.int64)
    gt_flat = gt_labels.ravel().astype(np.int64)
    sizes = np.bincount(pred_flat, minlength=n_pred + 1)[1:]
    if n_gt == 0:
        return np.zeros(n_pred, np.float32)
    # Contingency of (pred component, gt component) over voxels in both (row/col 0 = background).
    both = (pred_flat > 0) & (gt_flat > 0)
    pair = pred_flat[both] * (n_gt + 1) + gt_flat[both]
    pair_ids, pair_counts = np.unique(pair, return_counts=True)
    rows = pair_ids // (n_gt + 1)
    cols = pair_ids % (n_gt + 1)
    # |k ∩ K'| = |k ∩ GT|: every GT voxel inside k belongs to a component that intersects k.
    intersection = np.bincount(rows, weights=pair_counts, minlength=n_pred + 1)[1:]
    # K' \ Q \ k = voxels of the intersecting GT components outside every predicted lesion.
    gt_outside_pred = np.bincount(gt_flat[(pred_flat == 0) & (gt_flat > 0)], minlength=n_gt + 1)
    added = np.bincount(rows, weights=gt_outside_pred[cols], minlength=n_pred + 1)[1:]
    union = sizes + added
    iou = np.where(union > 0, intersection / np.maximum(union, 1), 0.0)
    return iou.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class LesionTable:
    """Per-lesion facts of one volume (all arrays have length ``n``).

    Attributes:
      labels: ``i32[X, Y, Z]`` lesion ids ``1..n`` (0 = background).
      n: number of lesions.
      size: ``i64[n]`` voxel count S.
      centroid_voxel: ``f64[n, 3]`` mean voxel index.
      centroid_mm: ``f64[n, 3]`` the same through the affine (scanner mm).
      iou_adj: ``f32[n]`` adjusted IoU, or ``None`` without ground truth.
      is_fp: ``bool[n]`` ``iou_adj < epsilon``, or ``None`` without ground truth.
    """

    labels: np.ndarray
    n: int
    size: np.ndarray
    centroid_voxel: np.ndarray
    centroid_mm: np.ndarray
    iou_adj: Optional[np.ndarray] = None
    is_fp: Optional[np.ndarray] = None

    def rows(self) -> list[dict]:
        """One dict per lesion (id, size, centroids, and iou_adj / fp when known), for CSV/JSON."""
        out = []
        for i in range(self.n):
            row = {
                "lesion": i + 1,
                "size": int(self.size[i]),
                **{f"centroid_{a}": float(self.centroid_voxel[i, j]) for j, a in enumerate("xyz")},
                **{f"centroid_{a}_mm": float(self.centroid_mm[i, j]) for j, a in enumerate("xyz")},
            }
            if self.iou_adj is not None and self.is_fp is not None:
                row["iou_adj"] = float(self.iou_adj[i])
                row["fp"] = bool(self.is_fp[i])
            out.append(row)
        return out


def lesion_table(
    pred_mask: np.ndarray,
    gt_mask: Optional[np.ndarray] = None,
    *,
    affine: Optional[np.ndarray] = None,
    epsilon: float = FP_EPSILON,
) -> LesionTable:
    """Label the predicted lesions and measure them.

    Args:
      pred_mask: ``[X, Y, Z]`` predicted mask (non-zero = lesion).
      gt_mask: ``[X, Y, Z]`` ground truth, optional; gives ``iou_adj`` and ``is_fp``.
      affine: ``f64[4, 4]`` voxel-to-mm matrix (identity when ``None``).
      epsilon: FP threshold on ``IoU_adj`` (default 0.1).

    Returns:
      :class:`LesionTable` (``n = 0`` and empty arrays when nothing is predicted).
    """
    labels, n = label_lesions(pred_mask)
    size = lesion_sizes(labels, n)
    flat = labels.ravel()
    fg = np.flatnonzero(flat)
    coords = np.stack(np.unravel_index(fg, labels.shape), axis=1).astype(np.float64)
    sums = np.stack([np.bincount(flat[fg], weights=coords[:, a], minlength=n + 1)[1:] for a in range(3)], 1)
    centroid = sums / np.maximum(size, 1)[:, None] if n else np.zeros((0, 3))
    affine = np.eye(4) if affine is None else np.asarray(affine, np.float64)
    centroid_mm = centroid @ affine[:3, :3].T + affine[:3, 3]
    iou = is_fp = None
    if gt_mask is not None:
        iou = adjusted_iou(labels, n, gt_mask)
        is_fp = iou < epsilon
    return LesionTable(labels, n, size, centroid.reshape(n, 3), centroid_mm.reshape(n, 3), iou, is_fp)


def missed_lesions(pred_mask: np.ndarray, gt_mask: np.ndarray) -> int:
    """Ground-truth lesions (26-connected components) that no predicted voxel touches: the lesion-scale FN.

    Args:
      pred_mask, gt_mask: ``[X, Y, Z]`` masks (non-zero = lesion).
    """
    pred = _as_mask(pred_mask, "pred_mask")
    gt_labels, n_gt = label_lesions(gt_mask)
    if pred.shape != gt_labels.shape:
        raise ValueError(f"missed_lesions: prediction shape {pred.shape} != ground truth {gt_labels.shape}")
    hit = np.bincount(gt_labels[pred].ravel(), minlength=n_gt + 1)[1:]
    return int(np.sum(hit == 0))
