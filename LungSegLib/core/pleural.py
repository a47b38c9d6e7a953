"""Dense lesions against the rib cage that the network cut out of the lung, put back.

A consolidation, atelectasis or tumour that reaches the costal pleura has the density of the chest wall
next to it, and a 2-D network often takes it for chest wall: the lung comes out with a bite taken out of
its outer side (the 16-epoch recipe kept 6-13 % of a painted 25 mm pleural consolidation,
``benchmarks/results/robustness*.md``). The label convention keeps such lesions in the lung.

The lung's outer surface against the ribs is convex, so a bite there is a concavity of the lung that
opens onto the rib cage. Per axial slice and lung this step takes the lung's convex hull and adds the
part of it that is not lung when all of these hold (each keeps something else out):

* it lies lateral to the lung's centre on that slice — not the heart, hilum or mediastinum, which the
  lung wraps around on its medial side;
* the mouth of the concavity faces the ribs: the median distance from the region's outer rim (the
  non-lung pixels around it) to bone (>= :data:`BONE_HU`) is at most :data:`BONE_MM` — not the heart in
  the left lung's cardiac notch, whose rim is mediastinum;
* there is lung within :data:`COVER_MM` above and below it — not the liver under a raised diaphragm
  dome, nor fluid layering at the lung base;
* its voxels are not fat (−150..−50 HU): fat against the pleura is never lung.

Free pleural fluid layers in the dependent part of the chest and leaves the lung convex, so it is not
touched. A loculated effusion or pleural mass against the ribs cannot be told from pleural-based
consolidation this way and is taken as lung (a known limit, in the model card).

Works on an in-plane grid of about :data:`STEP_MM` (the hull and the tests), then adds the full-resolution
voxels inside the hull; a few milliseconds per slice that has a concavity.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull

from ..labels import LEFT, RIGHT

#: In-plane working grid (mm) for the hull and the tests.
STEP_MM = 3.0
#: Lung must lie within this distance (mm) above and below a voxel in the same column.
COVER_MM = 60.0
#: The concavity's outer rim lies at most this far (mm, median) from bone.
BONE_MM = 15.0
#: Bone (HU): ribs, spine, sternum.
BONE_HU = 250.0
#: Fat (HU): never added.
FAT_HU: Tuple[float, float] = (-150.0, -50.0)
#: Concavities smaller than this in a slice (mm²) are the lung's ordinary irregular edge, not a lesion: they
#: are not examined (on a network's labels most candidates are such, and the tests cost time).
MIN_AREA_MM2 = 100.0


def _hull_inside(points: np.ndarray, scale: float, box: Tuple[slice, slice]) -> np.ndarray:
    """Pixels of ``box`` inside the convex hull of ``points`` (working-grid row/column) scaled by ``scale``:
    ``box`` is on the working grid for ``scale`` 1 and at full resolution for ``scale`` = the working step
    (half a working pixel of slack either way); all False when there is no hull."""
    rows = np.arange(box[0].start, box[0].stop, dtype=float)
    cols = np.arange(box[1].start, box[1].stop, dtype=float)
    try:
        hull = ConvexHull(points * scale)
    except (RuntimeError, ValueError):  # QhullError is a RuntimeError: too few points, or all on a line
        return np.zeros((rows.size, cols.size), dtype=bool)
    # a convex polygon is one run of columns per row: intersect each facet's half-plane
    # a*row + b*col + c <= slack, row by row
    a, b, c = (hull.equations[:, k][None, :] for k in range(3))
    rhs = 0.5 * scale - c - a * rows[:, None]  # b * col <= rhs
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = rhs / b
    first = np.where(b < 0, bound, -np.inf).max(axis=1)
    last = np.where(b > 0, bound, np.inf).min(axis=1)
    flat = np.where(b == 0, rhs >= 0, True).all(axis=1)  # facets along a row: the row is in or out
    return (cols[None, :] >= first[:, None]) & (cols[None, :] <= last[:, None]) & flat[:, None]


def fill_pleural_lesions(labels: np.ndarray, ct: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Add the lesions described in the module docstring to ``labels`` in place; returns the voxels added.

    ``labels`` and ``ct`` (HU) are canonical (``[slice, row, column]``, columns towards patient left, so
    the right lung's lateral side has the smaller columns); ``spacing`` is (slice, row, column) mm.
    """
    added = np.zeros(labels.shape, dtype=bool)
    sz, sy, sx = (float(s) for s in spacing)
    step = max(1, int(round(STEP_MM / min(sy, sx))))
    small = labels[:, ::step, ::step]
    ct_small = ct[:, ::step, ::step]
    cover = max(1, int(round(COVER_MM / sz)))
    cell_mm2 = step * sy * step * sx
    n = labels.shape[0]
    reach = int(np.ceil(BONE_MM / (step * min(sy, sx)))) + 1
    for value in (RIGHT, LEFT):
        lung = small == value
        present = lung.any(axis=(1, 2))
        if not present.any():
            continue
        # lung voxels per column up to and including each slice: "lung within `cover` slices above/below"
        # (on the lung's in-plane box only)
        rows_in = np.flatnonzero(lung.any(axis=(0, 2)))
        cols_in = np.flatnonzero(lung.any(axis=(0, 1)))
        r_lo, c_lo = int(rows_in[0]), int(cols_in[0])
        upto = np.cumsum(lung[:, r_lo:rows_in[-1] + 1, c_lo:cols_in[-1] + 1], axis=0, dtype=np.int32)
        for z in np.flatnonzero(present):
            m = lung[z]
            pts = np.argwhere(m)
            if len(pts) < 3:
                continue
            centre = pts[:, 1].mean()
            # the hull lies within the lung's bounding box: work there; only edge pixels shape the hull
            (r0, c0), (r1, c1) = pts.min(axis=0), pts.max(axis=0) + 1
            bb = (slice(r0, r1), slice(c0, c1))
            pts = np.argwhere(m[bb] & ~ndimage.binary_erosion(m[bb])) + (r0, c0)
            hull = _hull_inside(pts.astype(float), 1.0, bb)
            candidate = np.zeros(m.shape, dtype=bool)
            candidate[bb] = hull & (small[z][bb] == 0)
            if value == RIGHT:
                candidate[:, int(np.ceil(centre)):] = False
            else:
                candidate[:, :int(np.floor(centre)) + 1] = False
            if not candidate.any():
                continue
            lo, hi = max(0, z - cover), min(n - 1, z + cover)
            ub = (slice(r0 - r_lo, r1 - r_lo), slice(c0 - c_lo, c1 - c_lo))  # bb within the in-plane box
            above = upto[hi][ub] - upto[z][ub]
            below = (upto[z - 1][ub] - (upto[lo - 1][ub] if lo > 0 else 0)) if z > 0 else np.zeros_like(above)
            candidate[bb] &= (above > 0) & (below > 0)
            if not candidate.any():
                continue
            comp, count = ndimage.label(candidate)
            large = np.bincount(comp.ravel(), minlength=count + 1) * cell_mm2 >= MIN_AREA_MM2
            large[0] = False
            if not large.any():
                continue
            lungs_here = small[z] > 0
            for i, box in enumerate(ndimage.find_objects(comp), start=1):
                if not large[i]:
                    continue
                grown = tuple(slice(max(0, s.start - 3), s.stop + 3) for s in box)
                region = comp[grown] == i
                rim = ndimage.binary_dilation(region, iterations=2) & ~region & ~lungs_here[grown]
                if not rim.any():
                    continue
                # distance to bone on a crop wide enough that bone beyond it is farther than BONE_MM anyway
                wide = tuple(slice(max(0, g.start - reach), g.stop + reach) for g in grown)
                bone_mm = ndimage.distance_transform_edt(~(ct_small[z][wide] >= BONE_HU),  # NaN: not bone
                                                         sampling=(sy * step, sx * step))
                inner = tuple(slice(g.start - w.start, g.start - w.start + size)
                              for g, w, size in zip(grown, wide, region.shape))
                if np.median(bone_mm[inner][rim]) > BONE_MM:
                    continue
                # back to full resolution: the hull at full scale, inside this component's cells
                full = tuple(slice(s.start * step, min(labels.shape[k + 1], s.stop * step))
                             for k, s in enumerate(grown))
                cells = np.repeat(np.repeat(region, step, axis=0), step, axis=1)
                cells = cells[:full[0].stop - full[0].start, :full[1].stop - full[1].start]
                inside = _hull_inside(pts.astype(float), float(step), full)
                hu = ct[z][full]
                take = cells & inside & (labels[z][full] == 0) & ~((hu >= FAT_HU[0]) & (hu <= FAT_HU[1]))
                labels[z][full][take] = value
                added[z][full] |= take
    return added


__all__ = ["BONE_HU", "BONE_MM", "COVER_MM", "FAT_HU", "MIN_AREA_MM2", "STEP_MM", "fill_pleural_lesions"]
