"""The logic's options a Slicer user needs, on a real MRML scene: non-HU input, the model licence, an output
segmentation under another transform; and the panel's wording of errors (no command-line flags)."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "LungSeg"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from LungSegLib.errors import InputError, ModelError  # noqa: E402
from LungSegLogicLib.license import (BUNDLED_CARD, MODEL_CARD_URL, ModelLicenseNotAccepted,  # noqa: E402
                                     licenseFingerprint, licenseNote, requireAccepted)
from LungSegLogicLib.messages import panelMessage  # noqa: E402


# --- no MRML needed ---------------------------------------------------------------------------------------
def test_bundled_card_is_the_bundled_models_and_states_the_licence():
    from LungSegLib.core.model import BUNDLED_MODEL

    assert BUNDLED_CARD == Path(BUNDLED_MODEL).stem + ".json"
    note = licenseNote(None, REPO)
    assert note and "NSCLC-Radiomics" in note and "CC BY-NC" in note
    with pytest.raises(ModelLicenseNotAccepted) as info:
        requireAccepted(None, REPO, accepted=False)
    message = str(info.value)
    assert "acceptModelLicense=True" in message and MODEL_CARD_URL in message
    requireAccepted(None, REPO, accepted=True)  # accepted: no error
    assert "--" not in panelMessage(info.value) and "accept" in panelMessage(info.value)


def test_a_model_without_a_licence_note_needs_no_acceptance(oracle_model_path, tmp_path):
    assert licenseNote(oracle_model_path, REPO) is None
    requireAccepted(oracle_model_path, REPO, accepted=False)
    card = json.loads(oracle_model_path.with_suffix(".json").read_text())
    restricted = tmp_path / "restricted.keras"
    card["licence_note"] = "Research only."
    restricted.with_suffix(".json").write_text(json.dumps(card))
    assert licenseNote(restricted, REPO) == "Research only."
    assert licenseFingerprint("Research only.") != licenseFingerprint("Research only, v2.")


def test_panel_messages_never_show_command_line_flags():
    from LungSegLib.worker import error_from_event

    hu = error_from_event({"event": "error", "type": "InputError", "exit_code": 3, "code": "not_hu",
                           "reason": "The image has no air inside its field of view.",
                           "message": "The image has no air inside its field of view. If you are sure it is "
                                      "CT in HU, rerun with --no-hu-check (check_hu=False)."})
    assert isinstance(hu, InputError)
    text = panelMessage(hu)
    assert text.startswith("The image has no air") and "Allow non-HU input" in text and "--" not in text
    missing = ModelError("Model file not found: /x/m.npz. Reinstall LungSeg or pass --model PATH.")
    assert panelMessage(missing) == "Model file not found: /x/m.npz. Reinstall the LungSeg extension " \
                                    "(Extensions Manager)."
    # an error without a code that still names a flag: the flag is dropped, the rest kept
    assert panelMessage(InputError("Bad spacing; see --help.")) == "Bad spacing; see."


# --- on a real MRML scene (the mrml_app fixture skips where the slicer-core wheel is missing: Python 3.9) ---
from LungSegLogicLib import LungSegLogic, volume_array  # noqa: E402


@pytest.fixture
def logic(mrml_app, oracle_model_path):
    logic = LungSegLogic()
    logic.scene = mrml_app.scene
    logic.modelPath = str(oracle_model_path)
    return logic


@pytest.fixture
def shifted_ct(mrml_app, sample_ct_crop, tmp_path):
    """The sample crop with +1024 added: raw stored values without the rescale intercept (not HU)."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(sample_ct_crop))
    shifted = sitk.Cast(image, sitk.sitkInt32) + 1024
    path = tmp_path / "raw.nrrd"
    sitk.WriteImage(shifted, str(path))
    return mrml_app.load_volume(path, "Raw CT")


def test_non_hu_input_is_refused_in_panel_words_and_accepted_with_checkHU_false(mrml_app, logic, shifted_ct):
    nodes_before = mrml_app.node_ids()
    with pytest.raises(InputError) as info:
        logic.segment(shifted_ct)
    assert info.value.code == "not_hu" and "no air" in info.value.reason and info.value.reason in str(info.value)
    text = panelMessage(info.value)
    assert "Allow non-HU input" in text and "--" not in text
    assert mrml_app.node_ids() == nodes_before
    segmentation = logic.segment(shifted_ct, checkHU=False)  # the user's explicit choice
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 2


