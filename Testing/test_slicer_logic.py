"""LungSeg's Slicer logic against a real MRML scene (slicer-core wheel) and the real worker process."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("slicer", reason="the slicer-core wheel is not installed")
import slicer  # noqa: E402
import vtk  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "LungSeg"))

from LungSegLib.errors import Cancelled, InputError, ModelError  # noqa: E402
from LungSegLib.worker import WorkerError  # noqa: E402
from LungSegLib.labels import LUNG_LABELS as SEGMENTS  # noqa: E402
from LungSegLogicLib import SEGMENT_NAMES, LungSegLogic, missing_requirements, volume_array  # noqa: E402

BATCH = 3


def matrix(vtk_matrix) -> np.ndarray:
    return np.array([[vtk_matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _ijk(node):
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return m


def ijk_to_ras(node) -> np.ndarray:
    return matrix(_ijk(node))


def segment_mask(scene, segmentationNode, segmentId, referenceVolume) -> np.ndarray:
    """One segment as a boolean array on the reference volume's grid, through Slicer's own export."""
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segmentId)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(segmentationNode, ids, labelmap,
                                                                                  referenceVolume)
    mask = volume_array(labelmap) > 0
    scene.RemoveNode(labelmap)
    return mask


def terminology(segment) -> str:
    value = vtk.reference("")
    assert segment.GetTag(segment.GetTerminologyEntryTagName(), value)
    return str(value)


@pytest.fixture
def ct_in_study(mrml_app, sample_ct_crop):
    """The sample CT crop loaded by Slicer's volume reader, filed under Patient > Study."""
    volume = mrml_app.load_volume(sample_ct_crop, "Chest CT")
    sh = mrml_app.scene.GetSubjectHierarchyNode()
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient")
    study = sh.CreateStudyItem(patient, "Study")
    sh.CreateItem(study, volume)  # Slicer's GUI would have made an item on load; slicer-core does not
    return volume, study


@pytest.fixture
def logic(mrml_app, oracle_model_path):
    logic = LungSegLogic()
    logic.scene = mrml_app.scene
    logic.modelPath = str(oracle_model_path)
    return logic


