"""`lungseg import-rt`: a DICOM CT series and an RTSTRUCT, both written here, become a case folder."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

pydicom = pytest.importorskip("pydicom")

from LungSegLib.cli import main  # noqa: E402
from LungSegLib.errors import InputError, OutputError  # noqa: E402
from LungSegLib.training.rtstruct import RoiNames, import_rtstruct, polygon_mask  # noqa: E402

CT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2"
RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
FRAME = "1.2.826.0.1.3680043.2.1125.77.1"
SHAPE = (8, 32, 32)                 # k, j, i
SPACING = (1.5, 1.5, 3.0)           # i, j, k mm
ORIGIN = (-24.0, -30.0, -100.0)     # LPS mm of voxel (0, 0, 0)

# Right lung: a box of voxel centres i 4..11, j 8..23 (edges on half voxels) on slices 1..6.
RIGHT_BOX = ((3.5, 7.5), (11.5, 7.5), (11.5, 23.5), (3.5, 23.5))
# Left lung: an ellipse (patient left = larger i, since the i axis runs to the patient's left).
LEFT_ELLIPSE = [(23.5 + 4.6 * np.cos(t), 16.0 + 7.3 * np.sin(t))
                for t in np.linspace(0, 2 * np.pi, 48, endpoint=False)]
HOLE = ((21.5, 13.5), (24.5, 13.5), (24.5, 17.5), (21.5, 17.5))   # cut out of the left lung on slice 3
LUNG_SLICES = range(1, 7)


def lps(points_ij, k):
    """Continuous (i, j) index points on slice k -> flat LPS ContourData (mm)."""
    out = []
    for i, j in points_ij:
        out += [round(ORIGIN[0] + i * SPACING[0], 4), round(ORIGIN[1] + j * SPACING[1], 4),
                round(ORIGIN[2] + k * SPACING[2], 4)]
    return out


def standard_geometry():
    from LungSegLib.core.geometry import Geometry

    return Geometry(SPACING, ORIGIN)


def write_ct_series(folder: Path, frame: str = FRAME, hu=None, geometry=None) -> None:
    """One DICOM file per slice of ``hu`` ([k, j, i]) on ``geometry`` (default: the standard test grid)."""
    folder.mkdir(parents=True, exist_ok=True)
    if hu is None:
        hu = np.full(SHAPE, 40, np.int16)
        hu[:, :, :2] = -1000
    geometry = geometry or standard_geometry()
    row_col = np.concatenate([geometry.direction[:, 0], geometry.direction[:, 1]])  # Image Orientation
    orientation = "\\".join(f"{v:g}" for v in row_col)
    uid = "1.2.826.0.1.3680043.2.1125.77"
    for k in range(hu.shape[0]):
        image = sitk.GetImageFromArray(hu[k])
        image.SetSpacing(geometry.spacing[:2])
        position = geometry.ijk_to_lps()[:3] @ np.array([0.0, 0.0, k, 1.0])
        tags = {"0008|0060": "CT", "0008|0016": CT_SOP_CLASS, "0008|0018": f"{uid}.2.{k + 1}",
                "0020|000d": f"{uid}.3", "0020|000e": f"{uid}.2", "0020|0052": frame,
                "0010|0020": "RT-TEST", "0020|0013": str(k + 1),
                "0020|0032": "\\".join(f"{v:.4f}" for v in position), "0020|0037": orientation,
                "0028|1052": "-1024", "0028|1053": "1"}
        for key, value in tags.items():
            image.SetMetaData(key, value)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(folder / f"CT{k:03d}.dcm"))
        writer.Execute(image)


def write_rtstruct(path: Path, rois, frame: str = FRAME, to_lps=lps) -> Path:
    """rois: [(name, [(contour points (i, j), k, geometric type), ...]), ...]; ``to_lps(points, k)`` maps
    index points to flat LPS ContourData (default: the standard test grid)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTSTRUCT_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = RTSTRUCT_SOP_CLASS
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "RTSTRUCT"
    ds.PatientID = "RT-TEST"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.2.1125.77.3"
    ds.SeriesInstanceUID = generate_uid()
    ref = Dataset()
    ref.FrameOfReferenceUID = frame
    ds.ReferencedFrameOfReferenceSequence = [ref]
    ds.StructureSetROISequence = []
    ds.ROIContourSequence = []
    for number, (name, contours) in enumerate(rois, start=1):
        roi = Dataset()
        roi.ROINumber = number
        roi.ROIName = name
        roi.ReferencedFrameOfReferenceUID = frame
        ds.StructureSetROISequence.append(roi)
        item = Dataset()
        item.ReferencedROINumber = number
        item.ContourSequence = []
        for points, k, kind in contours:
            c = Dataset()
            c.ContourGeometricType = kind
            c.NumberOfContourPoints = len(points)
            c.ContourData = to_lps(points, k)
            item.ContourSequence.append(c)
        ds.ROIContourSequence.append(item)
    ds.save_as(str(path), enforce_file_format=True)
    return path


