"""Slicer's "Export to DICOM SEG" logic on a real MRML scene (slicer-core): a CT volume node that knows
its DICOM instance UIDs, lung segments in a segmentation node, the export worker in its own process."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("slicer", reason="the slicer-core wheel is not installed")
pydicom = pytest.importorskip("pydicom")
pytest.importorskip("highdicom", reason="DICOM SEG needs the optional highdicom package (lungseg[dicom])")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "LungSeg"))

from dicom_ct import small_ct, write_ct_series  # noqa: E402
from LungSegLogicLib.dicomseg_export import (HIGHDICOM_REQUIREMENT, INSTANCE_UIDS_ATTRIBUTE,  # noqa: E402
                                             dicomSourceFiles, exportDicomSeg, highdicomInstalled, isFromDicom)
from LungSegLogicLib.logic import LungSegLogic, volume_ijk_to_ras  # noqa: E402

from LungSegLib.core import dicomseg  # noqa: E402
from LungSegLib.core.imageio import read_dicom_series  # noqa: E402
from LungSegLib.errors import InputError, OutputError  # noqa: E402

SAMPLE_CT = Path(__file__).resolve().parents[1] / "Resources" / "SampleData" / "ACRIN-FLT-Breast-001_chest.nrrd"


class DicomDatabase:
    """The one call of ``ctkDICOMDatabase`` the export makes (the Qt database is not in slicer-core):
    ``fileForInstance(SOP Instance UID) -> path`` ("" when unknown), over the files written here."""

    def __init__(self, files):
        self.files = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): str(f) for f in files}

    def fileForInstance(self, uid: str) -> str:
        return self.files.get(uid, "")


@pytest.fixture
def dicom_ct(tmp_path):
    """A DICOM CT series (the shipped sample at 128 x 128 x 24) and, as a volume file, the same image."""
    if not SAMPLE_CT.is_file():
        pytest.skip(f"sample CT not shipped: {SAMPLE_CT}")
    files = write_ct_series(small_ct(SAMPLE_CT, shrink=(2, 2, 2)), tmp_path / "dicom", series=21)
    image, ordered = read_dicom_series(tmp_path / "dicom")
    volume = tmp_path / "ct.nrrd"
    sitk.WriteImage(image, str(volume))
    return ordered, volume, image


def lung_labels(image) -> np.ndarray:
    """A 0/1/2 labelmap: air-like voxels inside the body, split at the middle column (patient right = 1)."""
    hu = sitk.GetArrayFromImage(image)
    labels = np.zeros(hu.shape, np.uint8)
    lung = (hu > -950) & (hu < -400)
    lung[:, :8] = lung[:, -8:] = False
    labels[lung] = 1
    half = hu.shape[2] // 2
    labels[:, :, half:][lung[:, :, half:]] = 2
    labels[:3] = 0  # a few slices without lung: empty frames the SEG leaves out
    return labels


def loaded_from_dicom(mrml_app, volume_path: Path, files):
    """A volume node as Slicer's DICOM plugin leaves it: voxels plus the instance UIDs of its files."""
    node = mrml_app.load_volume(volume_path, "CT")
    uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    node.SetAttribute(INSTANCE_UIDS_ATTRIBUTE, " ".join(uids))
    return node


def lung_segmentation(logic, volumeNode, labels):
    node = logic.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "lungs")
    node.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
    logic._replaceLungSegments(node, logic._labelmapCarrier(labels, volume_ijk_to_ras(volumeNode)))
    return node


def test_export_writes_a_seg_equal_to_the_segments(mrml_app, dicom_ct, tmp_path):
    files, volume_path, image = dicom_ct
    logic = LungSegLogic()
    logic.pythonExecutable = sys.executable
    volumeNode = loaded_from_dicom(mrml_app, volume_path, files)
    labels = lung_labels(image)
    segmentationNode = lung_segmentation(logic, volumeNode, labels)
    before = mrml_app.node_ids()
    database = DicomDatabase(files)
    assert highdicomInstalled() and HIGHDICOM_REQUIREMENT.startswith("highdicom>=")
    assert isFromDicom(volumeNode) and dicomSourceFiles(volumeNode, database) == [str(f) for f in files]

    path = exportDicomSeg(logic, segmentationNode, volumeNode, str(tmp_path / "out" / "lungs.dcm"),
                          dicomDatabase=database, modelName="test model")
    assert path == tmp_path / "out" / "lungs.dcm"
    np.testing.assert_array_equal(dicomseg.read_dicom_seg_labels(path, files), labels)
    ds = pydicom.dcmread(path)
    assert ds.Modality == "SEG" and ds.ReferencedSeriesSequence[0].SeriesInstanceUID.endswith(".2.21")
    assert "test model" in ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion
    assert mrml_app.node_ids() == before  # the helper labelmap node is gone again
    with pytest.raises(OutputError, match="already exists"):
        exportDicomSeg(logic, segmentationNode, volumeNode, str(path), dicomDatabase=database)

    default = exportDicomSeg(logic, segmentationNode, volumeNode, dicomDatabase=database)
    assert default.parent == Path(files[0]).parent / "LungSeg SEG" and default.name == "CT lungs.dcm"


def test_export_refuses_a_volume_not_from_dicom(mrml_app, dicom_ct):
    files, volume_path, image = dicom_ct
    logic = LungSegLogic()
    volumeNode = mrml_app.load_volume(volume_path, "CT")
    segmentationNode = lung_segmentation(logic, volumeNode, lung_labels(image))
    assert not isFromDicom(volumeNode)
    with pytest.raises(InputError, match="not loaded from DICOM"):
        exportDicomSeg(logic, segmentationNode, volumeNode, dicomDatabase=DicomDatabase(files))
    volumeNode.SetAttribute(INSTANCE_UIDS_ATTRIBUTE, "1.2.3.4 " + " ".join(DicomDatabase(files).files))
    with pytest.raises(InputError, match="has no file for 1 of the CT's"):
        dicomSourceFiles(volumeNode, DicomDatabase(files))


def test_export_refuses_segments_not_on_the_dicom_grid(mrml_app, dicom_ct, tmp_path):
    """A CT node whose grid is not the DICOM series' (here resampled to half the pixels) cannot become a
    SEG of that series: the worker's refusal arrives as the library's OutputError, nothing is written."""
    files, _, image = dicom_ct
    coarse = tmp_path / "coarse.nrrd"
    sitk.WriteImage(sitk.BinShrink(image, [2, 2, 1]), str(coarse))
    logic = LungSegLogic()
    logic.pythonExecutable = sys.executable
    volumeNode = loaded_from_dicom(mrml_app, coarse, files)
    segmentationNode = lung_segmentation(logic, volumeNode, lung_labels(sitk.ReadImage(str(coarse))))
    out = tmp_path / "out" / "lungs.dcm"
    with pytest.raises(OutputError, match="not on the source grid|orientation or pixel size"):
        exportDicomSeg(logic, segmentationNode, volumeNode, str(out), dicomDatabase=DicomDatabase(files))
    assert not out.exists()
