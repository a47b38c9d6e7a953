"""DICOM Segmentation output: the lung labelmap as a binary DICOM SEG that references its CT series.

PACS and viewers (3D Slicer's QuantitativeReporting, OHIF, ...) read a DICOM SEG next to the CT it was
made from. The object is built with highdicom (on pydicom), not by hand: highdicom copies the patient,
study and Frame of Reference attributes from the source CT, writes one frame per (slice, segment) that
holds any voxel (empty frames are omitted), and references each frame's source image (SOP Instance UID)
per frame. LungSeg adds the segments' terminology from :mod:`LungSegLib.labels` and the algorithm
identification (LungSeg, its version and the model's name).

highdicom is optional (``pip install 'lungseg[dicom]'``); every entry point here says so clearly when it
is missing, before any work.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np

from .. import __version__
from ..errors import InputError, OutputError
from ..labels import LUNG_LABELS, Code, Label
from .atomic import atomic_path
from .geometry import Geometry

#: The output format name (``--format dcm``) and the file extension it is recognised by.
FORMAT = "dcm"
#: How to get the optional dependency.
INSTALL_HINT = "pip install 'lungseg[dicom]' (or: pip install highdicom)"
#: Added to the source series number so the SEG lists next to, not on top of, its CT.
SERIES_NUMBER_OFFSET = 1000
#: Tolerances when matching the labelmap grid to the source images (fractions of a voxel; direction
#: cosines). DICOM positions are written with a few decimals, so exact equality is not expected.
VOXEL_TOLERANCE = 0.1
COSINE_TOLERANCE = 1e-3


def require_highdicom():
    """Import highdicom, or raise :class:`OutputError` saying how to install it."""
    try:
        import highdicom
    except ImportError as exc:
        raise OutputError(f"Writing DICOM SEG needs the highdicom package, which is not installed "
                          f"({exc}). Install it with: {INSTALL_HINT}.") from exc
    return highdicom


def check_dicom_seg_input(input_path: os.PathLike) -> None:
    """Refuse DICOM SEG output for an input that is not a DICOM series folder (a SEG must reference
    source DICOM images), or when highdicom is missing -- both before any work is done."""
    path = Path(input_path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"DICOM SEG output needs a DICOM series as input (a folder of CT slices), but "
                          f"{path.name} is a single file: a SEG must reference the DICOM images it was made "
                          "from. Give the DICOM folder, or choose another output format (.seg.nrrd, .nrrd, "
                          ".nii.gz, .nii, .mha).")
    require_highdicom()


def read_source_headers(files: Sequence[os.PathLike]) -> list:
    """The source images' DICOM headers (pydicom datasets without pixel data), in ``files`` order."""
    import pydicom

    headers = []
    for f in files:
        try:
            headers.append(pydicom.dcmread(str(f), stop_before_pixels=True))
        except (OSError, pydicom.errors.InvalidDicomError) as exc:
            raise InputError(f"Cannot read the source DICOM file {f}: {exc}") from exc
    return headers


