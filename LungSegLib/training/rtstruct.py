"""Turning a DICOM CT series and its RTSTRUCT into a LungSeg case: ``ct.nrrd``, ``label.nrrd``, ``info.json``.

Lung structures are found by name (case-insensitive, surrounding and repeated spaces ignored) and their
closed planar contours are rasterised slice by slice onto the CT grid with an even-odd fill: a voxel
belongs to a structure on a slice when its centre lies inside an odd number of that slice's contours,
so inner contours cut holes. A contour nearly identical to one already drawn on the same slice (some
planning systems export contours twice) is dropped, since even-odd filling would otherwise cancel
both. pydicom is needed (``pip install 'lungseg[train]'``) and imported only here.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError, OutputError
from ..core.atomic import atomic_path
from ..core.geometry import Geometry
from ..labels import LUNG_LABELS, by_side

DEFAULT_RIGHT_NAMES = ("Lung R", "RT LUNG", "Lung_R", "Right Lung", "LUNG_RT", "R Lung", "Lung Right",
                       "Lung-R", "Lung_Right", "Right_Lung", "RLung")
DEFAULT_LEFT_NAMES = ("Lung L", "LT LUNG", "Lung_L", "Left Lung", "LUNG_LT", "L Lung", "Lung Left",
                      "Lung-L", "Lung_Left", "Left_Lung", "LLung")
DEFAULT_LUNG_NAMES = ("Lungs", "Lung", "Both Lungs", "Lungs_Both", "Lung_Both", "Lungs Total",
                      "Lung Total", "Total Lung", "Lung_Total")

#: Two contours on one slice whose filled areas overlap by at least this IoU are one contour drawn twice.
DUPLICATE_IOU = 0.9
#: A contour whose points lie more than this far (in slices) from one CT slice is not drawn.
MAX_SLICE_OFFSET = 0.5
CASE_FILES = ("ct.nrrd", "label.nrrd", "info.json")
#: The patient sides a structure can be drawn for (the label table's lung labels, in label order).
SIDES = tuple(label.side for label in LUNG_LABELS)


def _norm(name: str) -> str:
    return " ".join(str(name).casefold().split())


@dataclass(frozen=True)
class RoiNames:
    """Structure names for the right lung, the left lung and both lungs in one structure."""

    right: Sequence[str] = DEFAULT_RIGHT_NAMES
    left: Sequence[str] = DEFAULT_LEFT_NAMES
    lung: Sequence[str] = DEFAULT_LUNG_NAMES

    def role(self, name: str) -> Optional[str]:
        """"right", "left", "lung" or None for a structure name."""
        n = _norm(name)
        for role, names in (("right", self.right), ("left", self.left), ("lung", self.lung)):
            if n in {_norm(x) for x in names}:
                return role
        return None


@dataclass
class Structure:
    """One ROI of the structure set: its number, name and closed planar contours (``(N, 3)`` LPS mm)."""

    number: int
    name: str
    contours: List[np.ndarray] = field(default_factory=list)
    frame_of_reference: str = ""
    not_closed_planar: int = 0


def read_rtstruct(path: os.PathLike) -> Tuple[List[Structure], str]:
    """The structures of an RTSTRUCT file and its patient ID. Raises :class:`InputError` for a file
    that is not a readable RTSTRUCT."""
    try:
        import pydicom
    except ImportError as exc:
        raise InputError("Reading RTSTRUCT files needs pydicom: pip install 'lungseg[train]'.") from exc
    path = Path(path)
    if not path.is_file():
        raise InputError(f"RTSTRUCT file not found: {path}")
    try:
        ds = pydicom.dcmread(str(path), force=True)
    except Exception as exc:  # pydicom raises many types for a damaged file
        raise InputError(f"Cannot read {path.name} as DICOM: {exc}") from exc
    modality = str(getattr(ds, "Modality", "")).upper()
    if modality != "RTSTRUCT" or "StructureSetROISequence" not in ds:
        raise InputError(f"{path.name} is not an RTSTRUCT (modality {modality or 'unknown'}); give the "
                         "radiotherapy structure set file.")
    structures: Dict[int, Structure] = {}
    for item in ds.StructureSetROISequence:
        number = int(item.ROINumber)
        structures[number] = Structure(number, str(getattr(item, "ROIName", f"ROI {number}")),
                                       frame_of_reference=str(getattr(item, "ReferencedFrameOfReferenceUID", "")))
    for roi in getattr(ds, "ROIContourSequence", ()):
        number = int(roi.ReferencedROINumber)
        structure = structures.setdefault(number, Structure(number, f"ROI {number}"))
        for contour in getattr(roi, "ContourSequence", ()):
            kind = str(getattr(contour, "ContourGeometricType", "CLOSED_PLANAR")).upper()
            data = np.asarray(getattr(contour, "ContourData", ()), dtype=float)
            if kind != "CLOSED_PLANAR" or data.size < 9 or data.size % 3:
                structure.not_closed_planar += 1
                continue
            structure.contours.append(data.reshape(-1, 3))
    return list(structures.values()), str(getattr(ds, "PatientID", ""))


def polygon_mask(points_ij: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    """Even-odd fill of one polygon given in continuous (column i, row j) voxel indices.

    A pixel ``[j, i]`` is inside when the horizontal ray from its centre crosses the outline an odd
    number of times; edges follow the half-open rule (a centre exactly on a left edge is in, on a right
    edge out), so polygons that share an edge do not both claim its pixels.
    """
    rows, cols = int(shape[0]), int(shape[1])
    mask = np.zeros((rows, cols), dtype=bool)
    pts = np.asarray(points_ij, dtype=float)
    x0, y0 = pts[:, 0], pts[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    j_lo = max(0, int(np.ceil(y0.min())))
    j_hi = min(rows - 1, int(np.floor(y0.max())))
    if j_hi < j_lo:
        return mask
    ys = np.arange(j_lo, j_hi + 1, dtype=float)[:, None]
    crosses = ((y0 <= ys) & (ys < y1)) | ((y1 <= ys) & (ys < y0))
    dy = np.where(y1 != y0, y1 - y0, 1.0)
    xs = x0 + (ys - y0) * (x1 - x0) / dy
    r, e = np.nonzero(crosses)
    start = np.clip(np.ceil(xs[r, e]).astype(np.int64), 0, cols)
    toggles = np.zeros((ys.shape[0], cols + 1), dtype=np.int32)
    np.add.at(toggles, (r, start), 1)
    mask[j_lo:j_hi + 1] = (np.cumsum(toggles, axis=1)[:, :cols] % 2) == 1
    return mask


@dataclass
class RasterStats:
    """What happened to a structure's contours."""

    drawn: int = 0
    duplicates: int = 0
    skipped: List[str] = field(default_factory=list)


