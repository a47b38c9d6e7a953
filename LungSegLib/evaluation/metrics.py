"""Overlap, surface-distance and volume metrics for binary masks and 0/1/2 lung labelmaps.

Pure NumPy/SciPy. Arrays are ``[k, j, i]``; ``spacing_mm`` is given **per array axis** (k, j, i), i.e.
``Geometry.spacing[::-1]``. Distances are in mm, volumes in mL. Masks on oblique grids are measured
on their own (orthonormal) axes, which does not change any distance.

Conventions for empty masks (stated once here, used everywhere):

* both empty: Dice = IoU = 1, HD95 = ASSD = 0 (nothing to find, nothing missed);
* exactly one empty: Dice = IoU = 0, HD95 = ASSD = ``inf`` (no surface to measure to: the
  Hausdorff distance to an empty set is unbounded).

``valid`` arguments (boolean, broadcastable to the mask, usually a per-slice ``[k, 1, 1]`` array) mark
the voxels that count; voxels outside are ignored by overlap and volume, and surface voxels outside
are not measured from (they may still be measured *to*, as the surface itself is computed in 3-D
from the whole mask).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from ..labels import LEFT, LUNG_LABELS, RIGHT


def _valid_mask(valid: Optional[np.ndarray], shape: Tuple[int, ...]) -> Optional[np.ndarray]:
    if valid is None:
        return None
    return np.broadcast_to(np.asarray(valid, dtype=bool), shape)


def _restrict(mask: np.ndarray, valid: Optional[np.ndarray]) -> np.ndarray:
    mask = np.asarray(mask, dtype=bool)
    v = _valid_mask(valid, mask.shape)
    return mask if v is None else mask & v


def dice(pred: np.ndarray, truth: np.ndarray, valid: Optional[np.ndarray] = None) -> float:
    """Dice coefficient 2|P∩T| / (|P|+|T|), unitless in [0, 1]; 1 when both are empty."""
    p, t = _restrict(pred, valid), _restrict(truth, valid)
    return float(dice_from_counts(np.count_nonzero(p & t), np.count_nonzero(p), np.count_nonzero(t)))


def dice_from_counts(intersection, pred_count, truth_count) -> np.ndarray:
    """Dice from voxel counts |P∩T|, |P|, |T| (scalars or arrays, e.g. summed over cases); 1 where
    both masks are empty."""
    intersection, total = np.asarray(intersection), np.asarray(pred_count) + np.asarray(truth_count)
    return np.where(total > 0, 2.0 * intersection / np.maximum(total, 1), 1.0)


def iou(pred: np.ndarray, truth: np.ndarray, valid: Optional[np.ndarray] = None) -> float:
    """Intersection over union (Jaccard) |P∩T| / |P∪T|, unitless in [0, 1]; 1 when both are empty."""
    p, t = _restrict(pred, valid), _restrict(truth, valid)
    union = int(np.count_nonzero(p | t))
    if union == 0:
        return 1.0
    return int(np.count_nonzero(p & t)) / union


def volume_ml(mask: np.ndarray, spacing_mm: Sequence[float], valid: Optional[np.ndarray] = None) -> float:
    """Volume of a mask in mL (1 mL = 1000 mm³) for voxels of ``spacing_mm`` (per array axis)."""
    return int(np.count_nonzero(_restrict(mask, valid))) * float(np.prod(spacing_mm)) / 1000.0


def volume_error(pred_ml: float, truth_ml: float) -> Tuple[float, float]:
    """(pred − truth in mL, the same in % of truth). The percentage is ``nan`` when truth is 0 mL."""
    diff = float(pred_ml) - float(truth_ml)
    pct = 100.0 * diff / truth_ml if truth_ml > 0 else float("nan")
    return diff, pct


def surface(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels: the mask minus its erosion by the 6-connected cross (outside the array = 0)."""
    mask = np.asarray(mask, dtype=bool)
    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1))


def _bbox(mask: np.ndarray, margin: int = 1) -> Tuple[slice, ...]:
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        box.append(slice(max(0, int(idx[0]) - margin), min(mask.shape[axis], int(idx[-1]) + 1 + margin)))
    return tuple(box)