def source_frames(labels: np.ndarray, geometry: Geometry, headers: Sequence) -> np.ndarray:
    """The labelmap's slices in the order of the source images: ``[n_images, rows, columns]``.

    Each source image is matched to the labelmap slice at its Image Position (Patient), so the labelmap
    may come in either slice order (SimpleITK's, 3D Slicer's). Refuses (:class:`OutputError`) a labelmap
    that is not on the source images' grid (other orientation, pixel size, matrix or positions): a SEG
    frame must cover its source image pixel for pixel.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise OutputError(f"A DICOM SEG needs a 3-D labelmap; got shape {labels.shape}.")
    to_lps = geometry.ijk_to_lps()
    axes = to_lps[:3, :3]  # columns: LPS step (mm) per voxel along i, j, k
    inverse = np.linalg.inv(axes)
    frames = np.empty((len(headers),) + labels.shape[1:], labels.dtype)
    for n, ds in enumerate(headers):
        name = Path(getattr(ds, "filename", "") or f"image {n + 1}").name
        try:
            rows, cols = int(ds.Rows), int(ds.Columns)
            cosines = np.array([float(v) for v in ds.ImageOrientationPatient])
            position = np.array([float(v) for v in ds.ImagePositionPatient])
            row_mm, col_mm = (float(v) for v in ds.PixelSpacing)
        except (AttributeError, TypeError, ValueError) as exc:
            raise OutputError(f"The source image {name} lacks the geometry a SEG needs (Rows, Columns, "
                              f"Image Orientation/Position (Patient), Pixel Spacing): {exc}") from exc
        if (rows, cols) != labels.shape[1:]:
            raise OutputError(f"The labelmap slices are {labels.shape[2]} x {labels.shape[1]} pixels but the "
                              f"source image {name} is {cols} x {rows}: the labelmap is not on the source grid.")
        if (not np.allclose(cosines[:3], geometry.direction[:, 0], atol=COSINE_TOLERANCE)
                or not np.allclose(cosines[3:], geometry.direction[:, 1], atol=COSINE_TOLERANCE)
                or not np.isclose(col_mm, geometry.spacing[0], rtol=1e-3)
                or not np.isclose(row_mm, geometry.spacing[1], rtol=1e-3)):
            raise OutputError(f"The labelmap's orientation or pixel size differs from the source image {name} "
                              "(was it resampled?): a DICOM SEG must lie on the source images' grid.")
        ijk = inverse @ (position - to_lps[:3, 3])
        k = int(round(ijk[2]))
        if np.max(np.abs(ijk[:2])) > VOXEL_TOLERANCE or abs(ijk[2] - k) > VOXEL_TOLERANCE \
                or not 0 <= k < labels.shape[0]:
            raise OutputError(f"The source image {name} (position {np.round(position, 2).tolist()} mm LPS) is "
                              "not a slice of the labelmap's grid: the labelmap is not on the source series.")
        frames[n] = labels[k]
    return frames


def _coded(code: Code):
    from highdicom.sr import CodedConcept

    scheme, value, meaning = code
    return CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def cielab_dicom(rgb: Sequence[float]) -> Tuple[int, int, int]:
    """An sRGB colour (0..1) as DICOM's scaled CIELab triple (Recommended Display CIELab Value: L* 0..100
    and a*, b* -128..127 mapped to 0..65535), D65 white point."""
    c = np.asarray(rgb, float)
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = np.array([[0.4124564, 0.3575761, 0.1804375],
                    [0.2126729, 0.7151522, 0.0721750],
                    [0.0193339, 0.1191920, 0.9503041]]) @ linear
    white = np.array([0.95047, 1.0, 1.08883])
    t = xyz / white
    f = np.where(t > (6 / 29) ** 3, np.cbrt(t), t / (3 * (6 / 29) ** 2) + 4 / 29)
    lab = (116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2]))
    scaled = (lab[0] * 65535 / 100, (lab[1] + 128) * 65535 / 255, (lab[2] + 128) * 65535 / 255)
    return tuple(int(round(min(max(v, 0), 65535))) for v in scaled)  # type: ignore[return-value]


def segment_description(number: int, label: Label, model_name: str):
    """The SEG's description of one lung segment: SNOMED CT category/type (+ laterality modifier), the
    anatomic region (the lung of that side), display colour, algorithm AUTOMATIC "LungSeg"."""
    import highdicom as hd

    version = f"{__version__} ({model_name})" if model_name else __version__
    algorithm = hd.AlgorithmIdentificationSequence(
        name="LungSeg", family=_coded(("DCM", "113289", "Artificial Intelligence")),
        version=version[:64], parameters={"model": model_name} if model_name else None)
    description = hd.seg.SegmentDescription(
        segment_number=number, segment_label=label.name,
        segmented_property_category=_coded(label.category), segmented_property_type=_coded(label.type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
        tracking_uid=hd.UID(), tracking_id=label.name, anatomic_regions=[_coded(label.type)])
    if label.modifier is not None:
        # set here rather than through highdicom: older releases (those for Python 3.9) have no argument
        # for the modifiers
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            _coded(label.modifier)]
        description.AnatomicRegionSequence[0].AnatomicRegionModifierSequence = [_coded(label.modifier)]
    description.RecommendedDisplayCIELabValue = list(cielab_dicom(label.color))
    return description


def build_dicom_seg(labels: np.ndarray, geometry: Geometry, headers: Sequence, *, model_name: str = "",
                    series_description: str = "LungSeg lungs"):
    """The DICOM SEG dataset (highdicom ``Segmentation``) of a 0/1/2 labelmap ``[k, j, i]`` on ``geometry``
    made from the source images ``headers`` (pydicom datasets, any order)."""
    hd = require_highdicom()
    frames = source_frames(labels, geometry, headers)
    # segment numbers are 1..n in label-table order; map label values onto them explicitly
    numbered = np.zeros(frames.shape, np.uint8)
    present: List[int] = []
    descriptions = []
    for number, label in enumerate(LUNG_LABELS, start=1):
        mask = frames == label.value
        numbered[mask] = number
        descriptions.append(segment_description(number, label, model_name))
        present.append(int(mask.any()))
    if not any(present):
        raise OutputError("The segmentation is empty (no lung found), and a DICOM SEG without any segmented "
                          "frame cannot be written. Check the input CT.")
    first = headers[0]
    try:
        series_number = int(getattr(first, "SeriesNumber", 0) or 0) + SERIES_NUMBER_OFFSET
    except (TypeError, ValueError):
        series_number = SERIES_NUMBER_OFFSET
    try:
        seg = hd.seg.Segmentation(
            source_images=list(headers), pixel_array=numbered,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
            series_instance_uid=hd.UID(), series_number=series_number, sop_instance_uid=hd.UID(),
            instance_number=1, manufacturer="LungSeg", manufacturer_model_name=(model_name or "LungSeg")[:64],
            software_versions=__version__, device_serial_number="LungSeg",
            content_description="Right and left lung (automatic)", content_label="LUNGS",
            series_description=series_description, omit_empty_frames=True)
    except (ValueError, TypeError, AttributeError) as exc:
        raise OutputError(f"Could not build the DICOM SEG from the source series: {exc}") from exc
    return seg


def write_dicom_seg(labels: np.ndarray, geometry: Geometry, source_files: Sequence[os.PathLike],
                    path: os.PathLike, *, overwrite: bool = False, model_name: str = "") -> Path:
    """Write a binary DICOM SEG of the labelmap, referencing ``source_files`` (the CT series it lies on).

    Atomic: written to a temporary file in the target folder and renamed into place, so a failure leaves
    no partial file. Refuses to replace an existing file unless ``overwrite``.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path} is a folder; give an output file name such as {path / 'lungs.dcm'}.")
    if path.exists() and not overwrite:
        raise OutputError(f"{path} already exists; LungSeg does not overwrite it unless you pass --overwrite "
                          "(overwrite=True).")
    if not source_files:
        raise OutputError("A DICOM SEG needs the source DICOM files of the CT; none were given.")
    seg = build_dicom_seg(labels, geometry, read_source_headers(source_files), model_name=model_name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"Cannot create the folder for {path}: {exc.strerror or exc}") from exc
    try:
        with atomic_path(path, ".dcm") as tmp:
            seg.save_as(str(tmp))
    except OSError as exc:
        raise OutputError(f"Could not write {path}: {exc.strerror or exc}") from exc
    return path