def test_segment_creates_lung_segmentation_on_the_volume_grid(mrml_app, ct_in_study, logic, oracle_model,
                                                              sample_ct_crop, tmp_path):
    volume, study = ct_in_study
    scene = mrml_app.scene
    before = volume_array(volume).copy()
    image_mtime = volume.GetImageData().GetMTime()
    calls = []

    segmentation = logic.segment(volume, batchSize=BATCH, exportLabelmap=True, show3D=True,
                                 progressCallback=lambda done, total, status: calls.append((done, total, status)))

    # the input is untouched
    np.testing.assert_array_equal(volume_array(volume), before)
    assert volume.GetImageData().GetMTime() == image_mtime
    # progress: slices done grow to the total (8 slices in batches of 3), with status texts
    dones = [d for d, t, _ in calls if t]
    assert dones == sorted(dones) and dones[-1] == 8 and {t for _, t, _ in calls if t} == {8}
    assert any("Segmenting" in s for _, _, s in calls) and calls[-1][2] == "Done"

    # segments: names, IDs returned, colours (distinct), terminology
    seg = segmentation.GetSegmentation()
    assert segmentation.IsA("vtkMRMLSegmentationNode") and segmentation.GetName() == "Chest CT lungs"
    assert seg.GetNumberOfSegments() == 2
    outcome = logic.lastOutcome
    assert list(outcome.segmentIds) == list(SEGMENT_NAMES) == [s.name for s in SEGMENTS]
    for spec in SEGMENTS:
        segment = seg.GetSegment(outcome.segmentIds[spec.name])
        assert segment.GetName() == spec.name
        assert segment.GetColor() == pytest.approx(spec.color)
        assert terminology(segment) == spec.slicer_terminology()
        assert "SCT^39607008^Lung" in terminology(segment) and spec.modifier[0] in terminology(segment)
    assert seg.GetSegment(outcome.segmentIds["Right lung"]).GetColor() != \
        pytest.approx(seg.GetSegment(outcome.segmentIds["Left lung"]).GetColor())

    # geometry: reference geometry and the stored binary labelmaps follow the volume's IJK-to-RAS
    oriented = slicer.vtkOrientedImageData()
    oriented.SetImageToWorldMatrix(_ijk(volume))
    oriented.SetExtent(volume.GetImageData().GetExtent())
    reference = seg.GetConversionParameter(slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())
    assert reference == slicer.vtkSegmentationConverter.SerializeImageGeometry(oriented)
    labelmap_geometry = vtk.vtkMatrix4x4()
    seg.GetSegment(outcome.segmentIds["Left lung"]).GetRepresentation("Binary labelmap").GetImageToWorldMatrix(
        labelmap_geometry)
    np.testing.assert_allclose(matrix(labelmap_geometry), ijk_to_ras(volume), atol=1e-6)

    # the labelmap export equals what the library computes for the same CT
    import SimpleITK as sitk

    from LungSegLib.api import LungSegmenter

    expected = sitk.GetArrayFromImage(LungSegmenter(oracle_model, batch_size=BATCH).segment(
        sitk.ReadImage(str(sample_ct_crop))))
    assert (expected == 1).sum() > 100 and (expected == 2).sum() > 100
    labelmap = outcome.labelmapNode
    assert labelmap.IsA("vtkMRMLLabelMapVolumeNode")
    np.testing.assert_array_equal(volume_array(labelmap), expected)
    np.testing.assert_allclose(ijk_to_ras(labelmap), ijk_to_ras(volume), atol=1e-6)
    for spec in SEGMENTS:
        np.testing.assert_array_equal(segment_mask(scene, segmentation, outcome.segmentIds[spec.name], volume),
                                      expected == spec.value)
    voxel_ml = np.prod(volume.GetSpacing()) / 1000
    assert outcome.volumesMl["right lung"] == pytest.approx((expected == 1).sum() * voxel_ml)
    assert outcome.modelName == "oracle"
    assert outcome.elapsedS >= sum(outcome.timingsS.values()) > 0

    # subject hierarchy: results sit in the volume's study; 3-D representation exists
    sh = scene.GetSubjectHierarchyNode()
    assert sh.GetItemParent(sh.GetItemByDataNode(segmentation)) == study
    assert sh.GetItemParent(sh.GetItemByDataNode(labelmap)) == study
    assert seg.ContainsRepresentation("Closed surface")

    # .seg.nrrd round trip through Slicer's segmentation storage node
    path = tmp_path / "lungs.seg.nrrd"
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.WriteData(segmentation) and path.is_file()
    loaded = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "loaded")
    reader = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(reader)
    reader.SetFileName(str(path))
    assert reader.ReadData(loaded)
    loaded_seg = loaded.GetSegmentation()
    for spec in SEGMENTS:
        segment_id = loaded_seg.GetSegmentIdBySegmentName(spec.name)
        segment = loaded_seg.GetSegment(segment_id)
        assert segment.GetColor() == pytest.approx(spec.color, abs=1e-4)
        assert terminology(segment) == spec.slicer_terminology()
        np.testing.assert_array_equal(segment_mask(scene, loaded, segment_id, volume), expected == spec.value)