def surface_distances(pred: np.ndarray, truth: np.ndarray, spacing_mm: Sequence[float],
                      valid: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each surface voxel of one mask to the nearest surface voxel of the other.

    Returns ``(pred_to_truth, truth_to_pred)``: 1-D float arrays, one value per surface voxel of
    ``pred`` (resp. ``truth``) inside ``valid``. Both masks must be non-empty. The work is done on the
    bounding box of both masks (plus one voxel, so erosion sees the same neighbours): Euclidean
    distances between points inside the box do not depend on what lies outside it.
    """
    pred = np.asarray(pred, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} vs {truth.shape}")
    if not pred.any() or not truth.any():
        raise ValueError("surface distances need two non-empty masks")
    box = _bbox(pred | truth)
    sp, st = surface(pred[box]), surface(truth[box])
    v = _valid_mask(valid, pred.shape)
    if v is not None:
        v = v[box]
    sampling = tuple(float(s) for s in spacing_mm)
    to_truth = ndimage.distance_transform_edt(~st, sampling=sampling)
    to_pred = ndimage.distance_transform_edt(~sp, sampling=sampling)
    from_pred = sp if v is None else sp & v
    from_truth = st if v is None else st & v
    return to_truth[from_pred], to_pred[from_truth]


def _empty_convention(pred: np.ndarray, truth: np.ndarray,
                      valid: Optional[np.ndarray]) -> Optional[float]:
    """0 if both masks are empty, inf if one is, None if both have voxels (inside ``valid``)."""
    p_any = bool(_restrict(pred, valid).any())
    t_any = bool(_restrict(truth, valid).any())
    if not p_any and not t_any:
        return 0.0
    if not p_any or not t_any:
        return float("inf")
    return None


def hd95_and_assd(pred: np.ndarray, truth: np.ndarray, spacing_mm: Sequence[float],
                  valid: Optional[np.ndarray] = None) -> Tuple[float, float]:
    """(:func:`hd95`, :func:`assd`) in mm from one pass over the surfaces (half the work of both)."""
    special = _empty_convention(pred, truth, valid)
    if special is not None:
        return special, special
    a, b = surface_distances(pred, truth, spacing_mm, valid)
    return _hd95(a, b), _assd(a, b)


def _hd95(a: np.ndarray, b: np.ndarray) -> float:
    return float(max(np.percentile(a, 95) if a.size else 0.0, np.percentile(b, 95) if b.size else 0.0))


def _assd(a: np.ndarray, b: np.ndarray) -> float:
    n = a.size + b.size
    return float((a.sum() + b.sum()) / n) if n else 0.0


def hd95(pred: np.ndarray, truth: np.ndarray, spacing_mm: Sequence[float],
         valid: Optional[np.ndarray] = None) -> float:
    """95th-percentile symmetric Hausdorff distance in mm.

    The larger of the two directed 95th percentiles (prediction surface to truth surface and back),
    as MedPy's ``hd95`` and DeepMind's ``surface-distance`` define it. 0 when both masks are empty,
    ``inf`` when exactly one is.
    """
    special = _empty_convention(pred, truth, valid)
    if special is not None:
        return special
    return _hd95(*surface_distances(pred, truth, spacing_mm, valid))


def assd(pred: np.ndarray, truth: np.ndarray, spacing_mm: Sequence[float],
         valid: Optional[np.ndarray] = None) -> float:
    """Average symmetric surface distance in mm: the mean of both directed distance sets pooled.

    0 when both masks are empty, ``inf`` when exactly one is.
    """
    special = _empty_convention(pred, truth, valid)
    if special is not None:
        return special
    return _assd(*surface_distances(pred, truth, spacing_mm, valid))


def mean_lung_dice(pred_labels: np.ndarray, truth_labels: np.ndarray,
                   valid: Optional[np.ndarray] = None) -> float:
    """Mean Dice of the lungs (each label of :data:`LungSegLib.labels.LUNG_LABELS`), unitless."""
    return float(np.mean([dice(pred_labels == lung.value, truth_labels == lung.value, valid)
                          for lung in LUNG_LABELS]))


def swap_labels(labels: np.ndarray) -> np.ndarray:
    """A copy with the right and left lung labels exchanged."""
    out = np.array(labels, dtype=np.uint8, copy=True)
    out[labels == RIGHT] = LEFT
    out[labels == LEFT] = RIGHT
    return out


def sides_swapped(pred_labels: np.ndarray, truth_labels: np.ndarray, valid: Optional[np.ndarray] = None,
                  margin: float = 0.1) -> Tuple[bool, float, float]:
    """Whether the prediction has right and left exchanged.

    Returns ``(swapped, mean Dice as given, mean Dice with 1 and 2 exchanged)``; ``swapped`` is true
    when exchanging the labels raises the mean Dice by more than ``margin``, so a prediction that
    matches neither way (both near 0) is not called swapped.
    """
    as_is = mean_lung_dice(pred_labels, truth_labels, valid)
    exchanged = mean_lung_dice(swap_labels(pred_labels), truth_labels, valid)
    return exchanged > as_is + margin, as_is, exchanged