def read_dicom_seg_labels(path: os.PathLike, source_files: Sequence[os.PathLike]) -> np.ndarray:
    """Rebuild a 0/1/2 labelmap ``[n_source, rows, columns]`` (frames in ``source_files`` order) from a
    LungSeg DICOM SEG with highdicom; segments are matched to labels by their laterality modifier."""
    hd = require_highdicom()
    seg = hd.seg.segread(str(path))
    headers = read_source_headers(source_files)
    uids = [str(h.SOPInstanceUID) for h in headers]
    label_of = {}
    for number in seg.get_segment_numbers():
        description = seg.get_segment_description(number)
        type_item = description.SegmentedPropertyTypeCodeSequence[0]
        modifier = type_item.SegmentedPropertyTypeModifierCodeSequence[0].CodeValue
        label_of[number] = next(lab.value for lab in LUNG_LABELS
                                if lab.modifier is not None and lab.modifier[1] == modifier)
    masks = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, ignore_spatial_locations=True,
                                              assert_missing_frames_are_empty=True)
    out = np.zeros(masks.shape[:3], np.uint8)
    for index, number in enumerate(sorted(label_of)):
        out[masks[..., index] > 0] = label_of[number]
    return out


#: Names that are importable without highdicom.
__all__ = ["FORMAT", "INSTALL_HINT", "require_highdicom", "check_dicom_seg_input", "read_source_headers",
           "source_frames", "cielab_dicom", "segment_description", "build_dicom_seg", "write_dicom_seg",
           "read_dicom_seg_labels"]
