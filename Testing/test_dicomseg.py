"""DICOM SEG output: a DICOM CT series written here from the shipped sample CT, segmented to a SEG, read
back with highdicom and with plain pydicom, equal voxel for voxel to the NRRD output."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("highdicom", reason="DICOM SEG needs the optional highdicom package (lungseg[dicom])")

from dicom_ct import small_ct, write_ct_series  # noqa: E402

from LungSegLib import __version__  # noqa: E402
from LungSegLib.cli import main  # noqa: E402
from LungSegLib.core import dicomseg  # noqa: E402
from LungSegLib.core.geometry import Geometry  # noqa: E402
from LungSegLib.core.imageio import dicom_series_files, read_ct, read_dicom_series  # noqa: E402
from LungSegLib.errors import OutputError  # noqa: E402
from LungSegLib.labels import LUNG_LABELS  # noqa: E402

SAMPLE_CT = Path(__file__).resolve().parents[1] / "Resources" / "SampleData" / "ACRIN-FLT-Breast-001_chest.nrrd"
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


@pytest.fixture(scope="module")
def ct_series(tmp_path_factory):
    """The shipped sample CT (128 x 128 pixels of 3.9 mm, 24 slices) as a pydicom-written DICOM series:
    (folder, its files in slice order, the CT image)."""
    if not SAMPLE_CT.is_file():
        pytest.skip(f"sample CT not shipped: {SAMPLE_CT}")
    image = small_ct(SAMPLE_CT, shrink=(2, 2, 2))
    folder = tmp_path_factory.mktemp("dicom") / "CT"
    files = write_ct_series(image, folder, series=3)
    return folder, files, image


@pytest.fixture(scope="module")
def outputs(ct_series, oracle_model, tmp_path_factory):
    """The series segmented once to NRRD and once to DICOM SEG with the same model."""
    from LungSegLib.api import LungSegmenter

    folder, _, _ = ct_series
    out = tmp_path_factory.mktemp("out")
    segmenter = LungSegmenter(oracle_model)
    nrrd = out / "lungs.nrrd"
    seg = out / "lungs.dcm"
    segmenter.segment_file(folder, nrrd)
    segmenter.segment_file(folder, seg)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(nrrd)))
    return labels, seg, segmenter.model_name


def test_series_files_follow_simpleitk_slice_order(ct_series):
    folder, written, _ = ct_series
    image, files = read_dicom_series(folder)
    assert dicom_series_files(folder) == files
    assert [Path(f).name for f in files] == [p.name for p in written]  # slice order, not file-name order
    assert sorted(Path(f).name for f in files) != [Path(f).name for f in files]
    for k, f in enumerate(files):  # slice k of the volume lies where file k says it is
        position = [float(v) for v in pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient]
        np.testing.assert_allclose(image.TransformIndexToPhysicalPoint((0, 0, k)), position, atol=1e-3)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(read_ct(folder)))


def test_seg_read_back_with_highdicom_equals_nrrd(ct_series, outputs):
    _, files, _ = ct_series
    labels, seg, _ = outputs
    assert set(np.unique(labels)) == {0, 1, 2}
    back = dicomseg.read_dicom_seg_labels(seg, files)
    np.testing.assert_array_equal(back, labels)


def test_seg_read_back_with_pydicom_equals_nrrd(ct_series, outputs):
    """Without highdicom: the per-frame source references and segment numbers rebuild the volume."""
    _, files, _ = ct_series
    labels, seg, _ = outputs
    ds = pydicom.dcmread(seg)
    assert ds.SOPClassUID == SEG_STORAGE and ds.SegmentationType == "BINARY"
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    index_of = {h.SOPInstanceUID: k for k, h in enumerate(headers)}
    value_of = {item.SegmentNumber: next(lab.value for lab in LUNG_LABELS if lab.name == item.SegmentLabel)
                for item in ds.SegmentSequence}
    pixels = ds.pixel_array.reshape(int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns))
    rebuilt = np.zeros_like(labels)
    for frame, group in zip(pixels, ds.PerFrameFunctionalGroupsSequence):
        number = group.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        uid = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = index_of[uid]
        position = [float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(position, [float(v) for v in headers[k].ImagePositionPatient], atol=1e-3)
        assert not np.any(rebuilt[k][frame > 0]), "two segments claim one voxel"
        rebuilt[k][frame > 0] = value_of[number]
    np.testing.assert_array_equal(rebuilt, labels)
    assert int(ds.NumberOfFrames) == frames_with_voxels(labels)


def frames_with_voxels(labels: np.ndarray) -> int:
    """Frames a SEG without empty frames holds: one per (slice, segment) with any voxel."""
    return sum(int((labels[k] == lab.value).any()) for k in range(labels.shape[0]) for lab in LUNG_LABELS)


def test_empty_frames_are_omitted(ct_series, outputs, tmp_path):
    _, files, image = ct_series
    labels = outputs[0].copy()
    labels[:5] = 0                      # slices without lung
    labels[10][labels[10] == 2] = 0     # a slice with the right lung only
    path = dicomseg.write_dicom_seg(labels, Geometry.from_sitk(image), files, tmp_path / "part.dcm")
    ds = pydicom.dcmread(path)
    assert int(ds.NumberOfFrames) == frames_with_voxels(labels) <= 2 * labels.shape[0] - 11
    np.testing.assert_array_equal(dicomseg.read_dicom_seg_labels(path, files), labels)


def test_seg_references_and_copies_the_source(ct_series, outputs):
    _, files, _ = ct_series
    _, seg, model_name = outputs
    ds = pydicom.dcmread(seg)
    src = pydicom.dcmread(files[0], stop_before_pixels=True)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                    "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "FrameOfReferenceUID"):
        assert getattr(ds, keyword) == getattr(src, keyword), keyword
    assert ds.SeriesInstanceUID != src.SeriesInstanceUID and ds.Modality == "SEG"
    referenced = ds.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == src.SeriesInstanceUID
    all_uids = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
    assert {item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence} <= all_uids
    assert ds.SoftwareVersions == __version__ and model_name == "oracle"


def test_seg_segment_terminology(outputs):
    _, seg, model_name = outputs
    ds = pydicom.dcmread(seg)
    assert [s.SegmentLabel for s in ds.SegmentSequence] == ["Right lung", "Left lung"]
    for item, label in zip(ds.SegmentSequence, LUNG_LABELS):
        category = item.SegmentedPropertyCategoryCodeSequence[0]
        kind = item.SegmentedPropertyTypeCodeSequence[0]
        modifier = kind.SegmentedPropertyTypeModifierCodeSequence[0]
        assert (category.CodingSchemeDesignator, category.CodeValue) == ("SCT", "123037004")
        assert (kind.CodingSchemeDesignator, kind.CodeValue, kind.CodeMeaning) == ("SCT", "39607008", "Lung")
        assert (modifier.CodeValue, modifier.CodeMeaning) == label.modifier[1:]
        region = item.AnatomicRegionSequence[0]
        assert region.CodeValue == "39607008"
        assert region.AnatomicRegionModifierSequence[0].CodeValue == label.modifier[1]
        assert item.SegmentAlgorithmType == "AUTOMATIC" and item.SegmentAlgorithmName == "LungSeg"
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == "LungSeg"
        assert __version__ in algorithm.AlgorithmVersion and model_name in algorithm.AlgorithmVersion
    assert {("Right", "24028007"), ("Left", "7771000")} == {
        (i.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning,
         i.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence[0].CodeValue)
        for i in ds.SegmentSequence}


def test_dciodvfy_finds_no_error(outputs):
    """dciodvfy (dicom3tools, Debian package) checks the SEG against the DICOM standard's IOD rules."""
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.skip("dciodvfy is not installed (Debian: apt-get install dicom3tools)")
    _, seg, _ = outputs
    run = subprocess.run([tool, "-new", str(seg)], capture_output=True, text=True, timeout=120)
    report = run.stdout + run.stderr
    assert "Segmentation" in report  # it recognised the IOD
    problems = [line for line in report.splitlines() if line.startswith(("Error", "Warning"))]
    assert problems == [], report


