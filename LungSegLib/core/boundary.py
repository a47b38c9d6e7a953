"""HU rules at the lung's outer boundary: fat-density tissue labelled lung there is not lung.

By the LungSeg label convention (``Resources/Models/MODEL_CARD.md``) fat (about −150..−50 HU:
extrapleural and pericardial fat, the fat pads at the diaphragm domes) is never lung. Fat-density
voxels *inside* the lung are partial-volume edges of vessels and bronchial walls, so the rule only
removes **thick** fat-density regions (they survive an in-plane opening of ``min_thickness_mm``)
that lie **on the lung's outer boundary** (within ``min_thickness_mm`` of background), with the thin
fat-density fringe around them. Dense disease (consolidation, atelectasis, tumour: about −50..+60 HU
and above) is outside the range and is never touched.

Works on the canonical stack ``[slice, row, column]``, labels 0/1/2, CT in HU; NumPy/SciPy only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from .postprocess import _bbox_slices



def _clear(labels: np.ndarray, mask: np.ndarray) -> int:
    """Set ``mask`` voxels of ``labels`` to background, in place; returns how many were set."""
    labels[mask] = 0
    return int(mask.sum())

@dataclass(frozen=True)
class FatOptions:
    """``hu_range``: fat densities (HU); ``min_thickness_mm``: how thick (in-plane) a fat-density region
    must be to count as fat rather than the partial-volume edge of a vessel or bronchus."""

    hu_range: Tuple[float, float] = (-150.0, -50.0)
    min_thickness_mm: float = 3.0


def boundary_fat(labels: np.ndarray, ct: np.ndarray, spacing: Sequence[float],
                 options: FatOptions = FatOptions()) -> np.ndarray:
    """Boolean mask of the lung-labelled voxels that are fat by the rule above (nothing is changed)."""
    lung = labels > 0
    lo, hi = options.hu_range
    fat = lung & (ct >= lo) & (ct <= hi)
    out = np.zeros_like(fat)
    if not fat.any():
        return out
    # square in-plane windows (separable min/max filters: fast on the whole lung box)
    width = max(3, 2 * int(round(options.min_thickness_mm / 2 / min(spacing[1], spacing[2]))) + 1)
    core = ndimage.minimum_filter(fat.view(np.uint8), size=(1, width, width))
    if not core.any():
        return out
    found = ndimage.find_objects(core)[0]
    pad = width + 2
    box = tuple(slice(max(0, s.start - (0 if a == 0 else pad)), s.stop + (0 if a == 0 else pad))
                for a, s in enumerate(found))
    sub_fat = fat[box]
    thick = ndimage.maximum_filter(core[box], size=(1, width, width)).view(bool) & sub_fat
    # background within the region's thickness: the region is on the lung's outer boundary
    near_outside = ndimage.maximum_filter((~lung[box]).view(np.uint8), size=(1, width + 2, width + 2)).view(bool)
    comp, n = ndimage.label(thick, structure=np.ones((3, 3, 3), bool))
    on_boundary = np.zeros(n + 1, bool)
    on_boundary[np.unique(comp[thick & near_outside])] = True
    on_boundary[0] = False
    selected = on_boundary[comp]
    if selected.any():
        # the thin fat-density fringe around each selected region goes with it
        out[box] = ndimage.maximum_filter(selected.view(np.uint8), size=(1, width, width)).view(bool) & sub_fat
    return out


def remove_boundary_fat(labels: np.ndarray, ct: np.ndarray, spacing: Sequence[float],
                        options: FatOptions = FatOptions()) -> int:
    """Set :func:`boundary_fat` voxels to background, in place; returns how many were removed."""
    return _clear(labels, boundary_fat(labels, ct, spacing, options))


@dataclass(frozen=True)
class RimOptions:
    """The partial-volume rule at the pleura: a voxel on the lung's surface is lung only when its HU is
    below the midpoint between aerated lung (the median HU of the labelled lung) and soft tissue
    (``soft_tissue_hu``). Surface voxels of dense tissue (consolidation, atelectasis, tumour against
    the pleura: at least ``dense_fraction`` of the lung voxels in the in-plane window of
    ``min_dense_mm`` around them are dense too) stay lung: dense lung is lung."""

    soft_tissue_hu: float = 40.0
    min_dense_mm: float = 6.0
    dense_fraction: float = 0.6


def midpoint_hu(labels: np.ndarray, ct: np.ndarray, options: RimOptions = RimOptions()) -> float:
    """The boundary HU threshold: halfway between the lungs' median HU and soft tissue.

    Over 200 000 lung voxels, the median of a regular subsample (every ``n // 100 000``-th lung voxel in
    C order) is as good and much cheaper. Gathered slab by slab: no whole-box mask or HU copy."""
    per_step = _slab_step(labels)
    total = sum(int(np.count_nonzero(labels[k:k + per_step] > 0)) for k in range(0, labels.shape[0], per_step))
    step = total // 100_000 if total > 200_000 else 1
    parts, seen = [], 0
    for k in range(0, labels.shape[0], per_step):
        values = ct[k:k + per_step][labels[k:k + per_step] > 0]
        parts.append(values[(-seen) % step::step])
        seen += values.size
    lung_hu = np.concatenate(parts) if parts else np.zeros(0, ct.dtype)
    return (float(np.median(lung_hu)) + options.soft_tissue_hu) / 2


def _slab_step(labels: np.ndarray) -> int:
    """Slices per step for about 1M voxels per slab."""
    return max(1, (1 << 20) // max(1, labels[0].size)) if labels.ndim and labels.size else 1


def partial_volume_rim(labels: np.ndarray, ct: np.ndarray, spacing: Sequence[float],
                       options: RimOptions = RimOptions()) -> np.ndarray:
    """Lung surface voxels that are not lung by the midpoint rule (nothing is changed)."""
    rim = np.zeros(labels.shape, bool)
    where = _rim_voxels(labels, ct, spacing, options)
    if where is not None:
        rim[where] = True
    return rim


def _rim_voxels(labels: np.ndarray, ct: np.ndarray, spacing: Sequence[float],
                options: RimOptions = RimOptions()) -> Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(z, y, x) of the :func:`partial_volume_rim` voxels, or None when there is no lung. Slab by slab
    (a one-slice halo for the surface test; the dense-tissue window is in-plane): a few box-sized masks
    at once would be the clean-up's memory peak (0.4 GB at 1000 slices)."""
    if not labels.any():
        return None
    threshold = midpoint_hu(labels, ct, options)
    radius = max(1, int(round(options.min_dense_mm / 2 / min(spacing[1], spacing[2]))))
    depth = labels.shape[0]
    found = []
    for k0 in range(0, depth, _WINDOW_SLAB):
        k1 = min(depth, k0 + _WINDOW_SLAB)
        h0, h1 = max(0, k0 - 1), min(depth, k1 + 1)
        surface = _surface(labels[h0:h1] > 0)[k0 - h0:k1 - h0]  # the halo's own faces are not used
        lung = labels[k0:k1] > 0
        dense = lung & (ct[k0:k1] >= threshold)
        # Dense tissue or a partial-volume edge? In the in-plane window around a rim voxel, most lung
        # voxels are dense where consolidation/tumour reaches the pleura, few where only the edge layer
        # is (the aerated lung starts right behind it). Counted at the rim voxels only.
        z, y, x = np.nonzero(dense & surface)
        if z.size == 0:
            continue
        n_lung, n_dense = _window_counts(lung, dense, z, y, x, radius)
        thin = n_dense < options.dense_fraction * n_lung
        found.append((z[thin] + k0, y[thin], x[thin]))
    if not found:
        return tuple(np.zeros(0, np.intp) for _ in range(3))
    return tuple(np.concatenate(axis) for axis in zip(*found))