def test_existing_segmentation_keeps_other_segments(mrml_app, ct_in_study, logic):
    """Polled like the panel does; only the segments named Right/Left lung are replaced."""
    volume, _ = ct_in_study
    scene = mrml_app.scene
    target = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "My work")
    target.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    seg = target.GetSegmentation()
    seg.AddEmptySegment("Tumor_id", "Tumor", [1.0, 1.0, 0.0])
    seg.AddEmptySegment("old_right", "Right lung", [0.2, 0.2, 0.2])
    corner = np.zeros(volume_array(volume).shape, np.uint8)
    corner[:2, :10, :10] = 1
    for segment_id in ("Tumor_id", "old_right"):
        _set_mask(target, segment_id, corner, volume)
    tumor_before = segment_mask(scene, target, "Tumor_id", volume)
    assert tumor_before.sum() == 200
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "Registration")
    volume.SetAndObserveTransformNodeID(transform.GetID())
    target.SetAndObserveTransformNodeID(transform.GetID())  # same frame (another one is refused)
    nodes_before = mrml_app.node_ids()

    task = logic.startSegmentation(volume, target, batchSize=4)
    while not task.poll():
        time.sleep(0.05)

    assert mrml_app.node_ids() == nodes_before  # no new segmentation node
    assert target.GetTransformNodeID() == transform.GetID()  # not moved
    assert seg.GetNumberOfSegments() == 3
    assert task.outcome.segmentIds["Right lung"] == "old_right"  # replaced in place, ID kept
    np.testing.assert_array_equal(segment_mask(scene, target, "Tumor_id", volume), tumor_before)
    right = segment_mask(scene, target, "old_right", volume)
    assert right.sum() > 100 and not right[:2, :10, :10].all()
    assert seg.GetSegment("old_right").GetColor() == pytest.approx(SEGMENTS[0].color)
    assert seg.GetSegment("Tumor_id").GetColor() == pytest.approx((1.0, 1.0, 0.0))


def _set_mask(segmentationNode, segmentId, mask, volume):
    """Fill a segment from a [k, j, i] mask on ``volume``'s grid (what slicer.util does in Slicer)."""
    from vtk.util.numpy_support import numpy_to_vtk

    image = slicer.vtkOrientedImageData()
    image.SetDimensions(mask.shape[::-1])
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    image.GetPointData().GetScalars().DeepCopy(numpy_to_vtk(mask.ravel(), deep=True))
    image.SetImageToWorldMatrix(_ijk(volume))
    assert slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        image, segmentationNode, segmentId, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)


def test_cancel_leaves_the_scene_as_it_was(mrml_app, ct_in_study, logic):
    volume, _ = ct_in_study
    nodes_before = mrml_app.node_ids()
    cancel = threading.Event()
    tasks = []
    original = logic.startSegmentation

    def start(*args, **kwargs):
        tasks.append(original(*args, **kwargs))
        return tasks[-1]

    logic.startSegmentation = start
    with pytest.raises(Cancelled):
        logic.segment(volume, cancelEvent=cancel, progressCallback=lambda *a: cancel.set())
    task = tasks[0]
    assert task.process.returncode is not None  # the worker is gone
    assert not task.tempDir.exists()
    assert mrml_app.node_ids() == nodes_before


def test_failing_worker_surfaces_its_error(mrml_app, ct_in_study, logic, tmp_path):
    volume, _ = ct_in_study
    nodes_before = mrml_app.node_ids()
    logic.modelPath = str(tmp_path / "missing.keras")
    with pytest.raises(ModelError, match="missing.keras"):
        logic.segment(volume)
    assert mrml_app.node_ids() == nodes_before


def test_crashing_worker_reports_exit_code_and_stderr(mrml_app, ct_in_study, logic, tmp_path):
    volume, _ = ct_in_study
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'Illegal instruction (AVX missing?)' >&2\nexit 9\n")
    fake.chmod(0o755)
    logic.pythonExecutable = str(fake)
    with pytest.raises(WorkerError, match="exited with code 9") as info:
        logic.segment(volume)
    assert "Illegal instruction" in info.value.details


FAKE_WORKER = """
import json, sys
import numpy as np
from LungSegLib.worker import read_labelmap, write_volume
args = dict(zip(sys.argv[3::2], sys.argv[4::2]))  # after "-m LungSegLib.worker"
labels, ijk_to_ras = read_labelmap(args["--input"])
labels = np.zeros(labels.shape, np.uint8)
labels[:, :, : labels.shape[2] // 2] = 1
labels[:, :, labels.shape[2] // 2:] = 2
if "{shift}" == "yes":
    ijk_to_ras[0, 3] += 5.0
write_volume(labels, ijk_to_ras, args["--output"])
warnings = [{"code": "lung_too_small", "message": "The left lung is only 3.0 mL.", "lung": "left"},
            "an old worker's plain warning"]
print(json.dumps({"event": "done", "output": args["--output"], "volumes_ml": {}, "timings_s": {},
                  "warnings": warnings}))
"""


