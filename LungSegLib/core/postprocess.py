"""Post-processing of lung labelmaps on the canonical stack (column index grows to patient left).

All functions take and return uint8 arrays ``[slice, row, column]`` holding the label values of
:mod:`LungSegLib.labels` (0 background, ``RIGHT`` lung, ``LEFT`` lung), and work on the whole volume
at once (SciPy), never slice by slice in Python.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from .counts import label_components, label_counts, label_extents, lookup, value_components
from ..labels import LEFT, RIGHT
_CONNECT_26 = np.ones((3, 3, 3), dtype=bool)
_IN_PLANE_4 = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE_4[1] = ndimage.generate_binary_structure(2, 1)


@dataclass(frozen=True)
class PostprocessOptions:
    """Which clean-up steps to run (all but ``remove_boundary_fat`` on by default).

    Attributes:
        keep_largest: per lung keep the largest 3-D component and those at least
            ``min_component_fraction`` of it, and also islands of at least ``upper_island_fraction``
            of it lying wholly in the upper half of its slice range, at most ``upper_island_gap_mm``
            above its top and at least half within its in-plane footprint (an apex or upper-lobe piece
            the network cut off at a tumour or collapse; abdominal gas lies below the lung bases, air in
            the neck or between raised arms far above the apex, the couch's air cells behind the
            patient); smaller islands that touch the other lung join it, the rest become background.
        fill_holes: fill enclosed holes (vessels, nodules, dense disease) in each lung, in 3-D and in
            every axial slice.
        fix_sides: make sure label 1 is the lung on the patient's right (smaller column index), and
            split by side a label that holds both lungs while the other is nearly empty.
        remove_airways: the trachea and main bronchi, found in the CT (:mod:`.airways`), are never
            lung (needs the CT: skipped when :func:`postprocess` gets none).
        remove_boundary_fat: thick fat-density (−150..−50 HU) regions on the lung's outer boundary
            are not lung (:mod:`.boundary`; needs the CT). Off by default: it did not measure better
            on the shared cases (``benchmarks/results/accuracy_before_after.md``).
        boundary_midpoint: the partial-volume rule of the label convention at the pleura: surface
            voxels at or above the HU midpoint between aerated lung and soft tissue are not lung,
            unless they belong to dense tissue (:func:`.boundary.partial_volume_rim`; needs the CT).
            Makes volumes about 2-3 % smaller than radiotherapy contours, which include that rim.
        fill_pleural_lesions: dense lesions against the rib cage that the network cut out of the lung
            (a concavity of the lung's outer side that opens onto the ribs) are put back
            (:mod:`.pleural`; needs the CT).
        remove_walled_gas: pure-air pockets (< −950 HU, ≥ 2 mL) labelled lung in the lower half of the
            lungs whose surroundings are mostly soft tissue (stomach/colon gas under a lung base) are
            not lung, nor is the lung-labelled wall around them (:func:`.boundary.walled_gas`; needs
            the CT). Emphysema and bullae, surrounded by parenchyma even against the pleura, stay lung
            (``benchmarks/results/robustness.md``).
    """

    keep_largest: bool = True
    fill_holes: bool = True
    fix_sides: bool = True
    min_component_fraction: float = 0.1
    upper_island_fraction: float = 0.01
    upper_island_gap_mm: float = 20.0
    remove_airways: bool = True
    remove_boundary_fat: bool = False
    boundary_midpoint: bool = True
    remove_walled_gas: bool = True
    fill_pleural_lesions: bool = True


def postprocess(labels: np.ndarray, options: PostprocessOptions = PostprocessOptions(),
                ct: Optional[np.ndarray] = None,
                spacing: Optional[Sequence[float]] = None) -> np.ndarray:
    """Run the chosen steps in place on a canonical labelmap and return it.

    ``ct`` (HU, the same canonical grid; never modified) and its ``spacing`` ((slice, row, column) mm)
    enable the HU-based steps (airways, boundary fat); without them those steps are skipped.
    """
    if not labels.any():
        return labels
    # every step gives the same result on the lungs' box (one voxel wider) as on the whole volume
    box_slices = _lungs_box(labels)
    box = labels[box_slices]
    ct_box = None if ct is None or spacing is None else ct[box_slices]
    if ct_box is not None and ct_box.dtype.kind == "f" and not np.isfinite(ct_box).all():
        # NaN/Inf voxels are outside the field of view: air, as the network saw them (a NaN would make
        # every HU comparison of the steps below false)
        ct_box = np.nan_to_num(ct_box, nan=-1024.0, posinf=-1024.0, neginf=-1024.0)
    airway = None
    if options.remove_airways and ct_box is not None:
        from .airways import find_central_airways

        # found before the clean-up (the seed needs both lungs), removed before keep_largest so that
        # what the airway cut off from a lung is dropped as an island
        airway = _Sparse(find_central_airways(ct_box, box, spacing).mask)  # kept small until used again
        airway.clear(box)
    if options.keep_largest:
        gap = None if spacing is None else int(options.upper_island_gap_mm // float(spacing[0]))
        keep_main_components(box, options.min_component_fraction, options.upper_island_fraction, gap)
    if options.fix_sides:
        fix_left_right(box)
    if options.fill_holes:
        fill_lung_holes(box)
    if airway is not None:
        airway.clear(box)  # a bronchus enclosed by lung in a slice was filled back in
    if options.remove_boundary_fat and ct_box is not None:
        from .boundary import remove_boundary_fat

        remove_boundary_fat(box, ct_box, spacing)
    if options.boundary_midpoint and ct_box is not None:
        from .boundary import remove_partial_volume_rim

        remove_partial_volume_rim(box, ct_box, spacing)
    if options.fill_pleural_lesions and ct_box is not None:
        from .pleural import fill_pleural_lesions

        # after the rim rule: the lesion's voxels are lung by the convention, whatever their density
        fill_pleural_lesions(labels, ct, spacing)  # whole slices (``box`` is a view): the ribs lie outside the box
    if options.remove_walled_gas and ct_box is not None:
        from .boundary import remove_walled_gas

        remove_walled_gas(box, ct_box, spacing)
    return labels


class _Sparse:
    """A mask kept as its bounding box (the airway tree: a small part of the lungs' box), so it does not
    hold a byte per voxel of the whole box while the other steps run."""

    def __init__(self, mask: np.ndarray):
        self.where = _bbox_slices(mask, margin=0) if mask.any() else None
        self.mask = mask[self.where].copy() if self.where is not None else None

    def clear(self, labels: np.ndarray) -> None:
        """Set ``labels`` to 0 under the mask."""
        if self.where is not None:
            labels[self.where][self.mask] = 0


def _lungs_box(labels: np.ndarray, margin: int = 1) -> Tuple[slice, ...]:
    """:func:`_bbox_slices` of ``labels > 0`` found slab by slab (no whole-volume mask: 0.26 GB at
    1000 slices); ``labels`` holds at least one lung voxel."""
    boxes = [b for b in label_extents(labels, [RIGHT, LEFT]).values() if b is not None]
    if not boxes:  # other values only
        return _bbox_slices(labels > 0, margin)
    return tuple(slice(max(0, min(b[axis][0] for b in boxes) - margin),
                       max(b[axis][1] for b in boxes) + 1 + margin) for axis in range(3))


def _bbox_slices(mask: np.ndarray, margin: int = 1) -> Tuple[slice, ...]:
    out = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        out.append(slice(max(0, idx[0] - margin), idx[-1] + 1 + margin))
    return tuple(out)


def keep_main_components(labels: np.ndarray, min_fraction: float = 0.1,
                         upper_fraction: float = 0.01, upper_gap_slices: Optional[int] = None) -> np.ndarray:
    """Drop stray islands, in place (see :class:`PostprocessOptions`; canonical axis 0 runs towards
    superior). ``upper_fraction`` 0 drops upper islands like any other; an upper island is kept only
    with at most ``upper_gap_slices`` empty slices between it and the top of the lung (None: any)."""
    for lung, other in ((RIGHT, LEFT), (LEFT, RIGHT)):
        box = _value_box(labels, lung)  # the lung's own box, with the 1-voxel rim its neighbours may lie in
        if box is None:
            continue
        sub = labels[box]
        # 16-bit labels and chunked counts: full-size int64 temporaries (bincount) cost 8 bytes per voxel
        # of the lung's box, 0.8 GB at 1000 slices
        comp, n = value_components(sub, lung, _CONNECT_26)
        if n <= 1:
            continue
        sizes = label_counts(comp, n + 1)[1:]
        drop = sizes < min_fraction * sizes.max()
        if not drop.any():
            continue
        boxes = ndimage.find_objects(comp)
        if upper_fraction > 0:
            upper = drop & _upper_islands(boxes, sizes, upper_fraction, upper_gap_slices)
            if upper.any():
                upper &= _within_footprint(comp, boxes, int(np.argmax(sizes)), upper)
            drop &= ~upper
        # each island on its own box (one voxel wider, where its neighbours lie): a network's raw output can
        # hold hundreds of specks, and a pass over the lung's whole box per step cost more than all of them
        for index in np.flatnonzero(drop):
            around = tuple(slice(max(0, s.start - 1), s.stop + 1) for s in boxes[index])
            island = comp[around] == index + 1
            region = sub[around]
            # islands of this lung lying against the other lung are usually the other lung mislabelled
            near = region == other
            touches = near.any() and (ndimage.binary_dilation(island, _CONNECT_26) & near).any()
            region[island] = other if touches else 0
    return labels


def _upper_islands(boxes: Sequence[Optional[Tuple[slice, ...]]], sizes: np.ndarray, fraction: float,
                   max_gap: Optional[int] = None) -> np.ndarray:
    """Per component (index = label - 1, ``boxes`` from ``find_objects``): at least ``fraction`` of the
    largest, wholly above the middle slice of the largest one's slice range, and (``max_gap``) with at
    most that many empty slices between its bottom and the largest one's top."""
    main = int(np.argmax(sizes))
    middle = (boxes[main][0].start + boxes[main][0].stop - 1) / 2.0
    bottoms = np.array([b[0].start if b is not None else -1 for b in boxes[:sizes.size]])
    upper = (sizes >= fraction * sizes[main]) & (bottoms > middle)
    if max_gap is not None:
        upper &= bottoms - boxes[main][0].stop <= max_gap
    return upper


def _within_footprint(comp: np.ndarray, boxes: Sequence[Optional[Tuple[slice, ...]]], main: int,
                      candidates: np.ndarray) -> np.ndarray:
    """Per component (index = label - 1) among ``candidates``: whether at least half of its in-plane
    projection lies within the in-plane projection of component ``main`` (its footprint over all slices).

    A piece of apex or upper lobe lies over the lung's own footprint; the air cells of the couch under the
    patient, which a network can label lung at the level of the upper lobes (a left-out case: 15 mL on one
    slice, HD95 85 mm), lie outside it."""
    rows, cols = boxes[main][1], boxes[main][2]
    footprint = np.zeros(comp.shape[1:], dtype=bool)
    for k0 in range(boxes[main][0].start, boxes[main][0].stop, _SLAB):  # slab by slab: no box-sized mask
        k1 = min(boxes[main][0].stop, k0 + _SLAB)
        footprint[rows, cols] |= (comp[k0:k1, rows, cols] == main + 1).any(axis=0)
    within = np.zeros(candidates.size, dtype=bool)
    for index in np.flatnonzero(candidates):
        box = boxes[index]
        own = (comp[box] == index + 1).any(axis=0)
        within[index] = footprint[box[1:]][own].mean() >= 0.5
    return within


#: One lung label holding both lungs while the other has less than this share of its volume means the
#: network did not tell the sides apart (a training run that never learned them): sides go by position.
ONE_SIDED_SHARE = 0.1


def fix_left_right(labels: np.ndarray) -> np.ndarray:
    """Swap labels 1 and 2 in place when the 'right' lung lies to the patient's left of the 'left'; when
    one label holds both lungs (:func:`holds_two_lungs`) and the other almost nothing, split them by
    patient side (:func:`split_by_side`). A single lung (the other removed or collapsed) is left as it is."""
    volumes = sorted(int(np.count_nonzero(labels == lung)) for lung in (RIGHT, LEFT))
    if volumes[1] and volumes[0] < ONE_SIDED_SHARE * volumes[1] and holds_two_lungs(labels > 0):
        labels[...] = split_by_side(labels > 0)
        return labels
    cols = np.arange(labels.shape[2])
    centroid = {}
    for lung in (RIGHT, LEFT):
        per_col = (labels == lung).sum(axis=(0, 1))
        if per_col.sum() == 0:
            return labels
        centroid[lung] = float((per_col * cols).sum() / per_col.sum())
    if centroid[RIGHT] > centroid[LEFT]:
        right = labels == RIGHT
        labels[labels == LEFT] = RIGHT
        labels[right] = LEFT
    return labels


def fill_lung_holes(labels: np.ndarray) -> np.ndarray:
    """Fill holes enclosed by each lung, in 3-D and per axial slice, in place (never over the other lung)."""
    if not labels.any():
        return labels
    for lung in (RIGHT, LEFT):
        box = _value_box(labels, lung)  # holes lie inside the lung's own box; its 1-voxel rim is outside
        if box is None:
            continue
        sub = labels[box]
        # a 3-D hole (not 6-connected to the box faces) is a hole in each of its slices too (in-plane
        # 4-connection is a subset of 6-connection), so the per-slice filling covers both; slices are
        # independent, so it runs on slabs of slices (bounded memory whatever the slice count)
        for k0 in range(0, sub.shape[0], _SLAB):
            slab = sub[k0:k0 + _SLAB]
            holes = _fill_holes(slab == lung, _IN_PLANE_4, border_axes=(1, 2))
            slab[holes & (slab == 0)] = lung
    return labels


#: Slices per step of the per-slice hole filling.
_SLAB = 8


def _value_box(labels: np.ndarray, value: int, margin: int = 1) -> Optional[Tuple[slice, ...]]:
    """:func:`_bbox_slices` of ``labels == value``, found slab by slab (no whole-volume mask), or None
    when the value is absent."""
    extent = label_extents(labels, [value])[value]
    if extent is None:
        return None
    return tuple(slice(max(0, lo - margin), hi + 1 + margin) for lo, hi in extent)


def _fill_holes(mask: np.ndarray, structure: np.ndarray, border_axes: Tuple[int, ...]) -> np.ndarray:
    """The holes of ``mask``: every background component that does not reach the array faces across
    ``border_axes`` (``ndimage.binary_fill_holes(mask) & ~mask``, in one labelling pass)."""
    background, n = label_components(~mask, structure)
    outside = np.zeros(n + 1, dtype=bool)
    for axis in border_axes:
        for index in (0, -1):
            outside[np.take(background, index, axis=axis)] = True
    outside[0] = True  # label 0: the mask itself
    return lookup(~outside, background)  # the holes; with the mask itself: ~outside[0] is False


def split_by_side(mask: np.ndarray) -> np.ndarray:
    """Turn a binary lung mask (canonical) into right (1) / left (2) labels by patient side.

    Each 3-D component goes to the side its centroid is on, relative to the split column; a component
    that straddles it (lungs touching at the anterior junction) is cut at that column. The split column
    is the least-filled column between the two halves' lung mass peaks.
    """
    mask = np.asarray(mask, dtype=bool)
    labels = np.zeros(mask.shape, dtype=np.uint8)
    if not mask.any():
        return labels
    split = _split_column(mask.sum(axis=(0, 1)).astype(float))
    comp, n = ndimage.label(mask, structure=_CONNECT_26)
    for c, obj in enumerate(ndimage.find_objects(comp), start=1):
        if obj is None:
            continue
        part = comp[obj] == c
        col_idx = np.arange(obj[2].start, obj[2].stop)
        per_col = part.sum(axis=(0, 1))
        side_left = (per_col * col_idx).sum() / per_col.sum() > split
        left_share = per_col[col_idx > split].sum() / per_col.sum()
        region = labels[obj]
        if 0.2 < left_share < 0.8:
            col_label = np.where(col_idx > split, LEFT, RIGHT).astype(np.uint8)
            region[part] = np.broadcast_to(col_label, part.shape)[part]
        else:
            region[part] = LEFT if side_left else RIGHT
    return labels


def _split_column(profile: np.ndarray) -> int:
    """The column between the two lungs: the least-filled column of the middle half of the mask's
    column extent (``profile``: mask voxels per column, not all zero)."""
    cols = np.flatnonzero(profile)
    centre = (cols[0] + cols[-1]) / 2
    quarter = (cols[-1] - cols[0]) / 4
    lo, hi = int(max(cols[0], centre - quarter)), int(min(cols[-1], centre + quarter))
    return lo + int(np.argmin(profile[lo:hi + 1])) if hi > lo else int(centre)


#: A mask holds two lungs when its least-filled middle column has at most this fraction of the smaller
#: side's fullest column (a gap, or the thin anterior junction); one lung's profile is one broad hump.
TWO_LUNGS_VALLEY = 0.25


def holds_two_lungs(mask: np.ndarray) -> bool:
    """Whether a binary canonical mask holds both lungs (a deep valley in the mask's column profile
    between two humps) rather than one lung."""
    profile = np.asarray(mask, dtype=bool).sum(axis=(0, 1)).astype(float)
    if not profile.any():
        return False
    split = _split_column(profile)
    right_peak, left_peak = profile[:split].max(initial=0.0), profile[split + 1:].max(initial=0.0)
    return bool(profile[split] <= TWO_LUNGS_VALLEY * min(right_peak, left_peak))
