"""Training labels with only one lung labelled keep that lung's side (right-only, left-only, and an
RTSTRUCT import with only "Lung R" contoured); a binary "lung" mask is still split by side."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from LungSegLib.core.postprocess import holds_two_lungs
from LungSegLib.labels import LEFT, RIGHT
from LungSegLib.training.dataset import find_cases, prepare_case, three_class_labels
from LungSegLib.core.preprocess import ModelGridSpec

from conftest import ChestPhantom

SHAPE = (20, 96, 96)
SPACING = (4.0, 4.0, 8.0)


@pytest.fixture(scope="module")
def phantom_labels():
    phantom = ChestPhantom()
    geometry = phantom.geometry(SHAPE, SPACING)
    return phantom, geometry, phantom.labels(geometry, SHAPE)  # identity direction: already canonical


def test_a_right_only_labelmap_stays_right_lung(phantom_labels):
    _, _, labels = phantom_labels
    right_only = np.where(labels == RIGHT, RIGHT, 0).astype(np.uint8)
    out = three_class_labels(right_only, "right-only")
    assert (out == LEFT).sum() == 0
    assert np.array_equal(out, right_only)


def test_the_issue_reproduction_480_voxels_right_only():
    labels = np.zeros((4, 12, 40), np.uint8)
    labels[:, 1:11, 3:15] = RIGHT   # 4 x 10 x 12 = 480 voxels, on the patient's right (small columns)
    out = three_class_labels(labels, "small")
    assert (out == RIGHT).sum() == 480 and (out == LEFT).sum() == 0


def test_a_left_only_labelmap_stays_left_lung(phantom_labels):
    _, _, labels = phantom_labels
    left_only = np.where(labels == LEFT, LEFT, 0).astype(np.uint8)
    assert np.array_equal(three_class_labels(left_only, "left-only"), left_only)


@pytest.mark.parametrize("value", [1, 7, 255])
def test_a_binary_mask_of_both_lungs_is_split_by_side(phantom_labels, value):
    _, _, labels = phantom_labels
    binary = ((labels > 0) * value).astype(np.uint8)
    out = three_class_labels(binary, "binary")
    assert np.array_equal(out, labels)


def test_two_lungs_are_told_from_one(phantom_labels):
    _, _, labels = phantom_labels
    assert holds_two_lungs(labels > 0)
    assert not holds_two_lungs(labels == RIGHT) and not holds_two_lungs(labels == LEFT)
    assert not holds_two_lungs(np.zeros((2, 3, 4), bool))
    bridged = labels > 0
    bridged[8:12, 40:48, :] = True  # lungs touching at the anterior junction: still two lungs
    assert holds_two_lungs(bridged)


def test_unknown_label_values_are_refused(phantom_labels):
    from LungSegLib.errors import InputError

    _, _, labels = phantom_labels
    bad = labels.copy()
    bad[0, 0, 0] = 5
    with pytest.raises(InputError, match="found values"):
        three_class_labels(bad, "bad")


def test_rtstruct_with_only_lung_r_trains_as_right_lung(tmp_path):
    pytest.importorskip("pydicom")
    from test_rtstruct import LUNG_SLICES, RIGHT_BOX, write_ct_series, write_rtstruct

    from LungSegLib.cli import main

    ct_dir = tmp_path / "dicom"
    write_ct_series(ct_dir)
    rs = write_rtstruct(tmp_path / "rs.dcm", [("Lung R", [(RIGHT_BOX, k, "CLOSED_PLANAR") for k in LUNG_SLICES])])
    cases = tmp_path / "cases"
    assert main(["import-rt", str(ct_dir), str(rs), str(cases / "right_only"), "--quiet"]) == 0
    label_file = sitk.GetArrayFromImage(sitk.ReadImage(str(cases / "right_only" / "label.nrrd")))
    assert set(np.unique(label_file).tolist()) == {0, RIGHT}
    info = json.loads((cases / "right_only" / "info.json").read_text())
    assert info["used_right"] == ["Lung R"] and info["vol_left_ml"] == 0.0
    assert any("no left lung" in w for w in info["warnings"])

    case = find_cases(cases)[0]
    cached = prepare_case(case, tmp_path / "cache", ModelGridSpec(size=32, pixel_mm=1.5))
    prepared = np.asarray(cached.labels)
    assert (prepared == RIGHT).sum() > 0
    assert (prepared == LEFT).sum() == 0