def rasterise(structure: Structure, geometry: Geometry, shape: Tuple[int, int, int]
              ) -> Tuple[np.ndarray, RasterStats]:
    """A boolean ``[k, j, i]`` mask of a structure on the CT grid (even-odd per slice, duplicates dropped).

    Contour points (LPS mm) are mapped to continuous voxel indices through the grid's geometry; each
    contour must lie in one slice of the grid (within :data:`MAX_SLICE_OFFSET` slices) and inside it.
    """
    lps_to_ijk = np.linalg.inv(geometry.ijk_to_lps())
    mask = np.zeros(shape, dtype=bool)
    stats = RasterStats()
    drawn_on: Dict[int, List[np.ndarray]] = {}
    for n, contour in enumerate(structure.contours):
        ijk = (lps_to_ijk[:3, :3] @ contour.T).T + lps_to_ijk[:3, 3]
        k = int(np.round(ijk[:, 2].mean()))
        if np.abs(ijk[:, 2] - k).max() > MAX_SLICE_OFFSET:
            stats.skipped.append(f"{structure.name} contour {n}: not in one axial slice of the CT "
                                 f"(spans slices {ijk[:, 2].min():.1f}..{ijk[:, 2].max():.1f})")
            continue
        if not 0 <= k < shape[0]:
            stats.skipped.append(f"{structure.name} contour {n}: at slice {k}, outside the CT (0..{shape[0] - 1})")
            continue
        filled = polygon_mask(ijk[:, :2], shape[1:])
        if not filled.any():
            stats.skipped.append(f"{structure.name} contour {n}: covers no voxel centre on slice {k}")
            continue
        if any(_iou(filled, other) >= DUPLICATE_IOU for other in drawn_on.get(k, ())):
            stats.duplicates += 1
            continue
        drawn_on.setdefault(k, []).append(filled)
        mask[k] ^= filled
        stats.drawn += 1
    return mask, stats


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