#: Slices per step of :func:`_window_counts` (its row sums are 2 bytes per voxel of a slab).
_WINDOW_SLAB = 16


def _window_counts(lung: np.ndarray, dense: np.ndarray, z: np.ndarray, y: np.ndarray, x: np.ndarray,
                   radius: int) -> Tuple[np.ndarray, np.ndarray]:
    """Lung and dense voxels in the in-plane ``(2 radius + 1)``-square window around each voxel
    ``(z, y, x)`` (sorted by ``z``, as ``np.nonzero`` gives them); positions beyond the array's edge
    repeat its edge voxel. Exact integer counts.

    Why not a gather per window offset: that is (2r+1)^2 three-index gathers per rim voxel (81 at the
    bundled grid), seconds on a ragged network output. Here the row sums along x come from one cumulative
    sum per slab, and only the 2r+1 vertical offsets are gathered. Both counts travel in one uint16
    (lung in the low byte, dense in the high byte: each count is at most (2r+1)^2 <= 255 for r <= 7;
    64 bits for larger windows);
    the cumulative sum may wrap, its window differences are still exact (modulo 2^16).
    """
    side = 2 * radius + 1
    # a larger window (very fine pixels) packs the counts into 64 bits instead
    dtype, shift = (np.uint16, 8) if side * side <= 255 else (np.uint64, 32)
    n_lung = np.zeros(z.size, np.int32)
    n_dense = np.zeros(z.size, np.int32)
    ny = lung.shape[1]
    bounds = np.searchsorted(z, np.arange(0, lung.shape[0] + _WINDOW_SLAB, _WINDOW_SLAB))
    for start, stop in zip(bounds[:-1], bounds[1:]):
        if start == stop:
            continue
        k0, k1 = int(z[start]), int(z[stop - 1]) + 1
        code = lung[k0:k1].astype(dtype)
        code |= dense[k0:k1].astype(dtype) << dtype(shift)
        padded = np.pad(code, ((0, 0), (0, 0), (radius + 1, radius)), mode="edge")
        padded[:, :, 0] = 0
        cum = np.cumsum(padded, axis=2, dtype=dtype)
        rows = cum[:, :, side:] - cum[:, :, :-side]  # rows[k, j, i] = sum of code[k, j, i-r .. i+r]
        zs, ys, xs = z[start:stop] - k0, y[start:stop], x[start:stop]
        total = np.zeros(zs.size, dtype)
        for dy in range(-radius, radius + 1):
            total += rows[zs, np.clip(ys + dy, 0, ny - 1), xs]
        low = dtype((1 << shift) - 1)
        n_lung[start:stop] = total & low
        n_dense[start:stop] = total >> dtype(shift)
    return n_lung, n_dense


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a 6-neighbour outside it (the array's faces count as outside); shifted
    comparisons instead of a morphological erosion, several times faster on large boxes."""
    inner = mask.copy()
    inner[0] = inner[-1] = False
    inner[:, 0] = inner[:, -1] = False
    inner[:, :, 0] = inner[:, :, -1] = False
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    inner[:, :, 1:] &= mask[:, :, :-1]
    inner[:, :, :-1] &= mask[:, :, 1:]
    return mask & ~inner


def remove_partial_volume_rim(labels: np.ndarray, ct: np.ndarray, spacing: Sequence[float],
                              options: RimOptions = RimOptions()) -> int:
    """Set :func:`partial_volume_rim` voxels to background, in place; returns how many were removed."""
    where = _rim_voxels(labels, ct, spacing, options)
    if where is None:
        return 0
    labels[where] = 0  # after every slab was tested: clearing earlier would change the next slab's surface
    return int(where[0].size)


@dataclass(frozen=True)
class GasOptions:
    """Walled gas pockets labelled lung (stomach or colon gas under a lung base): pure air (below
    ``air_hu``) of at least ``min_ml`` whose surroundings are at least ``min_tissue_fraction`` soft tissue
    (above ``tissue_hu``). The surroundings are the in-plane ring (chessboard distance in pixels) beyond
    the ``skip_px`` pixels next to the air, out to ``shell_mm`` (at least 2 pixels more): skipping the
    pixels next to the air leaves out the partial-volume edge of the gas, which is neither air nor
    tissue. Only the lowest ``lower_fraction`` of the lungs' slices is searched:
    gas under the diaphragm never reaches higher, and the search costs time.

    Measured on the shared cases with painted lookalikes (``benchmarks/results/robustness.md``): a
    subphrenic gas ball behind a 4 mm wall reads 0.92-0.96 tissue; the lungs' own air pockets (the darkest
    parenchyma, painted emphysema) at most 0.52 and a 20 mm subpleural bulla 0.39-0.51, so emphysema and
    bullae stay lung."""

    air_hu: float = -950.0
    tissue_hu: float = -500.0
    min_ml: float = 2.0
    skip_px: int = 1
    shell_mm: float = 4.0
    min_tissue_fraction: float = 0.75
    lower_fraction: float = 0.5


def walled_gas(labels: np.ndarray, ct: np.ndarray, spacing: Sequence[float],
               options: GasOptions = GasOptions()) -> np.ndarray:
    """Lung-labelled voxels of walled gas pockets, with the lung-labelled soft tissue of their wall
    (``labels``/``ct`` on the canonical grid, axis 0 from inferior to superior; ``spacing`` in mm)."""
    out = np.zeros(labels.shape, dtype=bool)
    slices = np.flatnonzero(labels.any(axis=(1, 2)))
    if slices.size == 0:
        return out
    top = slices[0] + int(np.ceil(options.lower_fraction * (slices[-1] - slices[0] + 1)))
    pixel = min(float(spacing[1]), float(spacing[2]))
    ring_px = max(options.skip_px + 2, int(round(options.shell_mm / pixel)))
    shell = ring_px * pixel  # mm
    margin = [max(1, int(np.ceil(shell / float(mm)))) for mm in spacing]
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = True
    air = labels[slices[0]:top] > 0
    air &= ct[slices[0]:top] < options.air_hu
    if not air.any():
        return out
    found = _bbox_slices(air, margin=0)
    # the air's box in the lower slab, widened by the ring (all work below is on this box)
    low = tuple(slice(max(0, s.start + o - m), min(n, s.stop + o + m))
                for s, o, m, n in zip(found, (slices[0], 0, 0), margin, labels.shape))
    air = (labels[low] > 0) & (ct[low] < options.air_hu)
    if low[0].stop > top:
        air[top - low[0].start:] = False  # the ring's margin above the slab is looked at, not searched
    comp, n = ndimage.label(air)
    sizes = np.bincount(comp[air], minlength=n + 1)
    big = np.flatnonzero(sizes[1:] * float(np.prod(spacing)) / 1000.0 >= options.min_ml) + 1
    objects = ndimage.find_objects(comp) if big.size else []
    for i in big:
        box = tuple(slice(max(0, s.start - m), s.stop + m) for s, m in zip(objects[i - 1], margin))
        part = comp[box] == i
        ct_box = ct[low][box]
        # in-plane chessboard distance (pixels) to the air; -1 on slices without it
        dist = ndimage.distance_transform_cdt(~part, metric=in_plane)
        ring = (dist > options.skip_px) & (dist <= ring_px) & ~(ct_box < options.air_hu)
        if not ring.any() or (ct_box[ring] > options.tissue_hu).mean() < options.min_tissue_fraction:
            continue
        # the pocket goes, with the lung-labelled wall around it in 3-D (the diaphragm above it too)
        dist = ndimage.distance_transform_edt(~part, sampling=tuple(float(mm) for mm in spacing))
        wall = (dist <= options.skip_px * pixel * 1.5) | ((dist <= shell) & (ct_box > options.tissue_hu))
        out[low][box] |= part | ((labels[low][box] > 0) & wall)
    return out


def remove_walled_gas(labels: np.ndarray, ct: np.ndarray, spacing: Sequence[float],
                      options: GasOptions = GasOptions()) -> int:
    """Set :func:`walled_gas` voxels to background, in place; returns how many were removed."""
    return _clear(labels, walled_gas(labels, ct, spacing, options))