def expected_labels() -> np.ndarray:
    from matplotlib.path import Path as MplPath

    labels = np.zeros(SHAPE, np.uint8)
    jj, ii = np.mgrid[:SHAPE[1], :SHAPE[2]]
    centres = np.stack([ii.ravel(), jj.ravel()], axis=1).astype(float)
    ellipse = MplPath(LEFT_ELLIPSE).contains_points(centres).reshape(SHAPE[1:])
    for k in LUNG_SLICES:
        labels[k, 8:24, 4:12] = 1
        labels[k][ellipse] = 2
    labels[3, 14:18, 22:25] = 0
    return labels


def standard_rois():
    right = [(RIGHT_BOX, k, "CLOSED_PLANAR") for k in LUNG_SLICES]
    right.append(([(i + 0.03, j - 0.02) for i, j in RIGHT_BOX], 2, "CLOSED_PLANAR"))  # exported twice
    right.append((RIGHT_BOX, 20, "CLOSED_PLANAR"))                                    # beyond the CT
    left = [(LEFT_ELLIPSE, k, "CLOSED_PLANAR") for k in LUNG_SLICES] + [(HOLE, 3, "CLOSED_PLANAR")]
    left.append((((20.0, 10.0),), 4, "POINT"))
    body = [(((0.5, 0.5), (30.5, 0.5), (30.5, 30.5), (0.5, 30.5)), k, "CLOSED_PLANAR") for k in range(8)]
    return [("BODY", body), ("Lung_R", right), ("lung l", left)]


@pytest.fixture()
def ct_dir(tmp_path) -> Path:
    folder = tmp_path / "dicom"
    write_ct_series(folder)
    return folder


def test_polygon_fill_matches_matplotlib_even_odd():
    from matplotlib.path import Path as MplPath

    rng = np.random.default_rng(1)
    angles = np.sort(rng.uniform(0, 2 * np.pi, 25))
    radii = rng.uniform(4, 11, 25)
    poly = np.stack([15.3 + radii * np.cos(angles), 12.7 + radii * np.sin(angles)], axis=1)
    jj, ii = np.mgrid[:26, :30]
    want = MplPath(poly).contains_points(np.stack([ii.ravel(), jj.ravel()], 1).astype(float)).reshape(26, 30)
    got = polygon_mask(poly, (26, 30))
    assert got.sum() > 100
    assert np.array_equal(got, want)
    # a polygon partly outside the slice is clipped, not wrapped
    assert polygon_mask(poly - [20, 0], (26, 30)).sum() < got.sum()


def test_import_rasterises_lungs_with_holes_and_drops_duplicates(tmp_path, ct_dir):
    rs = write_rtstruct(ct_dir / "RS.dcm", standard_rois())  # the RTSTRUCT sits in the CT folder
    out = tmp_path / "case1"
    report = import_rtstruct(ct_dir, rs, out)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "label.nrrd")))
    assert np.array_equal(labels, expected_labels())
    ct = sitk.ReadImage(str(out / "ct.nrrd"))
    assert ct.GetSize() == SHAPE[::-1] and np.allclose(ct.GetOrigin(), ORIGIN)
    assert np.allclose(ct.GetSpacing(), SPACING) and sitk.GetArrayViewFromImage(ct).min() == -1000
    info = json.loads((out / "info.json").read_text())
    assert info["used_right"] == ["Lung_R"] and info["used_left"] == ["lung l"]
    assert info["ignored_rois"] == ["BODY"]
    assert info["duplicates_dropped"] == 1
    assert info["contours_skipped"] == 2  # beyond the CT, and the POINT
    assert any("outside the CT" in s for s in info["skipped_details"])
    assert info["lr_consistent_LPS"] is True and info["centroid_x_right"] < info["centroid_x_left"]
    assert info["vol_right_ml"] == pytest.approx(6 * 16 * 8 * 1.5 * 1.5 * 3 / 1000, abs=0.05)
    assert info["slices_with_lung"] == 6
    assert report.vol_left_ml == info["vol_left_ml"]


def test_combined_lung_structure_is_split_by_patient_side(tmp_path, ct_dir):
    both = [(RIGHT_BOX, k, "CLOSED_PLANAR") for k in LUNG_SLICES]
    both += [(LEFT_ELLIPSE, k, "CLOSED_PLANAR") for k in LUNG_SLICES]
    rs = write_rtstruct(tmp_path / "rs.dcm", [("LUNGS", both)])
    report = import_rtstruct(ct_dir, rs, tmp_path / "case2")
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "case2" / "label.nrrd")))
    want = expected_labels()
    want[3][(want[3] == 0) & (expected_labels()[2] == 2)] = 2  # no hole in this structure set
    assert np.array_equal(labels, want)
    assert report.used_combined == ["LUNGS"] and report.used_right == [] and report.lr_consistent_LPS