@dataclass
class ImportReport:
    """What ``import_rtstruct`` matched, ignored and wrote (also saved as ``info.json``)."""

    case: str
    patient_id: str
    ct_source: str
    rtstruct_file: str
    shape_zyx: List[int]
    spacing_xyz: List[float]
    origin: List[float]
    direction: List[float]
    rtstruct_rois: List[str]
    used_right: List[str]
    used_left: List[str]
    used_combined: List[str]
    ignored_rois: List[str]
    contours_drawn: int
    contours_skipped: int
    duplicates_dropped: int
    skipped_details: List[str]
    overlap_voxels: int
    vol_right_ml: float
    vol_left_ml: float
    slices_with_lung: int
    centroid_x_right: Optional[float]
    centroid_x_left: Optional[float]
    lr_consistent_LPS: Optional[bool]
    warnings: List[str] = field(default_factory=list)
    files: List[str] = field(default_factory=list)

    def to_info(self) -> Dict:
        return asdict(self)

    def summary(self) -> str:
        """A few lines for the terminal."""
        lines = [f"Case {self.case} (patient {self.patient_id or '?'}): CT {self.shape_zyx[2]}x"
                 f"{self.shape_zyx[1]}x{self.shape_zyx[0]} voxels of "
                 + "x".join(f"{s:.3g}" for s in self.spacing_xyz) + " mm",
                 f"  structures: {', '.join(self.rtstruct_rois) or 'none'}",
                 f"  right lung from: {', '.join(self.used_right) or '-'}; left lung from: "
                 f"{', '.join(self.used_left) or '-'}"
                 + (f"; split by side: {', '.join(self.used_combined)}" if self.used_combined else ""),
                 f"  ignored: {', '.join(self.ignored_rois) or '-'}",
                 f"  contours drawn {self.contours_drawn}, skipped {self.contours_skipped}, near-duplicates "
                 f"dropped {self.duplicates_dropped}; voxels in both lungs {self.overlap_voxels}",
                 f"  volumes: right {self.vol_right_ml:.1f} mL, left {self.vol_left_ml:.1f} mL on "
                 f"{self.slices_with_lung} slices"]
        lines += [f"  skipped: {s}" for s in self.skipped_details[:10]]
        if len(self.skipped_details) > 10:
            lines.append(f"  ... and {len(self.skipped_details) - 10} more (see info.json)")
        lines += [f"warning: {w}" for w in self.warnings]
        if self.files:
            lines.append("Wrote " + ", ".join(self.files))
        return "\n".join(lines)


def _ct_frame_of_reference(ct_dir: Path) -> str:
    import pydicom

    from ..core.imageio import _dicom_series

    _, files = _dicom_series(ct_dir)
    header = pydicom.dcmread(files[0], stop_before_pixels=True, force=True)
    return str(getattr(header, "FrameOfReferenceUID", ""))


def _centroid_x(mask: np.ndarray, geometry: Geometry) -> Optional[float]:
    from ..core.geometry import centroid_lps

    c = centroid_lps(mask, geometry)
    return None if c is None else round(float(c[0]), 1)


def _roles(structures: Sequence[Structure], names: RoiNames) -> Tuple[Dict[str, List[Structure]], List[str]]:
    """The structures per role ("right", "left", "lung") and the names of those that match none;
    :class:`InputError` when no structure matches any lung name."""
    roles: Dict[str, List[Structure]] = {"right": [], "left": [], "lung": []}
    ignored = []
    for s in structures:
        role = names.role(s.name)
        if role is None:
            ignored.append(s.name)
        else:
            roles[role].append(s)
    if not any(roles.values()):
        raise InputError("No lung structure found among: " + (", ".join(s.name for s in structures) or "none")
                         + ". Name the right/left lung structures with --right-names / --left-names, or a "
                           "structure of both lungs with --lung-names.")
    return roles, ignored


def _draw(group: List[Structure], geometry: Geometry, shape: Tuple[int, int, int], info: Dict) -> np.ndarray:
    """The union of a group's rasterised structures; counts and skipped contours go into ``info``."""
    union = np.zeros(shape, dtype=bool)
    for s in group:
        mask, stats = rasterise(s, geometry, shape)
        union |= mask
        info["contours_drawn"] += stats.drawn
        info["duplicates_dropped"] += stats.duplicates
        info["contours_skipped"] += len(stats.skipped) + s.not_closed_planar
        info["skipped_details"] += stats.skipped
        if s.not_closed_planar:
            info["skipped_details"].append(f"{s.name}: {s.not_closed_planar} contour(s) not CLOSED_PLANAR")
        if not mask.any():
            info["warnings"].append(f"structure {s.name!r} has no drawable contour on this CT")
    return union