def fake_worker(tmp_path, shift: bool) -> str:
    """A stand-in worker (no TensorFlow) that writes a half-right, half-left labelmap."""
    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_WORKER.replace("{shift}", "yes" if shift else "no"))
    launcher = tmp_path / "python"
    launcher.write_text(f"#!/bin/sh\nexec {sys.executable} {script} \"$@\"\n")
    launcher.chmod(0o755)
    return str(launcher)


def test_a_failure_while_importing_the_result_leaves_no_new_node(mrml_app, ct_in_study, logic, tmp_path,
                                                                 monkeypatch):
    volume, _ = ct_in_study
    nodes_before = mrml_app.node_ids()
    logic.pythonExecutable = fake_worker(tmp_path, shift=False)

    def broken_export(*args, **kwargs):
        raise RuntimeError("export failed")

    monkeypatch.setattr(logic, "_labelmapNode", broken_export)  # the labelmap node step of the import
    with pytest.raises(RuntimeError, match="export failed"):
        logic.segment(volume, exportLabelmap=True)
    assert mrml_app.node_ids() == nodes_before
    monkeypatch.undo()
    segmentation = logic.segment(volume)  # the same stand-in worker, without the failure
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 2
    # the worker's warnings reach the panel as named findings (str() is what the panel shows)
    warnings = logic.lastOutcome.warnings
    assert [(w.code, w.lung) for w in warnings] == [("lung_too_small", "left"), ("warning", None)]
    assert [str(w) for w in warnings] == ["The left lung is only 3.0 mL.", "an old worker's plain warning"]


def test_a_result_off_the_input_grid_is_refused(mrml_app, ct_in_study, logic, tmp_path):
    volume, _ = ct_in_study
    nodes_before = mrml_app.node_ids()
    logic.pythonExecutable = fake_worker(tmp_path, shift=True)
    with pytest.raises(WorkerError, match="does not lie on the input volume's grid"):
        logic.segment(volume)
    assert mrml_app.node_ids() == nodes_before


def test_bad_inputs_are_refused_before_any_work(mrml_app, ct_in_study, logic):
    volume, _ = ct_in_study
    with pytest.raises(InputError, match="Select an input"):
        logic.segment(None)
    label = mrml_app.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    label.CopyOrientation(volume)
    label.SetAndObserveImageData(volume.GetImageData())
    with pytest.raises(InputError, match="not a scalar"):
        logic.segment(label)
    empty = mrml_app.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(InputError, match="no voxels"):
        logic.segment(empty)
    with pytest.raises(InputError, match="not a segmentation"):
        logic.segment(volume, segmentationNode=empty)


def test_missing_requirements_reads_markers_and_accepts_any_tensorflow_build(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# comment\n"
                            "tensorflow-cpu>=2.16,<3  # any installed TensorFlow build counts\n"
                            "tensorflow>=2.16,<3\n"
                            "numpy>=1.0\n"
                            "numpy >= 999\n"
                            "surely-not-installed-lungseg-pkg>=1,<2\n"
                            "scipy>=999; sys_platform == 'nonexistent'\n")
    assert missing_requirements(requirements) == ["numpy>=999", "surely-not-installed-lungseg-pkg<2,>=1"]
    assert missing_requirements() == []  # the shipped Resources/requirements.txt, in this environment


def test_logic_imports_neither_tensorflow_nor_scipy():
    """The module must load in a Slicer without the dependencies, to offer installing them."""
    code = ("import sys; sys.path[:0] = [%r, %r]; import LungSegLogicLib; "
            "print(sorted(m for m in ('tensorflow', 'keras', 'scipy') if m in sys.modules))"
            % (str(REPO / "LungSeg"), str(REPO)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=""))
    assert out.stdout.strip() == "[]"