def test_cli_writes_seg_by_extension_and_by_format(ct_series, oracle_model_path, tmp_path):
    folder, files, _ = ct_series
    by_ext = tmp_path / "a" / "lungs.dcm"
    by_fmt = tmp_path / "b" / "lungs.dcm"
    assert main(["segment", str(folder), str(by_ext), "--model", str(oracle_model_path), "--quiet"]) == 0
    assert main(["segment", str(folder), str(by_fmt), "--format", "dcm", "--model", str(oracle_model_path),
                 "--quiet"]) == 0
    # --format must agree with the name (DICOM bytes under .nrrd would mislead every reader): usage error
    assert main(["segment", str(folder), str(tmp_path / "c" / "lungs.nrrd"), "--format", "dcm", "--model",
                 str(oracle_model_path), "--quiet"]) == 2
    assert not (tmp_path / "c").exists()
    a, b = (dicomseg.read_dicom_seg_labels(p, files) for p in (by_ext, by_fmt))
    assert a.any() and np.array_equal(a, b)
    assert [p.name for p in by_ext.parent.iterdir()] == ["lungs.dcm"]  # no temporary file left


def test_refuses_seg_for_a_non_dicom_input_before_any_work(sample_ct_crop, tmp_path, capsys):
    out = tmp_path / "lungs.dcm"
    # a model that does not exist: exit 4 (output problem), not 5, shows the refusal came first
    code = main(["segment", str(sample_ct_crop), str(out), "--model", str(tmp_path / "missing.keras")])
    assert code == OutputError.exit_code
    assert "DICOM SEG output needs a DICOM series" in capsys.readouterr().err
    assert not out.exists()