def _side_masks(roles: Dict[str, List[Structure]], geometry: Geometry, shape: Tuple[int, int, int],
                info: Dict) -> Dict[str, np.ndarray]:
    """A mask per patient side: side-specific structures first, a structure of both lungs for the sides
    without one (split by patient side when both lack one), an empty mask (and a warning) otherwise."""
    from ..core.geometry import canonical_orientation
    from ..core.postprocess import split_by_side

    side_masks: Dict[str, np.ndarray] = {}
    for side in SIDES:
        if roles[side]:
            side_masks[side] = _draw(roles[side], geometry, shape, info)
            info[f"used_{side}"] = [s.name for s in roles[side]]
    missing = [side for side in SIDES if side not in side_masks]
    if roles["lung"] and missing:
        combined = _draw(roles["lung"], geometry, shape, info)
        info["used_combined"] = [s.name for s in roles["lung"]]
        if len(missing) == 2:
            o = canonical_orientation(geometry)
            split = o.from_canonical(split_by_side(o.to_canonical(combined)))
            for side in SIDES:
                side_masks[side] = split == by_side(side).value
        else:
            known = "left" if missing[0] == "right" else "right"
            side_masks[missing[0]] = combined & ~side_masks[known]
    elif roles["lung"]:
        info["ignored_rois"] += [s.name for s in roles["lung"]]
    for side in SIDES:
        if side not in side_masks:
            info["warnings"].append(f"no {side} lung structure: the {side} lung is left unlabelled")
            side_masks[side] = np.zeros(shape, dtype=bool)
    return side_masks


def labels_from_structures(structures: Sequence[Structure], geometry: Geometry, shape: Tuple[int, int, int],
                           names: RoiNames = RoiNames()) -> Tuple[np.ndarray, Dict]:
    """Rasterise the lung structures into a uint8 ``[k, j, i]`` labelmap (0 / 1 right / 2 left).

    Side-specific structures win; a structure of both lungs is used for a side that has none and split
    by patient side (on the canonical stack). Voxels claimed by both sides become background (and are
    counted). Returns the labels and a dict of what was used/ignored for :class:`ImportReport`.
    Raises :class:`InputError` when no structure matches any lung name.
    """
    roles, ignored = _roles(structures, names)
    info: Dict = {"used_right": [], "used_left": [], "used_combined": [], "ignored_rois": ignored,
                  "contours_drawn": 0, "contours_skipped": 0, "duplicates_dropped": 0, "skipped_details": [],
                  "warnings": []}
    side_masks = _side_masks(roles, geometry, shape, info)
    overlap = side_masks["right"] & side_masks["left"]
    labels = np.zeros(shape, dtype=np.uint8)
    for side in SIDES:
        labels[side_masks[side] & ~overlap] = by_side(side).value
    info["overlap_voxels"] = int(overlap.sum())
    if info["overlap_voxels"]:
        info["warnings"].append(f"{info['overlap_voxels']} voxels lie in both lungs' contours; they are "
                                "left as background")
    return labels, info


def _check_frames(structures: Sequence[Structure], names: RoiNames, ct_dir: Path, rtstruct_path: os.PathLike,
                  info_warnings: List[str]) -> None:
    """Refuse lung structures drawn on another frame of reference than the CT; warn when either has none."""
    ct_frame = _ct_frame_of_reference(ct_dir)
    frames = {s.frame_of_reference for s in structures if s.frame_of_reference}
    lung_frames = {s.frame_of_reference for s in structures if names.role(s.name) and s.frame_of_reference}
    if ct_frame and lung_frames and ct_frame not in lung_frames:
        raise InputError(f"The lung structures of {Path(rtstruct_path).name} were drawn on another frame of "
                         f"reference ({', '.join(sorted(lung_frames))}) than the CT in {ct_dir} ({ct_frame}): "
                         "give the CT series the structure set belongs to.")
    if not ct_frame or not frames:
        info_warnings.append("the CT or the structure set has no frame of reference UID: cannot check that "
                             "they belong together")


