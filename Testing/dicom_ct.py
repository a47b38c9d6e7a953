"""Test helper: write a CT volume as a complete DICOM CT series with pydicom (one file per slice).

Unlike ``conftest.write_dicom_series`` (SimpleITK/GDCM, minimal tags), this writes what a scanner's
series carries and a DICOM SEG copies or references: patient and study attributes, Frame of Reference,
SOP Class/Instance UIDs, rescale, and the geometry of every slice. File names are shuffled so only the
Image Position (Patient) tells the slice order.
"""
from __future__ import annotations

import random
import zlib
from pathlib import Path
from typing import List, Optional

import numpy as np

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
#: A fixed UID root for test data, so reruns write identical series.
UID_ROOT = "1.2.826.0.1.3680043.10.1042."


def write_ct_series(image, folder: Path, *, series: int = 1, patient_id: str = "LUNGSEG-TEST",
                    study_uid: Optional[str] = None, seed: int = 0, intercept: float = -1024.0) -> List[Path]:
    """Write the SimpleITK ``image`` (HU) into ``folder`` as one DICOM CT series; return its files in slice
    order (slice k first). ``series`` makes the Series/SOP/Frame of Reference UIDs distinct."""
    import SimpleITK as sitk
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hu = sitk.GetArrayFromImage(image)
    spacing = image.GetSpacing()
    direction = np.array(image.GetDirection()).reshape(3, 3)
    origin = np.array(image.GetOrigin())
    stored = np.round(hu - intercept).astype(np.int16)
    study_uid = study_uid or f"{UID_ROOT}1.{zlib.crc32(patient_id.encode())}"
    series_uid = f"{UID_ROOT}2.{series}"
    frame_uid = f"{UID_ROOT}3.{series}"
    rng = random.Random(seed + series)
    names = [f"IM{n:04d}" for n in range(hu.shape[0])]
    rng.shuffle(names)
    files = []
    for k in range(hu.shape[0]):
        sop_uid = f"{series_uid}.{k + 1}"
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = sop_uid
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.Modality = "CT"
        ds.Manufacturer = "Test"
        ds.PatientName = "Test^Lung"
        ds.PatientID = patient_id
        ds.PatientBirthDate = "19600101"
        ds.PatientSex = "F"
        ds.StudyInstanceUID = study_uid
        ds.StudyDate = "20260101"
        ds.StudyTime = "120000"
        ds.StudyID = "1"
        ds.AccessionNumber = "A1"
        ds.ReferringPhysicianName = ""
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series
        ds.SeriesDescription = "chest CT"
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [f"{v:.4f}" for v in origin + direction[:, 2] * spacing[2] * k]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in np.concatenate([direction[:, 0], direction[:, 1]])]
        ds.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"]  # row spacing (j), column spacing (i)
        ds.SliceThickness = f"{spacing[2]:.4f}"
        ds.KVP = "120"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = stored.shape[1:]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = f"{intercept:g}"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        path = folder / names[k]
        if _pydicom3():
            ds.save_as(str(path), enforce_file_format=True)
        else:  # pydicom 2 (the release for Python 3.9)
            ds.save_as(str(path), write_like_original=False)
        files.append(path)
    return files


def _pydicom3() -> bool:
    import pydicom

    return int(pydicom.__version__.split(".")[0]) >= 3


def small_ct(path, shrink=(4, 4, 1), slices: Optional[slice] = None):
    """The CT at ``path`` (SimpleITK image), optionally cut to ``slices`` and binned by ``shrink``
    (averages: real HU, larger voxels) -- test CTs that segment in a fraction of a second."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    if slices is not None:
        image = image[:, :, slices]
    image = sitk.BinShrink(image, list(shrink))
    return sitk.Cast(image, sitk.sitkInt16)
