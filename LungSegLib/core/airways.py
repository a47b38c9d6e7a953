"""The central airways (trachea, carina, main bronchi) found in the CT, so they are never labelled lung.

By the LungSeg label convention (``Resources/Models/MODEL_CARD.md``) the trachea and the main bronchi
are not lung; the network, which sees one slice at a time, sometimes calls them right lung. This
module finds them from the HU alone, on the canonical stack (slices inferior -> superior, rows ->
posterior, columns -> patient left):

1. **Seed**: on the top slices of the lungs, an air column (< ``air_hu``) inside the body, between
   the two lungs, of trachea-like cross-section (``seed_area_mm2``).
2. **Tracking**: slice by slice downwards (and upwards to the lungs' top), the air components that
   overlap the airway of the slice above join it; a component much larger than the trachea is a
   leak into the lung parenchyma (whose darkest voxels are as dark as the lumen) and is refused,
   which ends that branch: the *leak guard*.
3. **Depth**: below the carina (the first slice where the airway splits) tracking stops after
   ``depth_below_carina_mm``, i.e. at about the end of the main bronchi, before the lobar bronchi
   inside the lungs.

Everything is NumPy/SciPy per slice on the lungs' box (a few ms per slice).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from ..labels import LEFT, RIGHT

_REACH = ndimage.generate_binary_structure(2, 1)  # 4-connected: how an airway links between slices


@dataclass(frozen=True)
class AirwayOptions:
    """How the central airways are found (HU = Hounsfield units, distances in mm, areas in mm²).

    Attributes:
        air_hu: voxels darker than this are airway lumen candidates (the trachea of the shared cases
            measures −940 to −1000 HU at its centre; aerated lung −700 to −870, with its darkest
            voxels below −900, hence the leak guard).
        seed_area_mm2: cross-section of an acceptable trachea seed (a 9–30 mm wide lumen).
        seed_search_mm: how far below the lungs' top slice the seed is looked for.
        max_area_factor: a tracked component larger than this times the trachea's cross-section is
            a leak into the parenchyma and is refused.
        overlap_mm: in-plane tolerance when linking a component to the airway of the next slice
            (oblique bronchi shift between thick slices).
        depth_below_carina_mm: how far below the carina the main bronchi are followed.
        min_area_mm2: smaller air specks are noise in the parenchyma next to a bronchus, not lumen.
    """

    air_hu: float = -900.0
    seed_area_mm2: Tuple[float, float] = (60.0, 700.0)
    seed_search_mm: float = 40.0
    max_area_factor: float = 2.5
    overlap_mm: float = 3.0
    depth_below_carina_mm: float = 30.0
    min_area_mm2: float = 10.0


@dataclass
class AirwayResult:
    """The central airway mask (canonical, same shape as the CT) and where it was found."""

    mask: np.ndarray
    seed_slice: Optional[int] = None
    carina_slice: Optional[int] = None
    trachea_area_mm2: float = 0.0

    @property
    def found(self) -> bool:
        return self.seed_slice is not None


def _components(mask2d: np.ndarray) -> Tuple[np.ndarray, int]:
    return ndimage.label(mask2d)


def _outside_air(air2d: np.ndarray) -> np.ndarray:
    """The air components of a slice that reach the slice's edge (air around the patient)."""
    lab, n = ndimage.label(air2d)
    if n == 0:
        return np.zeros_like(air2d)
    edge = np.zeros(n + 1, bool)
    for side in (lab[0], lab[-1], lab[:, 0], lab[:, -1]):
        edge[side] = True
    edge[0] = False
    return edge[lab]


def _lung_slices(lungs: np.ndarray) -> np.ndarray:
    """Slices holding a real part of the lungs (at least 2 % of the largest lung slice): stray
    islands above the apex, not yet cleaned up, must not decide where the top of the lungs is."""
    area = np.count_nonzero(lungs.reshape(lungs.shape[0], -1), axis=1)
    return np.flatnonzero(area >= 0.02 * area.max()) if area.max() else np.flatnonzero(area)


