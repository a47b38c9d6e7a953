"""Named warnings ("findings") about an input and its result, and the voxel-spacing range LungSeg accepts.

A :class:`Finding` is one warning with a stable machine-readable ``code`` and a sentence for people
(``str(finding)`` is that sentence). They are printed by ``lungseg segment``, returned by the API
(``SegmentationResult.warnings``), sent by the worker (``{"code", "message", "lung"}`` in its ``done``
event), shown in 3D Slicer's panel, and turned into a failure by ``--strict`` (exit 7, nothing
written). Review tools reuse :func:`plausibility_findings` on any labelmap as their plausibility flags.

The codes are part of the public API: new ones may be added, existing ones keep their meaning
(see :data:`CODES`).

Thresholds, and why:

* **Pixel spacing** (in-plane): the model sees every slice resampled to its grid's pixels (1.5 mm for
  the bundled model); it is validated on CT reconstructed at 0.5–4 mm, i.e. 1/3 to 8/3 of its grid
  pixel (:data:`SUPPORTED_PIXEL_RATIO`). 0.3–0.5 mm and 4–6 mm (ratios 0.2 and 4,
  :data:`ACCEPTED_PIXEL_RATIO`) still show a chest at a recognisable scale and are accepted with a
  ``spacing_unusual`` warning; beyond that a 512-pixel slice spans under 154 mm or over 3 m, which is no
  chest CT: the header's spacing is wrong, so the input is refused (exit 3) rather than segmented into
  nonsense volumes. The range is relative to the model's grid so that a model trained on another grid
  keeps the same resampling factors.
* **Slice spacing**: supported 0.6–5 mm (:data:`SUPPORTED_SLICE_MM`); the network is 2-D, so thicker
  slices (to 10 mm, older protocols) are segmented but volumes lose accuracy (``thick_slices``);
  under 0.6 mm is ``spacing_unusual``. Beyond 0.3–10 mm (:data:`ACCEPTED_SLICE_MM`) it is refused.
* **Volumes**: adult lungs hold at most about 4–5 L each (total lung capacity up to ~8 L in tall men,
  more with emphysema), so a lung above :data:`MAX_LUNG_ML` is beyond adult anatomy; the right lung
  is usually 1.1–1.3 times the left, so a right/left ratio outside :data:`RATIO_RANGE` means a lung
  is mostly missed or mislabelled (or one was removed); a lung under :data:`MIN_LUNG_ML` on a field
  of view that holds a chest (:data:`CHEST_FOV_MM`) is missed or a remnant.
* **Lung bases**: a lung reaching :data:`BASE_DIFFERENCE_MM` below the other has likely taken bowel or
  stomach gas under its base for lung (``lung_base_low``, named for review at that base).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from ..defaults import GRID_PIXEL_MM
from ..errors import InputError
from ..labels import LUNG_LABELS
from .counts import label_counts, label_extents
from .geometry import Geometry, canonical_orientation

#: Every finding code and what it means (the public list; codes are never renamed).
CODES: Dict[str, str] = {
    "no_lung": "no lung voxel was found",
    "lung_missing": "one lung is missing while the other was found (lung = the missing one)",
    "lung_too_small": "a lung is under MIN_LUNG_ML on a chest-sized field of view",
    "volume_out_of_range": "a lung is larger than MAX_LUNG_ML (beyond adult anatomy)",
    "ratio_out_of_range": "the right/left volume ratio lies outside RATIO_RANGE",
    "lung_touches_border": "a lung reaches the in-plane image border: the field of view cuts it",
    "lung_base_low": "a lung reaches BASE_DIFFERENCE_MM or more below the other (lung = the lower one)",
    "thick_slices": "slices are thicker than the supported range (volumes less accurate)",
    "oblique": "the image axes are tilted against the patient axes by more than 1 degree",
    "non_hu_override": "the intensities failed the Hounsfield-unit check, which was switched off",
    "non_finite_voxels": "the image holds NaN or infinite voxels (treated as outside the field of view)",
    "spacing_unusual": "the voxel spacing lies outside the supported range but was accepted",
    "noisy_slices": "slices noisier than the model was trained on were smoothed before segmentation",
    "model_not_learned": "the model's card says training did not learn a lung (training.not_learned)",
    # run-level (the worker):
    "no_gpu": "a GPU was asked for but TensorFlow sees none; the CPU was used",
}

#: In-plane pixel spacing the model is validated on, and the wider range accepted with a warning, as
#: multiples of the model's grid pixel (``GRID_PIXEL_MM``, 1.5 mm: 0.5-4 mm and 0.3-6 mm).
SUPPORTED_PIXEL_RATIO: Tuple[float, float] = (1 / 3, 8 / 3)
ACCEPTED_PIXEL_RATIO: Tuple[float, float] = (0.2, 4.0)
#: The same for the bundled model's grid, in mm.
SUPPORTED_PIXEL_MM: Tuple[float, float] = tuple(r * GRID_PIXEL_MM for r in SUPPORTED_PIXEL_RATIO)
ACCEPTED_PIXEL_MM: Tuple[float, float] = tuple(r * GRID_PIXEL_MM for r in ACCEPTED_PIXEL_RATIO)
#: Slice spacing (mm) supported, and accepted with a warning.
SUPPORTED_SLICE_MM: Tuple[float, float] = (0.6, 5.0)
ACCEPTED_SLICE_MM: Tuple[float, float] = (0.3, 10.0)
#: A lung smaller than this (mL) on a chest-sized field of view is flagged.
MIN_LUNG_ML = 5.0
#: A lung larger than this (mL) is beyond adult anatomy.
MAX_LUNG_ML = 6000.0
#: Accepted right/left lung volume ratio.
RATIO_RANGE: Tuple[float, float] = (0.3, 3.0)
#: A field of view at least this large (in-plane x in-plane x craniocaudal, mm) can hold both lungs.
CHEST_FOV_MM: Tuple[float, float, float] = (200.0, 200.0, 100.0)
#: Lung voxels on the in-plane border covering at least this area (mm^2) flag a cut lung (a stray
#: voxel does not).
BORDER_AREA_MM2 = 50.0
#: One lung's lowest slice this far (mm) below the other's flags that lung's base: the hemidiaphragms
#: normally differ by 1-3 cm and a raised one by a few cm more, while bowel or stomach gas taken for lung
#: hangs below the base (96 mL of colon reached 93 mm below the other lung on a leave-one-out fold,
#: ``benchmarks/results/lopo_position/rerun_stop16``); the three shared references differ by 3-15 mm.
BASE_DIFFERENCE_MM = 60.0
#: Obliquity (degrees) above which the input is flagged.
OBLIQUE_DEG = 1.0


@dataclass(frozen=True)
class Finding:
    """One named warning about an input or a result.

    Attributes:
        code: stable identifier, one of :data:`CODES` (e.g. ``"lung_missing"``).
        message: one sentence for people, naming the numbers involved.
        lung: ``"right"``/``"left"`` (the key of the label in :mod:`LungSegLib.labels`) when the
            finding is about one lung, else None.
    """

    code: str
    message: str
    lung: Optional[str] = None

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> Dict[str, Any]:
        """JSON form: ``{"code": ..., "message": ..., "lung": ...}`` (the worker's ``done`` event)."""
        return {"code": self.code, "message": self.message, "lung": self.lung}

    @classmethod
    def from_dict(cls, data: Any) -> "Finding":
        """Inverse of :meth:`to_dict`; a plain string (an older worker) becomes code ``"warning"``."""
        if isinstance(data, Finding):
            return data
        if isinstance(data, Mapping):
            return cls(str(data.get("code", "warning")), str(data.get("message", "")),
                       data.get("lung") or None)
        return cls("warning", str(data))


def _range(values: Tuple[float, float]) -> str:
    return f"{values[0]:.3g}-{values[1]:.3g} mm"


def check_spacing(geometry: Geometry, name: str = "The image",
                  grid_pixel_mm: float = GRID_PIXEL_MM) -> List[Finding]:
    """Refuse a voxel spacing no chest CT has; return warnings for spacings outside the supported range.

    Raises :class:`InputError` (exit 3) naming the spacing and the accepted range when the in-plane
    pixel spacing lies outside :data:`ACCEPTED_PIXEL_RATIO` times ``grid_pixel_mm`` (the model's grid
    pixel; 0.3-6 mm for the bundled model) or the slice spacing outside :data:`ACCEPTED_SLICE_MM` (a
    wrong header: segmenting would give nonsense volumes). Returns ``spacing_unusual`` /
    ``thick_slices`` findings for the margins.
    """
    orientation = canonical_orientation(geometry)
    rows_mm, cols_mm = orientation.pixel_spacing_mm
    slice_mm = orientation.slice_spacing_mm
    findings: List[Finding] = []
    pixel_accepted = tuple(r * grid_pixel_mm for r in ACCEPTED_PIXEL_RATIO)
    pixel_supported = tuple(r * grid_pixel_mm for r in SUPPORTED_PIXEL_RATIO)
    for what, value, accepted, supported in (
            ("pixel spacing", (rows_mm, cols_mm), pixel_accepted, pixel_supported),
            ("slice spacing", (slice_mm,), ACCEPTED_SLICE_MM, SUPPORTED_SLICE_MM)):
        text = " x ".join(f"{v:g}" for v in value) + " mm"
        if min(value) < accepted[0] or max(value) > accepted[1]:
            raise InputError(
                f"{name} has a {what} of {text}, outside the {_range(accepted)} LungSeg accepts (it is "
                f"validated on {_range(supported)}): the header's spacing is probably wrong. Fix the "
                "spacing in the file (or export the CT again) and retry.")
        if what == "slice spacing" and max(value) > supported[1]:
            findings.append(Finding(
                "thick_slices", f"Slices are {text} apart, thicker than the {_range(supported)} LungSeg is "
                                "validated on: lung volumes are less accurate."))
        elif min(value) < supported[0] or max(value) > supported[1]:
            findings.append(Finding(
                "spacing_unusual", f"The {what} is {text}, outside the {_range(supported)} LungSeg is "
                                   "validated on: check the result."))
    return findings


def input_findings(geometry: Geometry, *, non_finite_voxels: int = 0, total_voxels: int = 0,
                   non_hu_reason: Optional[str] = None, grid_pixel_mm: float = GRID_PIXEL_MM) -> List[Finding]:
    """Warnings about the input alone (never raises): spacing, slice thickness, obliquity, non-finite
    voxels (``non_finite_voxels`` of ``total_voxels``) and a Hounsfield-unit check that would have
    refused the image (``non_hu_reason``, its message) but was switched off."""
    findings: List[Finding] = []
    try:
        findings += check_spacing(geometry, grid_pixel_mm=grid_pixel_mm)
    except InputError as exc:  # reported, not refused, when only reviewing
        findings.append(Finding("spacing_unusual", str(exc)))
    obliquity = canonical_orientation(geometry).obliquity_deg
    if obliquity > OBLIQUE_DEG:
        findings.append(Finding(
            "oblique", f"The volume is oblique by {obliquity:.1f} degrees: it is segmented on its own "
                       "slices, taken as the nearest axial orientation."))
    if non_hu_reason:
        findings.append(Finding(
            "non_hu_override", "The Hounsfield-unit check was switched off and would have refused this "
                               f"image: {non_hu_reason}"))
    if non_finite_voxels:
        share = f" ({100.0 * non_finite_voxels / total_voxels:.2g}% of the image)" if total_voxels else ""
        findings.append(Finding(
            "non_finite_voxels", f"{non_finite_voxels} voxels{share} are NaN or infinite: they were treated "
                                 "as outside the field of view (air) and are never labelled lung."))
    return findings


def result_findings(labels: np.ndarray, geometry: Geometry) -> List[Finding]:
    """Warnings about a right/left lung labelmap ``[k, j, i]`` on ``geometry``: no lung, a lung missing
    or too small, a volume beyond adult anatomy, a right/left ratio out of range, a lung cut by the
    in-plane image border, a lung reaching far below the other."""
    labels = np.asarray(labels)
    voxel_ml = geometry.voxel_volume_ml()
    counts = label_counts(labels, max(l.value for l in LUNG_LABELS) + 1)  # bounded memory
    volumes = {l.key: float(counts[l.value]) * voxel_ml for l in LUNG_LABELS}
    names = {l.key: l.name.lower() for l in LUNG_LABELS}
    if not any(volumes.values()):
        return [Finding("no_lung", "No lung was found in this image.")]
    findings: List[Finding] = []
    orientation = canonical_orientation(geometry)
    extent = [n * s for n, s in zip(orientation.to_canonical(labels).shape, orientation.spacing_zyx)]
    chest_fov = (extent[1] >= CHEST_FOV_MM[0] and extent[2] >= CHEST_FOV_MM[1]
                 and extent[0] >= CHEST_FOV_MM[2])
    for key, ml in volumes.items():
        if ml == 0:
            findings.append(Finding("lung_missing", f"No {names[key]} was found (the other lung was).", key))
        elif ml < MIN_LUNG_ML and chest_fov:
            findings.append(Finding(
                "lung_too_small", f"The {names[key]} is only {ml:.1f} mL on a field of view that holds a "
                                  f"chest (under {MIN_LUNG_ML:g} mL): missed or a remnant?", key))
        elif ml > MAX_LUNG_ML:
            findings.append(Finding(
                "volume_out_of_range", f"The {names[key]} is {ml:.0f} mL, beyond adult anatomy (over "
                                       f"{MAX_LUNG_ML:g} mL): check the voxel spacing and the result.", key))
    right, left = volumes.get("right", 0.0), volumes.get("left", 0.0)
    if right > 0 and left > 0 and not any(f.code == "lung_too_small" for f in findings):
        ratio = right / left  # (a lung already flagged as too small needs no second warning)
        if not RATIO_RANGE[0] <= ratio <= RATIO_RANGE[1]:
            findings.append(Finding(
                "ratio_out_of_range", f"The right/left lung volume ratio is {ratio:.2f} ({right:.0f} / "
                                      f"{left:.0f} mL), outside {RATIO_RANGE[0]:g}-{RATIO_RANGE[1]:g}: "
                                      "a lung is partly missed or mislabelled."))
    canonical = orientation.to_canonical(labels)
    findings += _border_findings(canonical, orientation.spacing_zyx)
    if not any(f.code in ("lung_missing", "lung_too_small") for f in findings):  # a remnant has no base to compare
        findings += _base_findings(canonical, orientation.spacing_zyx[0])
    return findings


def lowest_slices(canonical: np.ndarray) -> Dict[str, int]:
    """Per lung (label key), its lowest canonical slice (canonical slices run inferior -> superior); lungs
    that are absent are left out."""
    extents = label_extents(canonical, [l.value for l in LUNG_LABELS])
    return {l.key: extents[l.value][0][0] for l in LUNG_LABELS if extents[l.value] is not None}


def _base_findings(canonical: np.ndarray, slice_mm: float) -> List[Finding]:
    """A lung whose base lies :data:`BASE_DIFFERENCE_MM` or more below the other's."""
    lowest = lowest_slices(canonical)
    if len(lowest) < 2:
        return []
    (low_key, low), (high_key, high) = sorted(lowest.items(), key=lambda item: item[1])
    drop = (high - low) * float(slice_mm)
    if drop < BASE_DIFFERENCE_MM:
        return []
    names = {l.key: l.name.lower() for l in LUNG_LABELS}
    return [Finding("lung_base_low", f"The {names[low_key]} reaches {drop:.0f} mm lower than the {names[high_key]} "
                                     f"(over {BASE_DIFFERENCE_MM:g} mm): is its lowest part bowel or stomach gas "
                                     "under the diaphragm? Check its base.", low_key)]


def _border_findings(canonical: np.ndarray, spacing_zyx: Tuple[float, float, float]) -> List[Finding]:
    """Lungs whose voxels on the in-plane image border (first/last row and column of every slice)
    cover at least :data:`BORDER_AREA_MM2`."""
    dz, dy, dx = spacing_zyx
    findings = []
    for label in LUNG_LABELS:
        area = 0.0
        for edge, along in ((canonical[:, 0, :], dx), (canonical[:, -1, :], dx),
                            (canonical[:, :, 0], dy), (canonical[:, :, -1], dy)):
            area += float(np.count_nonzero(edge == label.value)) * along * dz
        if area >= BORDER_AREA_MM2:
            findings.append(Finding(
                "lung_touches_border", f"The {label.name.lower()} reaches the image border ({area / 100:.1f} "
                                       "cm^2): the field of view cuts it, so its volume is too small.",
                label.key))
    return findings


def plausibility_findings(labels: np.ndarray, geometry: Geometry, *, non_finite_voxels: int = 0,
                          non_hu_reason: Optional[str] = None,
                          grid_pixel_mm: float = GRID_PIXEL_MM) -> List[Finding]:
    """All warnings about a labelmap and its grid: :func:`input_findings` then :func:`result_findings`.

    Args:
        labels: ``[k, j, i]`` labelmap (0 background, 1 right lung, 2 left lung) on ``geometry``.
        geometry: the voxel grid (spacing in mm, LPS direction).
        non_finite_voxels: how many input voxels were NaN/infinite (0: none, or unknown).
        non_hu_reason: why the Hounsfield-unit check would have refused the input, if it was skipped.
        grid_pixel_mm: the model grid's pixel (mm) the supported pixel spacing is relative to.

    Returns:
        The findings, input ones first; an empty list when nothing looks wrong.
    """
    return (input_findings(geometry, non_finite_voxels=non_finite_voxels, total_voxels=int(np.size(labels)),
                           non_hu_reason=non_hu_reason, grid_pixel_mm=grid_pixel_mm)
            + result_findings(labels, geometry))


def findings_summary(findings: List[Finding]) -> str:
    """One line listing the findings as ``code: message`` (error messages, logs)."""
    return "; ".join(f"{f.code}: {f.message}" for f in findings)
