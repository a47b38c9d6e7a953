""""Review these slices": a short ranked list of where a clinician should look first.

Built from a result's per-slice network confidence (:mod:`.confidence`), its labelmap and its
plausibility flags (:func:`LungSegLib.core.checks.plausibility_findings`, shared with the run's
warnings). Reasons, most urgent first at equal score:

* ``lung_base_low``: the lowest slice of a lung that reaches far below the other (bowel or stomach gas
  under its base taken for lung?; from the plausibility flag of that name; score 1);
* ``lung_gap``: a lung is absent on a slice although it is present above and below it -- a blank or
  corrupted slice, or a missed segment (score 1);
* ``lung_touches_border``: the slice where a lung lies most on the image border (the field of view
  cuts it; from the plausibility flag of that name; score 1);
* ``noisy_slice``: a slice far noisier than the rest of the scan, smoothed before segmentation
  (:mod:`.noise`; score its noise / :data:`NOISE_FULL_SCORE_HU`);
* ``low_confidence``: the network's expected Dice error on that slice and lung
  (:data:`LungSegLib.core.confidence.DEFAULT_SCORE`) is at least :data:`MIN_SCORE`; neighbouring
  slices of the same lung within :data:`SUPPRESS_SLICES` are one place, listed once (its worst slice).

Every item names the slice by its index in the *input array* (``slice_index`` along ``axis``, 0 for the
usual ``[k, j, i]`` axial volume) and gives a point on it in LPS and RAS millimetres (the lung's centre
on that slice) so a viewer can jump there.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..labels import LUNG_LABELS, MAX_LABEL
from .checks import Finding, plausibility_findings
from .confidence import DEFAULT_SCORE, SliceConfidence
from .geometry import Geometry

#: Slices whose expected Dice error (less certain lung) is below this are not listed for confidence.
MIN_SCORE = 0.02
#: At most this many items.
MAX_ITEMS = 10
#: A smoothed slice this noisy (HU SD on the model grid) scores 1: smoothing leaves little lung detail (600 HU
#: of noise added to single slices of the sample reads about 350 HU there, and the network's Dice on them
#: drops to 0.77-0.95; 300 HU reads about 180 and keeps 0.96-0.98).
NOISE_FULL_SCORE_HU = 300.0
#: Low-confidence slices of one lung closer than this (slices) to a listed one are not listed again.
SUPPRESS_SLICES = 3

_LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class ReviewItem:
    """One place to check.

    Attributes:
        slice_index: index of the slice in the input array along ``axis``.
        axis: the input array axis that runs across the axial slices (0 for ``[k, j, i]`` axial).
        lung: label key (``"right"``/``"left"``) or None for the whole slice.
        reason: ``"lung_gap"``, ``"lung_touches_border"``, ``"lung_base_low"``, ``"noisy_slice"`` or
            ``"low_confidence"``.
        message: one sentence for people.
        score: how urgent, 0..1 (for ``low_confidence`` the expected Dice error).
        position_lps: a point on that slice (the lung's centre there), LPS mm.
    """

    slice_index: int
    axis: int
    lung: Optional[str]
    reason: str
    message: str
    score: float
    position_lps: Tuple[float, float, float]

    @property
    def position_ras(self) -> Tuple[float, float, float]:
        """The same point in RAS mm (3D Slicer's world coordinates)."""
        return tuple(float(v) for v in np.asarray(self.position_lps) * _LPS_TO_RAS)  # type: ignore[return-value]

    def to_dict(self) -> Dict[str, object]:
        """JSON form (adds ``position_ras``)."""
        d = asdict(self)
        d["position_lps"] = [round(v, 2) for v in self.position_lps]
        d["position_ras"] = [round(v, 2) for v in self.position_ras]
        d["score"] = round(float(self.score), 4)
        return d

    @classmethod
    def from_dict(cls, data: Dict[str, object]) -> "ReviewItem":
        """Inverse of :meth:`to_dict` (the worker's ``done`` event)."""
        return cls(int(data["slice_index"]), int(data.get("axis", 0)), data.get("lung") or None,
                   str(data["reason"]), str(data.get("message", "")), float(data.get("score", 0.0)),
                   tuple(float(v) for v in data["position_lps"]))  # type: ignore[arg-type]


def _per_slice_counts(labels: np.ndarray, axis: int) -> np.ndarray:
    """``[n_slices, MAX_LABEL + 1]`` voxels of each lung label value on each slice along ``axis``."""
    view = np.moveaxis(labels, axis, 0)
    out = np.zeros((view.shape[0], MAX_LABEL + 1), np.int64)
    for label in LUNG_LABELS:
        out[:, label.value] = np.count_nonzero(view == label.value, axis=(1, 2))
    return out


def _slice_point(labels: np.ndarray, geometry: Geometry, axis: int, index: int, value: Optional[int],
                 per_slice: Optional[np.ndarray] = None) -> Tuple[float, float, float]:
    """LPS mm of the centre of lung ``value`` (any lung when None) on slice ``index`` along ``axis``;
    where the slice holds none, its centre on the nearest slice that does (``per_slice``: that lung's
    voxels per slice), moved onto this slice."""
    other = [a for a in range(3) if a != axis]  # array axes in the plane, as [k, j, i] indices

    def centre_on(k: int) -> Optional[List[float]]:
        plane = np.take(labels, k, axis=axis)
        mask = plane > 0 if value is None else plane == value
        return [float(w.mean()) for w in np.nonzero(mask)] if mask.any() else None

    centre = centre_on(index)
    if centre is None and per_slice is not None and per_slice.any():
        present = np.flatnonzero(per_slice)
        centre = centre_on(int(present[np.argmin(np.abs(present - index))]))
    if centre is None:
        centre = [(labels.shape[a] - 1) / 2 for a in other]
    kji = [0.0, 0.0, 0.0]
    kji[axis] = float(index)
    for a, c in zip(other, centre):
        kji[a] = c
    ijk = np.array(kji[::-1])
    m = geometry.ijk_to_lps()
    return tuple(float(v) for v in m[:3, :3] @ ijk + m[:3, 3])  # type: ignore[return-value]


def _gaps(present: np.ndarray) -> np.ndarray:
    """Indices where ``present`` is False between its first and last True."""
    idx = np.flatnonzero(present)
    if idx.size < 2:
        return np.zeros(0, int)
    inside = np.arange(idx[0], idx[-1] + 1)
    return inside[~present[inside]]


def build_review(labels: np.ndarray, geometry: Geometry, confidence: Optional[SliceConfidence],
                 flags: Sequence[Finding] = (), *, axis: Optional[int] = None, max_items: int = MAX_ITEMS,
                 min_score: float = MIN_SCORE, noisy_slices: Optional[Mapping[int, float]] = None) -> List[ReviewItem]:
    """The ranked review list (see the module docstring).

    Args:
        labels: ``[k, j, i]`` labelmap on ``geometry``.
        confidence: the run's :class:`SliceConfidence` (None: only gaps and flags are listed).
        flags: the plausibility findings (``lung_touches_border`` gets an item at its worst slice).
        noisy_slices: input slices smoothed for noise, with their noise in HU SD
            (:attr:`.inference.SegmentationResult.noisy_slices`); each gets an item, scored
            noise / :data:`NOISE_FULL_SCORE_HU`.
        axis: the input axis across axial slices (default: the confidence's, else the canonical one).
    """
    from .geometry import canonical_orientation

    labels = np.asarray(labels)
    if axis is None:
        axis = confidence.axis if confidence is not None else canonical_orientation(geometry).axes[0]
    items: List[ReviewItem] = []
    counts = _per_slice_counts(labels, axis)
    for label in LUNG_LABELS:
        per_slice = counts[:, label.value]
        for index in _gaps(per_slice > 0):
            items.append(ReviewItem(int(index), axis, label.key, "lung_gap",
                                    f"No {label.name.lower()} on this slice, although there is above and "
                                    "below it: a blank or corrupted slice, or a missed segment.", 1.0,
                                    _slice_point(labels, geometry, axis, int(index), label.value, per_slice)))
    for flag in flags:
        if flag.code == "lung_touches_border" and flag.lung:
            label = next(l for l in LUNG_LABELS if l.key == flag.lung)
            m = np.moveaxis(labels == label.value, axis, 0)  # [slice, a, b]
            border = (m[:, 0, :].sum(axis=1) + m[:, -1, :].sum(axis=1)
                      + m[:, :, 0].sum(axis=1) + m[:, :, -1].sum(axis=1))
            if border.any():
                index = int(np.argmax(border))
                items.append(ReviewItem(index, axis, label.key, "lung_touches_border",
                                        f"The {label.name.lower()} lies on the image border here: the field "
                                        "of view cuts it.", 1.0,
                                        _slice_point(labels, geometry, axis, index, label.value)))
    for flag in flags:
        if flag.code == "lung_base_low" and flag.lung:
            label = next(l for l in LUNG_LABELS if l.key == flag.lung)
            present = np.flatnonzero(counts[:, label.value])
            if present.size:
                # the lowest slice: canonical slices run inferior -> superior, against this axis if flipped
                orient = canonical_orientation(geometry)
                flipped = orient.flips[orient.axes.index(axis)] if axis in orient.axes else False
                index = int(present[-1] if flipped else present[0])
                items.append(ReviewItem(index, axis, label.key, "lung_base_low", flag.message, 1.0,
                                        _slice_point(labels, geometry, axis, index, label.value)))
    for index, noise in sorted((noisy_slices or {}).items()):
        items.append(ReviewItem(int(index), axis, None, "noisy_slice",
                                f"This slice is very noisy ({noise:.0f} HU SD on the model grid) and was smoothed "
                                "before segmentation: check the lungs here (a corrupted slice?).",
                                min(1.0, noise / NOISE_FULL_SCORE_HU),
                                _slice_point(labels, geometry, axis, int(index), None)))
    if confidence is not None:
        scores = confidence.scores(DEFAULT_SCORE)
        candidates = []
        for n, label in enumerate(LUNG_LABELS[:scores.shape[1]]):
            for index in np.flatnonzero(scores[:, n] >= min_score):
                candidates.append((float(scores[index, n]), int(index), label))
        candidates.sort(key=lambda c: -c[0])
        taken: Dict[str, List[int]] = {}
        for score, index, label in candidates:
            near = taken.setdefault(label.key, [])
            if any(abs(index - t) <= SUPPRESS_SLICES for t in near):
                continue
            near.append(index)
            items.append(ReviewItem(index, axis, label.key, "low_confidence",
                                    f"The network is unsure about the {label.name.lower()} here (expected "
                                    f"Dice error {score:.2f}).", min(1.0, score),
                                    _slice_point(labels, geometry, axis, index, label.value)))
            if len(items) >= 4 * max_items:
                break
    # a low base comes first: the gaps below a lung's base are what bowel gas taken for lung leaves
    order = {"lung_base_low": 0, "lung_gap": 1, "lung_touches_border": 2, "noisy_slice": 3, "low_confidence": 4}
    items.sort(key=lambda it: (-it.score, order.get(it.reason, 9), it.slice_index))
    return items[:max_items]


def review_flags(result, recheck: bool = True) -> List[Finding]:
    """The plausibility flags of a result: its warnings (as :class:`Finding`), plus -- with ``recheck``
    -- the labelmap's own :func:`plausibility_findings` that the warnings do not already hold (same code
    and lung). A result of :func:`.inference.segment_array` already holds them (``recheck=False`` saves
    the passes over the volume)."""
    flags = [Finding.from_dict(w) for w in result.warnings]
    if not recheck:
        return flags
    have = {(f.code, f.lung) for f in flags}
    for f in plausibility_findings(result.labels, result.geometry):
        if (f.code, f.lung) not in have:
            flags.append(f)
            have.add((f.code, f.lung))
    return flags


def add_review(result, volume_hu: np.ndarray, recheck: bool = True) -> None:
    """Fill a :class:`SegmentationResult`'s ``measures``, ``flags``, ``review`` and ``report_images`` (the few
    slices the one-page report shows), in place. ``recheck``: see :func:`review_flags`."""
    from .quantify import measure_lungs

    result.measures = measure_lungs(volume_hu, result.labels, result.geometry)
    result.flags = review_flags(result, recheck)
    result.review = build_review(result.labels, result.geometry, result.confidence, result.flags,
                                 noisy_slices=getattr(result, "noisy_slices", None))
    from .report import report_images

    result.report_images = report_images(volume_hu, result)


def format_review(result) -> str:
    """The measures, per-lung confidence and review list as plain text (what ``lungseg segment`` prints)."""
    import math

    lines: List[str] = []
    m = result.measures
    conf = result.confidence.lung_confidence() if result.confidence is not None else {}
    if m is not None:
        t = m.thresholds
        lines.append(f"{'':12s} {'mL':>7s} {'mean HU':>8s} {'Perc' + format(t.percentile, 'g'):>7s} "
                     f"{'%LAA' + format(t.laa_low, 'g'):>9s} {'%HAA':>6s} {'confidence':>10s}")
        for r in m.regions:
            c = conf.get(r.region, float("nan"))
            fmt = (lambda v, spec: ("-" if not math.isfinite(v) else format(v, spec)))
            lines.append(f"{r.name:12s} {r.volume_ml:7.0f} {fmt(r.mean_hu, '8.0f'):>8s} {fmt(r.perc_hu, '7.0f'):>7s} "
                         f"{fmt(r.laa_low_pct, '9.1f'):>9s} {fmt(r.haa_pct, '6.1f'):>6s} {fmt(c, '10.3f'):>10s}")
        lines.append("(research measures: kernel, dose and slice thickness change them)")
    if result.review:
        names = {label.key: label.name.lower() for label in LUNG_LABELS}
        lines.append("Review these slices (most urgent first):")
        for n, it in enumerate(result.review, 1):
            ras = ", ".join(f"{v:.0f}" for v in it.position_ras)
            lines.append(f"  {n:2d}. slice {it.slice_index:4d}  {names.get(it.lung, 'both lungs') if it.lung else '':10s} "
                         f"{it.reason.replace('_', ' '):20s} score {it.score:.2f}  RAS ({ras}) mm")
    elif result.confidence is not None:
        lines.append("Review these slices: nothing stands out.")
    return "\n".join(lines)


__all__ = ["MAX_ITEMS", "MIN_SCORE", "ReviewItem", "add_review", "build_review", "format_review",
           "review_flags"]