def find_seed(ct: np.ndarray, lungs: np.ndarray, spacing: Sequence[float],
              options: AirwayOptions = AirwayOptions()) -> Optional[Tuple[int, np.ndarray, float]]:
    """(slice, 2-D seed mask, area in mm²) of the trachea on the lungs' top slices, or None.

    ``lungs`` is the lung labelmap (0/1/2) on the same canonical grid as ``ct``.
    """
    zs = _lung_slices(lungs)
    if zs.size == 0:
        return None
    pixel_mm2 = float(spacing[1] * spacing[2])
    cols = np.arange(lungs.shape[2])
    right_cols = (lungs == RIGHT).sum(axis=(0, 1))
    left_cols = (lungs == LEFT).sum(axis=(0, 1))
    if right_cols.sum() == 0 or left_cols.sum() == 0:
        return None
    c_right = float((right_cols * cols).sum() / right_cols.sum())
    c_left = float((left_cols * cols).sum() / left_cols.sum())
    mid, half = (c_right + c_left) / 2, abs(c_left - c_right) / 2
    rows_with_lung = np.flatnonzero(lungs.any(axis=(0, 2)))
    row_lo, row_hi = rows_with_lung[0], rows_with_lung[-1]
    n_search = max(1, int(round(options.seed_search_mm / spacing[0])))
    lo_area, hi_area = options.seed_area_mm2
    for z in range(zs[-1], max(zs[0], zs[-1] - n_search) - 1, -1):
        air = ct[z] < options.air_hu
        inner = air & ~_outside_air(air)
        lab, n = _components(inner)
        if n == 0:
            continue
        best, best_area = 0, 0.0
        for i, obj in enumerate(ndimage.find_objects(lab), start=1):
            part = lab[obj] == i
            area = part.sum() * pixel_mm2
            if not lo_area <= area <= hi_area:
                continue
            r, c = ndimage.center_of_mass(part)
            r, c = r + obj[0].start, c + obj[1].start
            # between the lungs (medial half of the gap between their centroids), within their rows,
            # and compact (a round/oval tube, not a crescent of lung)
            fill = part.sum() / part.size
            if abs(c - mid) > 0.5 * half or not row_lo <= r <= row_hi or fill < 0.4:
                continue
            # on the lungs' top slices the trachea lies outside the lung labels: a dark patch that is
            # mostly labelled lung is emphysema (e.g. a scan that starts below the carina)
            if np.count_nonzero(lungs[z][obj][part]) > 0.5 * part.sum():
                continue
            if area > best_area:
                best, best_area = i, area
        if best:
            return z, lab == best, best_area
    return None


@dataclass(frozen=True)
class _SliceStep:
    """How one slice's airway is found from the airway of the slice before (sizes in pixels)."""

    air_hu: float
    radius: int      # in-plane link tolerance
    margin: int      # half-width of the search window around the previous airway
    min_px: float
    max_px: float


def _next_airway(prev: np.ndarray, ct_slice: np.ndarray, step: _SliceStep) -> Tuple[np.ndarray, np.ndarray]:
    """The airway of ``ct_slice`` (HU) linked to ``prev`` (the airway of the neighbouring slice), and the
    pixel sizes of its components; empty where the airway ends or leaks into the parenchyma."""
    cur = np.zeros_like(prev)
    rows, cols = np.nonzero(prev)
    win = (slice(max(0, rows.min() - step.margin), rows.max() + step.margin + 1),
           slice(max(0, cols.min() - step.margin), cols.max() + step.margin + 1))
    near = ndimage.binary_dilation(prev[win], structure=_REACH, iterations=step.radius)
    lab, n = _components(ct_slice[win] < step.air_hu)
    ids = np.unique(lab[near & (lab > 0)]) if n else np.zeros(0, int)
    if ids.size == 0:
        return cur, ids
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    edge = np.zeros(n + 1, bool)
    for side in (lab[0], lab[-1], lab[:, 0], lab[:, -1]):
        edge[side] = True
    # larger ones, or ones running out of the window, are leaks into the parenchyma
    keep = ids[(sizes[ids] <= step.max_px) & (sizes[ids] >= step.min_px) & ~edge[ids]]
    if keep.size:
        cur[win] = np.isin(lab, keep)
    return cur, sizes[keep]


def find_central_airways(ct: np.ndarray, lungs: np.ndarray, spacing: Sequence[float],
                         options: AirwayOptions = AirwayOptions()) -> AirwayResult:
    """The trachea and main bronchi as a boolean mask on the canonical grid of ``ct`` (HU).

    Args:
        ct: canonical CT in HU ``[slice, row, column]``; never modified.
        lungs: lung labels (0/1/2) on the same grid (used to find the seed and the slice range).
        spacing: (slice, row, column) spacing in mm.
    """
    mask = np.zeros(ct.shape, dtype=bool)
    seed = find_seed(ct, lungs, spacing, options)
    if seed is None:
        return AirwayResult(mask)
    z_seed, seed_mask, area = seed
    pixel_mm2 = float(spacing[1] * spacing[2])
    # an adult trachea is at least ~150 mm² in cross-section: a small seed (a narrow slice of it)
    # must not make the guard refuse the trachea below
    max_px = options.max_area_factor * max(area, 150.0) / pixel_mm2
    radius = max(1, int(round(options.overlap_mm / min(spacing[1], spacing[2]))))
    # each slice is searched in a window around the airway above: a component reaching the window's
    # edge is wider than any accepted airway, i.e. a leak (and this keeps each slice to ~1 ms)
    step = _SliceStep(options.air_hu, radius, radius + int(np.ceil(2.0 * np.sqrt(max_px))),
                      options.min_area_mm2 / pixel_mm2, max_px)
    zs = _lung_slices(lungs)
    mask[z_seed] = seed_mask
    depth = max(1, int(round(options.depth_below_carina_mm / spacing[0])))

    def track(direction: int, stop: int, watch_carina: bool) -> Optional[int]:
        carina, z = None, z_seed + direction
        while (z >= stop if direction < 0 else z <= stop) and mask[z - direction].any():
            if carina is not None and abs(z - carina) > depth:
                break
            mask[z], sizes = _next_airway(mask[z - direction], ct[z], step)
            # two sizeable branches side by side: the carina
            if watch_carina and carina is None and (sizes * pixel_mm2 >= 20.0).sum() >= 2:
                carina = z
            z += direction
        return carina

    carina = track(-1, int(zs[0]), True)
    track(+1, int(zs[-1]), False)
    return AirwayResult(mask, z_seed, carina, float(area))