def test_the_bundled_models_licence_must_be_accepted_by_scripts(mrml_app, sample_ct_crop):
    logic = LungSegLogic()
    logic.scene = mrml_app.scene  # modelPath None: the bundled model, whose card has a licence note
    volume = mrml_app.load_volume(sample_ct_crop, "Chest CT")
    nodes_before = mrml_app.node_ids()
    with pytest.raises(ModelLicenseNotAccepted, match="acceptModelLicense=True"):
        logic.startSegmentation(volume)
    assert mrml_app.node_ids() == nodes_before  # refused before any work: no worker, no node
    task = logic.startSegmentation(volume, acceptModelLicense=True)
    task.cancel()
    assert task.waitStopped(30) and not task.tempDir.exists()


def test_existing_segmentation_under_another_transform_is_refused_not_moved(mrml_app, logic, sample_ct_crop):
    scene = mrml_app.scene
    volume = mrml_app.load_volume(sample_ct_crop, "Chest CT")
    target = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Planning")
    target.GetSegmentation().AddEmptySegment("Tumor_id", "Tumor", [1.0, 1.0, 0.0])
    moved = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "Registration")
    volume.SetAndObserveTransformNodeID(moved.GetID())
    with pytest.raises(InputError, match='"Planning" is under no transform but the CT "Chest CT" is under the '
                                         'transform "Registration"'):
        logic.startSegmentation(volume, target)
    assert target.GetTransformNodeID() is None and target.GetSegmentation().GetNumberOfSegments() == 1
    # changed while the worker ran: refused at import too, the node still not moved
    volume.SetAndObserveTransformNodeID(None)
    task = logic.startSegmentation(volume, target)
    target.SetAndObserveTransformNodeID(moved.GetID())
    with pytest.raises(InputError, match="does not move an existing segmentation"):
        task.wait(pollInterval=0.02)
    assert target.GetTransformNodeID() == moved.GetID()
    assert target.GetSegmentation().GetNumberOfSegments() == 1
    # a new segmentation follows the CT's transform
    volume.SetAndObserveTransformNodeID(moved.GetID())
    created = logic.segment(volume)
    assert created.GetTransformNodeID() == moved.GetID()
    assert volume_array(volume).shape == (8, 128, 128)


def _surface_mtime(segmentation, segment_id):
    poly = segmentation.GetSegment(segment_id).GetRepresentation("Closed surface")
    return None if poly is None else poly.GetMTime()


def test_show3d_builds_surfaces_for_the_lung_segments_only(mrml_app, logic, sample_ct_crop):
    scene = mrml_app.scene
    volume = mrml_app.load_volume(sample_ct_crop, "Chest CT")
    # a user's segmentation with another segment and no surfaces: nothing is built for it
    target = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Planning")
    target.CreateDefaultDisplayNodes()
    target.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    seg = target.GetSegmentation()
    seg.AddEmptySegment("Tumor_id", "Tumor", [1.0, 1.0, 0.0])
    from test_slicer_logic import _set_mask

    tumor = np.zeros(volume_array(volume).shape, np.uint8)
    tumor[2:5, 60:70, 60:70] = 1
    _set_mask(target, "Tumor_id", tumor, volume)
    logic.segment(volume, target, show3D=True)
    assert not seg.ContainsRepresentation("Closed surface")
    assert seg.GetSegment("Tumor_id").GetRepresentation("Closed surface") is None
    assert [w.code for w in logic.lastOutcome.warnings if w.code == "show3d_skipped"] == ["show3d_skipped"]
    # the same node once the user built surfaces: a re-run rebuilds the lungs' surfaces, not the Tumor's
    target.CreateClosedSurfaceRepresentation()
    tumor_surface = _surface_mtime(seg, "Tumor_id")
    lung_ids = logic.lungSegmentIds(target)
    lung_surfaces = {i: _surface_mtime(seg, i) for i in lung_ids.values()}
    logic.segment(volume, target, show3D=True)
    assert _surface_mtime(seg, "Tumor_id") == tumor_surface
    assert all(_surface_mtime(seg, i) != before for i, before in lung_surfaces.items())
    assert not [w for w in logic.lastOutcome.warnings if w.code == "show3d_skipped"]
    # hiding hides the lungs only, and removes no representation
    display = target.GetDisplayNode()
    assert logic.setShow3D(target, False) is None
    assert seg.ContainsRepresentation("Closed surface") and display.GetSegmentVisibility3D("Tumor_id")
    assert not any(display.GetSegmentVisibility3D(i) for i in lung_ids.values())
