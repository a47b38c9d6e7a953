"""Reading CT images (NRRD, NIfTI, MetaImage, DICOM series) with clear refusals of what is not CT."""
from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .compressed import verify_compressed_input
from .geometry import direction_problem

_CT_MODALITIES = {"CT"}


def _modality(reader_or_image, key: str = "0008|0060") -> str:
    try:
        if reader_or_image.HasMetaDataKey(key):
            return reader_or_image.GetMetaData(key).strip().upper()
    except RuntimeError:
        pass
    return ""


def _dicom_series(folder: Path) -> Tuple[str, List[str]]:
    """The series in ``folder`` with the most slices: (series UID, files sorted by position)."""
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or ()
    if not ids:
        raise InputError(f"{folder} is a folder without a DICOM image series. Give a DICOM series folder "
                         "or a CT file (.nrrd, .nii, .nii.gz, .mha).")
    best: Tuple[str, List[str]] = ("", [])
    skipped = []
    for uid in ids:
        files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
        header = sitk.ImageFileReader()
        header.SetFileName(files[0])
        header.LoadPrivateTagsOff()
        try:
            header.ReadImageInformation()
        except RuntimeError:
            skipped.append(uid)
            continue
        modality = _modality(header)
        if modality and modality not in _CT_MODALITIES:
            skipped.append(f"{uid} ({modality})")
            continue
        if len(files) > len(best[1]):
            best = (uid, files)
    if not best[1]:
        raise InputError(f"{folder} holds no CT series (found: {', '.join(skipped) or 'none readable'}). "
                         "LungSeg segments CT only.")
    return best


def read_ct(path: os.PathLike) -> sitk.Image:
    """Read a 3-D CT in Hounsfield units from a file or a DICOM series folder.

    For a DICOM folder the CT series with the most slices is read, its slices sorted by position and
    the rescale slope/intercept applied (by GDCM). Raises :class:`InputError` for a missing or empty
    file, an unreadable format, a non-CT modality, or an image that is not one 3-D scalar volume.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"Input not found: {path}")
    if path.is_dir():
        return read_dicom_series(path)[0]
    else:
        if not path.is_file():  # a FIFO would block the reader, a device never ends
            raise InputError(f"{path} is not a regular file (a device, named pipe or socket); give a CT file "
                             "or a DICOM series folder.")
        if path.stat().st_size == 0:
            raise InputError(f"{path} is an empty file (0 bytes).")
        # ITK reads corrupt or truncated gzip/zlib data silently: the stream is verified (a second
        # decompression) in a thread while ITK reads (both release the GIL), and its verdict comes first
        check = _Verification(path)
        try:
            image = _read_image_file(path)
        except BaseException:
            check.wait()  # a damaged stream is the reason to report, as when it was verified first
            raise
        check.wait()
    validate_ct_image(image, path.name)
    return as_3d(image)


class _Verification:
    """:func:`.compressed.verify_compressed_input` of ``path`` running in a daemon thread; :meth:`wait`
    joins it and raises what it raised."""

    def __init__(self, path: Path):
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, args=(path,), name="lungseg-verify", daemon=True)
        self._thread.start()

    def _run(self, path: Path) -> None:
        try:
            verify_compressed_input(path)
        except BaseException as exc:  # handed to the reading thread by wait()
            self._error = exc

    def wait(self) -> None:
        self._thread.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def _read_image_file(path: Path) -> sitk.Image:
    """ITK's read of one image file, refusing non-CT modalities (:class:`InputError`)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(f"Cannot read {path.name} as an image (supported: NRRD, NIfTI, MetaImage, "
                         f"DICOM series folder): {_first_line(exc)}") from exc
    modality = _modality(reader)
    if modality and modality not in _CT_MODALITIES:
        raise InputError(f"{path.name} is a {modality} image, not CT. LungSeg segments CT only.")
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"Cannot read {path.name}: {_first_line(exc)}") from exc


def dicom_series_files(folder: os.PathLike) -> List[str]:
    """The files of the CT series :func:`read_ct` reads from ``folder`` (the CT series with the most
    slices), in its slice order: slice ``k`` of the volume comes from file ``k``."""
    return _dicom_series(Path(folder))[1]


def read_dicom_series(folder: os.PathLike) -> Tuple[sitk.Image, List[str]]:
    """Read the CT series of a DICOM folder as :func:`read_ct` does, and also return its files in slice
    order (slice ``k`` of the image comes from file ``k``; a DICOM SEG references them per frame)."""
    folder = Path(folder)
    files = dicom_series_files(folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"Could not read the DICOM series in {folder}: {_first_line(exc)}") from exc
    check_slice_spacing(_slice_positions(reader, len(files)), folder.name, n_slices=len(files))
    validate_ct_image(image, folder.name)
    return as_3d(image), files