def test_write_labelmap_refuses_dcm_without_source(tmp_path):
    from LungSegLib.core.writers import write_labelmap

    with pytest.raises(OutputError, match="source DICOM series"):
        write_labelmap(np.zeros((2, 4, 4), np.uint8), Geometry((1, 1, 1)), tmp_path / "x.dcm")


def test_slicer_slice_order_and_wrong_grid(ct_series, outputs):
    """A labelmap in reversed slice order (as another reader may stack it) maps to the same frames; one
    on another grid is refused."""
    folder, files, image = ct_series
    labels, _, _ = outputs
    headers = dicomseg.read_source_headers(files)
    geometry = Geometry.from_sitk(image)
    flipped = Geometry(geometry.spacing, geometry.ijk_to_lps()[:3] @ [0, 0, labels.shape[0] - 1, 1],
                       geometry.direction @ np.diag([1, 1, -1]))
    np.testing.assert_array_equal(dicomseg.source_frames(labels[::-1], flipped, headers), labels)
    shifted = Geometry(geometry.spacing, np.add(geometry.origin, (0, 0, geometry.spacing[2] / 2)),
                       geometry.direction)
    with pytest.raises(OutputError, match="not a slice of the labelmap's grid"):
        dicomseg.source_frames(labels, shifted, headers)
    coarse = Geometry((geometry.spacing[0] * 2,) + geometry.spacing[1:], geometry.origin, geometry.direction)
    with pytest.raises(OutputError, match="orientation or pixel size"):
        dicomseg.source_frames(labels, coarse, headers)
    with pytest.raises(OutputError, match="not on the source grid"):
        dicomseg.source_frames(labels[:, :-1], geometry, headers)


def test_empty_segmentation_and_existing_output_are_refused(ct_series, outputs, tmp_path):
    _, files, image = ct_series
    labels, seg, _ = outputs
    geometry = Geometry.from_sitk(image)
    with pytest.raises(OutputError, match="empty"):
        dicomseg.write_dicom_seg(np.zeros_like(labels), geometry, files, tmp_path / "empty.dcm")
    assert not (tmp_path / "empty.dcm").exists()
    with pytest.raises(OutputError, match="already exists"):
        dicomseg.write_dicom_seg(labels, geometry, files, seg)


def test_display_colour_in_cielab():
    assert dicomseg.cielab_dicom((1.0, 1.0, 1.0)) == pytest.approx((65535, 32896, 32896), abs=40)
    assert dicomseg.cielab_dicom((0.0, 0.0, 0.0)) == (0, 32896, 32896)
    lab = dicomseg.cielab_dicom((1.0, 0.0, 0.0))  # sRGB red: L* 53.2, a* 80.1, b* 67.2
    assert lab == pytest.approx((53.24 * 655.35, (80.09 + 128) * 257, (67.20 + 128) * 257), abs=60)