def _report(labels: np.ndarray, info: Dict, geometry: Geometry, structures: Sequence[Structure],
            patient_id: str, ct_dir: Path, rtstruct_path: os.PathLike, out_dir: Path,
            targets: Sequence[Path]) -> ImportReport:
    """The :class:`ImportReport` of a rasterised case (volumes, centroids, the right/left check)."""
    voxel_ml = geometry.voxel_volume_ml()
    right, left = labels == by_side("right").value, labels == by_side("left").value
    cx_r, cx_l = _centroid_x(right, geometry), _centroid_x(left, geometry)
    consistent = None if cx_r is None or cx_l is None else bool(cx_r < cx_l)
    if consistent is False:
        info["warnings"].append("the 'right' lung lies to the patient's left of the 'left' lung (LPS x of the "
                                "centroids): check the structure names or the CT orientation")
    return ImportReport(
        case=out_dir.name, patient_id=patient_id, ct_source=str(ct_dir), rtstruct_file=str(rtstruct_path),
        shape_zyx=list(labels.shape), spacing_xyz=[float(s) for s in geometry.spacing],
        origin=[float(o) for o in geometry.origin], direction=[float(d) for d in geometry.direction.ravel()],
        rtstruct_rois=[s.name for s in structures], used_right=info["used_right"], used_left=info["used_left"],
        used_combined=info["used_combined"], ignored_rois=info["ignored_rois"],
        contours_drawn=info["contours_drawn"], contours_skipped=info["contours_skipped"],
        duplicates_dropped=info["duplicates_dropped"], skipped_details=info["skipped_details"],
        overlap_voxels=info["overlap_voxels"], vol_right_ml=round(float(right.sum()) * voxel_ml, 1),
        vol_left_ml=round(float(left.sum()) * voxel_ml, 1),
        slices_with_lung=int((labels > 0).any(axis=(1, 2)).sum()), centroid_x_right=cx_r,
        centroid_x_left=cx_l, lr_consistent_LPS=consistent, warnings=info["warnings"],
        files=[str(p) for p in targets])


def _write_case(image, labels: np.ndarray, geometry: Geometry, report: ImportReport, out_dir: Path,
                targets: Sequence[Path]) -> None:
    """Write ct.nrrd, label.nrrd and info.json: all three written before any is renamed into place."""
    import SimpleITK as sitk

    from ..core.writers import labelmap_image

    ct_image = image
    if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        values = sitk.GetArrayViewFromImage(image)
        if np.all(values == np.round(values)) and values.min() >= -32768 and values.max() <= 32767:
            ct_image = sitk.Cast(image, sitk.sitkInt16)  # HU are whole numbers: keep the file small
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(targets[0]) as ct_tmp, atomic_path(targets[1]) as label_tmp, \
                atomic_path(targets[2]) as info_tmp:
            sitk.WriteImage(ct_image, str(ct_tmp), useCompression=True)
            sitk.WriteImage(labelmap_image(labels, geometry), str(label_tmp), useCompression=True)
            info_tmp.write_text(json.dumps(report.to_info(), indent=1) + "\n", encoding="utf-8")
    except (RuntimeError, OSError) as exc:
        raise OutputError(f"Could not write the case into {out_dir}: {str(exc).strip().splitlines()[-1]}") from exc


def import_rtstruct(ct_dir: os.PathLike, rtstruct_path: os.PathLike, out_dir: os.PathLike,
                    names: RoiNames = RoiNames(), overwrite: bool = False) -> ImportReport:
    """Convert a DICOM CT series and its RTSTRUCT into ``out_dir/{ct.nrrd, label.nrrd, info.json}``.

    Raises :class:`InputError` for an unreadable CT or RTSTRUCT, a structure set drawn on another frame
    of reference, or no lung structure; :class:`OutputError` when the case files exist and
    ``overwrite`` is false. The three files are written atomically (temporary names, then renamed).
    """
    from ..core.imageio import read_ct

    ct_dir, out_dir = Path(ct_dir), Path(out_dir)
    targets = [out_dir / n for n in CASE_FILES]
    existing = [p.name for p in targets if p.exists()]
    if existing and not overwrite:
        raise OutputError(f"{out_dir} already holds {', '.join(existing)}; pass --overwrite to replace them.")
    if not ct_dir.is_dir():
        raise InputError(f"{ct_dir} is not a folder: give the folder of the DICOM CT series.")
    structures, patient_id = read_rtstruct(rtstruct_path)
    image = read_ct(ct_dir)
    geometry = Geometry.from_sitk(image)
    shape = tuple(int(s) for s in image.GetSize()[::-1])
    frame_warnings: List[str] = []
    _check_frames(structures, names, ct_dir, rtstruct_path, frame_warnings)
    labels, info = labels_from_structures(structures, geometry, shape, names)
    info["warnings"] += frame_warnings
    report = _report(labels, info, geometry, structures, patient_id, ct_dir, rtstruct_path, out_dir, targets)
    _write_case(image, labels, geometry, report, out_dir, targets)
    return report