def _slice_positions(reader: sitk.ImageSeriesReader, n: int) -> Optional[np.ndarray]:
    """Each slice's position (mm) along the slice normal, from Image Position / Orientation (Patient);
    None when the tags are missing."""
    try:
        cosines = np.array([float(v) for v in reader.GetMetaData(0, "0020|0037").split("\\")])
        normal = np.cross(cosines[:3], cosines[3:])
        return np.array([np.dot(normal, [float(v) for v in reader.GetMetaData(k, "0020|0032").split("\\")])
                         for k in range(n)])
    except (RuntimeError, ValueError, IndexError):
        return None


def check_slice_spacing(positions: Optional[np.ndarray], name: str = "the series", n_slices: int = 0) -> None:
    """Refuse a DICOM series whose slices are not evenly spaced (mm along the slice normal).

    A volume is built on a regular grid, so a missing slice (a gap) or two slices at one position would
    silently stretch or shift the anatomy below it. Variations under half the usual spacing are accepted.
    ``positions`` None (the position tags of the ``n_slices`` files are missing or unreadable) cannot be
    checked: a :class:`UserWarning` says so instead of passing silently.
    """
    if positions is None:
        if n_slices >= 3:
            warnings.warn(f"The slice positions of {name} (Image Position / Image Orientation (Patient)) are "
                          "missing or unreadable, so LungSeg cannot check that its slices are evenly spaced; "
                          "a missing slice would stretch the anatomy below it.", UserWarning, stacklevel=3)
        return
    if len(positions) < 3:
        return
    steps = np.diff(np.sort(positions))
    usual = float(np.median(steps))
    if usual <= 0:
        raise InputError(f"The slices of {name} all lie at one position; it is not a 3-D series.")
    worst = int(np.argmax(np.abs(steps - usual)))
    if abs(steps[worst] - usual) > 0.5 * usual:
        where = np.sort(positions)[worst]
        kind = "a gap (slices missing?)" if steps[worst] > usual else "overlapping or repeated slices"
        raise InputError(
            f"The slices of {name} are not evenly spaced: {steps[worst]:.2f} mm after the slice at "
            f"{where:.2f} mm where the others are {usual:.2f} mm apart — {kind}. Export the complete series "
            "(or a volume file) and try again.")


def validate_ct_image(image: sitk.Image, name: str = "the image") -> None:
    """Refuse what cannot be a CT volume: not 3-D, vector/RGB pixels, complex or empty."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{name} has {image.GetNumberOfComponentsPerPixel()} components per pixel "
                         "(RGB or vector image); a CT has one value per voxel in HU.")
    dim = image.GetDimension()
    if dim == 2:
        raise InputError(f"{name} is a 2-D image ({image.GetSize()}); LungSeg needs a 3-D CT volume "
                         "(a DICOM series folder, not a single slice).")
    if dim == 4:
        size = image.GetSize()
        if size[3] != 1:
            raise InputError(f"{name} is 4-D ({size}: a time series?); give one 3-D CT volume.")
    elif dim != 3:
        raise InputError(f"{name} has {dim} dimensions; LungSeg needs a 3-D CT volume.")
    if 0 in image.GetSize():
        raise InputError(f"{name} has no voxels (size {image.GetSize()}).")
    if "complex" in image.GetPixelIDTypeAsString():
        raise InputError(f"{name} has complex pixels; a CT has real values in HU.")
    check_direction(np.array(image.GetDirection()).reshape(image.GetDimension(), -1)[:3, :3], name)


def check_direction(direction: np.ndarray, name: str = "the image") -> None:
    """Refuse a direction matrix whose axes are not perpendicular unit vectors (a sheared or scaled
    grid, or NaN) with :class:`InputError`: LungSeg's slices and volumes assume an orthogonal grid."""
    problem = direction_problem(direction)
    if problem:
        raise InputError(f"{name} has {problem}.")


def as_3d(image: sitk.Image) -> sitk.Image:
    """Drop a trailing 4th axis of length 1 (some NIfTI writers add one)."""
    if image.GetDimension() == 4:
        size = list(image.GetSize())
        return sitk.Extract(image, size[:3] + [0], [0, 0, 0, 0])
    return image


def _first_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # ITK messages start with the source location; the useful text is usually last
    return lines[-1] if lines else type(exc).__name__
