"""Writing labelmaps: every format read back on the same grid, Slicer's .seg.nrrd read with slicerio,
atomic writes, and no overwriting without permission."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from LungSegLib.errors import OutputError
from LungSegLib.core.geometry import Geometry
from LungSegLib.core.writers import check_output_path, format_of, write_labelmap
from LungSegLib.labels import LUNG_LABELS as SEGMENTS


@pytest.fixture()
def labelmap():
    """A 0/1/2 labelmap on an oblique, anisotropic, odd-sized grid."""
    labels = np.zeros((5, 7, 9), np.uint8)  # k, j, i
    labels[1:4, 2:5, 1:3] = 1
    labels[2:4, 1:6, 6:8] = 2
    c, s = np.cos(0.3), np.sin(0.3)
    geometry = Geometry((0.7, 1.1, 2.5), (-31.5, 14.25, 80.0), [[c, -s, 0], [s, c, 0], [0, 0, 1]])
    return labels, geometry


@pytest.mark.parametrize("name, fmt", [("lungs.nrrd", "nrrd"), ("lungs.nii", "nii"),
                                       ("lungs.nii.gz", "nii.gz"), ("lungs.mha", "mha"),
                                       ("lungs.seg.nrrd", "seg.nrrd")])
def test_every_format_reads_back_on_the_same_grid(tmp_path, labelmap, name, fmt):
    labels, geometry = labelmap
    path = write_labelmap(labels, geometry, tmp_path / name)
    assert path == tmp_path / name and format_of(path) == fmt
    image = sitk.ReadImage(str(path))
    assert image.GetPixelID() == sitk.sitkUInt8
    assert np.array_equal(sitk.GetArrayFromImage(image), labels)
    back = Geometry.from_sitk(image)
    assert np.allclose(back.spacing, geometry.spacing, atol=1e-5)
    assert np.allclose(back.origin, geometry.origin, atol=1e-4)
    assert np.allclose(back.direction, geometry.direction, atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temporary file left behind


def test_seg_nrrd_is_a_slicer_segmentation(tmp_path, labelmap):
    slicerio = pytest.importorskip("slicerio")
    labels, geometry = labelmap
    path = write_labelmap(labels, geometry, tmp_path / "lungs.seg.nrrd")
    seg = slicerio.read_segmentation(str(path))
    assert np.array_equal(seg["voxels"], labels.transpose(2, 1, 0))  # slicerio is i, j, k ordered
    assert np.allclose(seg["ijkToLPS"], geometry.ijk_to_lps(), atol=1e-4)
    by_name = {s["name"]: s for s in seg["segments"]}
    assert set(by_name) == {"Right lung", "Left lung"}
    right, left = by_name["Right lung"], by_name["Left lung"]
    assert (right["labelValue"], left["labelValue"]) == (1, 2)
    assert not np.allclose(right["color"], left["color"], atol=0.1)  # told apart at a glance
    for segment, modifier in ((right, ["SCT", "24028007", "Right"]), (left, ["SCT", "7771000", "Left"])):
        term = segment["terminology"]
        assert term["category"] == ["SCT", "123037004", "Anatomical Structure"]
        assert term["type"] == ["SCT", "39607008", "Lung"]
        assert term["typeModifier"] == modifier
    # extents (i0 i1 j0 j1 k0 k1) bound each lung
    assert right["extent"] == [1, 2, 2, 4, 1, 3]
    assert left["extent"] == [6, 7, 1, 5, 2, 3]
    assert [s.name for s in SEGMENTS] == ["Right lung", "Left lung"]


def test_seg_nrrd_with_an_empty_lung_still_lists_both_segments(tmp_path, labelmap):
    slicerio = pytest.importorskip("slicerio")
    labels, geometry = labelmap
    labels[labels == 2] = 0
    seg = slicerio.read_segmentation(str(write_labelmap(labels, geometry, tmp_path / "one.seg.nrrd")))
    assert {s["name"] for s in seg["segments"]} == {"Right lung", "Left lung"}


def test_existing_output_is_refused_and_untouched(tmp_path, labelmap):
    labels, geometry = labelmap
    path = tmp_path / "lungs.nrrd"
    path.write_bytes(b"precious")
    with pytest.raises(OutputError, match="already exists.*--overwrite"):
        write_labelmap(labels, geometry, path)
    assert path.read_bytes() == b"precious"
    with pytest.raises(OutputError):
        check_output_path(path)
    write_labelmap(labels, geometry, path, overwrite=True)
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), labels)


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, labelmap, monkeypatch):
    labels, geometry = labelmap
    path = tmp_path / "lungs.seg.nrrd"
    path.write_bytes(b"previous result")

    def broken_write(image, filename, *args, **kwargs):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", broken_write)
    with pytest.raises(OutputError, match="disk full"):
        write_labelmap(labels, geometry, path, overwrite=True)
    assert path.read_bytes() == b"previous result"
    assert [p.name for p in tmp_path.iterdir()] == ["lungs.seg.nrrd"]


@pytest.mark.parametrize("name", ["lungs.png", "lungs", "lungs.nrrd.bak"])
def test_unknown_extension_is_refused(tmp_path, labelmap, name):
    labels, geometry = labelmap
    with pytest.raises(OutputError, match="Cannot tell the output format"):
        write_labelmap(labels, geometry, tmp_path / name)
    assert not (tmp_path / name).exists()


def test_explicit_format_must_agree_with_the_extension(tmp_path, labelmap):
    from LungSegLib.errors import UsageError

    labels, geometry = labelmap
    path = write_labelmap(labels, geometry, tmp_path / "lungs.nrrd", fmt="nrrd")
    assert path.read_bytes().startswith(b"NRRD")
    # NIfTI bytes under a .nrrd name (or NRRD under .out) would be unreadable: refused, nothing written
    for name, fmt in (("lungs.out", "nrrd"), ("x.nrrd", "nii.gz"), ("x.nii.gz", "nii"), ("x.seg.nrrd", "nrrd")):
        with pytest.raises(UsageError, match=f"--format {fmt} contradicts"):
            write_labelmap(labels, geometry, tmp_path / name, fmt=fmt)
    with pytest.raises(UsageError, match="Unknown output format"):
        write_labelmap(labels, geometry, tmp_path / "x.nrrd", fmt="png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lungs.nrrd"]


def test_folder_or_impossible_path_is_refused(tmp_path, labelmap):
    labels, geometry = labelmap
    (tmp_path / "out.nrrd").mkdir()
    with pytest.raises(OutputError, match="is a folder"):
        write_labelmap(labels, geometry, tmp_path / "out.nrrd")
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(OutputError):
        write_labelmap(labels, geometry, tmp_path / "file" / "lungs.nrrd")


def test_missing_parent_folders_are_created(tmp_path, labelmap):
    labels, geometry = labelmap
    path = write_labelmap(labels, geometry, tmp_path / "a" / "b" / "lungs.nii.gz")
    assert path.is_file()


def test_seg_nrrd_opens_in_slicers_segmentation_reader(tmp_path, labelmap):
    slicer = pytest.importorskip("slicer")
    labels, geometry = labelmap
    path = write_labelmap(labels, geometry, tmp_path / "lungs.seg.nrrd")
    scene = slicer.vtkMRMLScene()
    node = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(node)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    segmentation = node.GetSegmentation()
    segments = [segmentation.GetNthSegment(n) for n in range(segmentation.GetNumberOfSegments())]
    assert [(s.GetName(), s.GetLabelValue()) for s in segments] == [("Right lung", 1), ("Left lung", 2)]
    assert np.allclose(segments[0].GetColor(), SEGMENTS[0].color)
    assert "SCT^39607008^Lung~SCT^24028007^Right" in segments[0].GetTerminology()
    assert "SCT^39607008^Lung~SCT^7771000^Left" in segments[1].GetTerminology()