def test_cli_import_rt_names_exit_codes_and_overwrite(tmp_path, ct_dir, capsys):
    rois = [("Poumon D", [(RIGHT_BOX, k, "CLOSED_PLANAR") for k in LUNG_SLICES]),
            ("Poumon G", [(LEFT_ELLIPSE, k, "CLOSED_PLANAR") for k in LUNG_SLICES])]
    rs = write_rtstruct(tmp_path / "rs.dcm", rois)
    out = tmp_path / "case3"
    assert main(["import-rt", str(ct_dir), str(rs), str(out)]) == InputError.exit_code
    err = capsys.readouterr().err
    assert "No lung structure" in err and "Poumon D" in err and not out.exists()
    args = ["import-rt", str(ct_dir), str(rs), str(out), "--right-names", "poumon d", "--left-names", "POUMON G"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "right lung from: Poumon D" in printed and "Wrote" in printed
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "label.nrrd")))
    assert (labels == 1).sum() == 6 * 16 * 8 and (labels == 2).sum() > 0
    assert main(args) == OutputError.exit_code
    assert "--overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite", "--quiet"]) == 0


def test_structure_set_of_another_frame_of_reference_is_refused(tmp_path, ct_dir):
    rs = write_rtstruct(tmp_path / "rs.dcm", standard_rois(), frame="1.2.3.4.5")
    with pytest.raises(InputError, match="frame of reference"):
        import_rtstruct(ct_dir, rs, tmp_path / "case4")
    assert not (tmp_path / "case4").exists()


def test_not_an_rtstruct_is_refused(tmp_path, ct_dir):
    with pytest.raises(InputError, match="not an RTSTRUCT"):
        import_rtstruct(ct_dir, ct_dir / "CT000.dcm", tmp_path / "case5")
    with pytest.raises(InputError, match="not found"):
        import_rtstruct(ct_dir, tmp_path / "missing.dcm", tmp_path / "case5")


def test_roi_names_match_case_insensitively():
    names = RoiNames()
    assert names.role("  rt   lung ") == "right" and names.role("LUNG_LT") == "left"
    assert names.role("Lungs") == "lung" and names.role("Heart") is None


def outline_contours(mask2d: np.ndarray):
    """Marching-squares outlines (iso 0.5) of a binary slice as (i, j) index polygons: outer and hole rings."""
    import contourpy

    gen = contourpy.contour_generator(z=np.pad(mask2d, 1).astype(float), line_type="Separate")
    return [line[:-1] - 1.0 for line in gen.lines(0.5)]


@pytest.mark.parametrize("combined", [False, True])
def test_phantom_round_trip_on_a_flipped_grid(tmp_path, chest_phantom, combined):
    """Outlines of known labels, drawn on a CT whose i and j axes run towards patient right and anterior,
    come back as the same labels — also when both lungs are one structure split by side."""
    shape, spacing = (6, 40, 48), (6.0, 6.0, 15.0)
    geometry = chest_phantom.geometry(shape, spacing, direction=np.diag([-1.0, -1.0, 1.0]))
    truth = chest_phantom.labels(geometry, shape)
    folder = tmp_path / "dicom"
    write_ct_series(folder, hu=chest_phantom.ct(geometry, shape), geometry=geometry)

    def contours(label):
        return [(poly, k, "CLOSED_PLANAR") for k in range(shape[0])
                for poly in outline_contours(truth[k] == label)]

    if combined:
        rois = [("Lungs", contours(1) + contours(2))]
    else:
        rois = [("Right Lung", contours(1)), ("Left Lung", contours(2))]

    def to_lps(points, k):
        ijk1 = np.column_stack([np.asarray(points, float), np.full(len(points), float(k)), np.ones(len(points))])
        return [round(float(v), 4) for v in (geometry.ijk_to_lps() @ ijk1.T).T[:, :3].ravel()]

    rs = write_rtstruct(tmp_path / "rs.dcm", rois, to_lps=to_lps)
    report = import_rtstruct(folder, rs, tmp_path / "case")
    ct = sitk.ReadImage(str(tmp_path / "case" / "ct.nrrd"))
    assert np.allclose(ct.GetDirection(), geometry.direction.ravel())
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "case" / "label.nrrd")))
    assert (truth == 1).sum() > 100 and (truth == 2).sum() > 100
    assert np.array_equal(labels, truth)
    assert report.lr_consistent_LPS and report.centroid_x_right < report.centroid_x_left
    assert report.used_combined == (["Lungs"] if combined else [])

