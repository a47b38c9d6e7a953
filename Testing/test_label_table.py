"""The label table is the one source of label facts: what the writers, the metrics, the volumes and the
model loader use comes from LungSegLib.labels, and a model whose card does not match it is refused."""
from __future__ import annotations

import json

import numpy as np
import pytest

from LungSegLib import labels
from LungSegLib.errors import ModelError


def test_label_table_values_names_and_codes():
    assert [(lab.value, lab.name, lab.side) for lab in labels.LUNG_LABELS] == [
        (labels.RIGHT, "Right lung", "right"), (labels.LEFT, "Left lung", "left")]
    assert labels.CLASS_NAMES == ("background", "right lung", "left lung")
    assert labels.by_side("left").value == labels.LEFT and labels.by_value(labels.RIGHT).side == "right"
    right = labels.by_value(labels.RIGHT).slicer_terminology()
    assert "SCT^39607008^Lung" in right and "SCT^24028007^Right" in right
    assert "SCT^7771000^Left" in labels.by_value(labels.LEFT).slicer_terminology()
    with pytest.raises(KeyError):
        labels.by_value(0)


def test_check_classes_accepts_the_two_label_sets_only():
    labels.check_classes(["background", "right lung", "left lung"])
    labels.check_classes(["Background", "Lung"])
    for wrong in (["background", "left lung", "right lung"], ["background", "lung", "tumour"], []):
        with pytest.raises(ValueError, match="not LungSeg's label set"):
            labels.check_classes(wrong)


def test_postprocess_and_metrics_use_the_table():
    from LungSegLib.core import postprocess
    from LungSegLib.evaluation import metrics

    assert (postprocess.RIGHT, postprocess.LEFT) == (labels.RIGHT, labels.LEFT)
    lab = np.zeros((2, 4, 6), np.uint8)
    lab[:, :, :3] = labels.RIGHT
    lab[:, :, 3:] = labels.LEFT
    swapped = metrics.swap_labels(lab)
    assert np.all(swapped[:, :, :3] == labels.LEFT) and np.all(swapped[:, :, 3:] == labels.RIGHT)


def test_volumes_are_named_from_the_table():
    from LungSegLib.core.geometry import Geometry
    from LungSegLib.core.inference import SegmentationResult

    lab = np.zeros((2, 5, 5), np.uint8)
    lab[0, :2] = labels.RIGHT   # 10 voxels
    lab[1, :1] = labels.LEFT    # 5 voxels
    result = SegmentationResult(lab, Geometry((2.0, 2.0, 2.5)))  # 10 mm^3 = 0.01 mL per voxel
    assert result.volumes_ml() == pytest.approx({"right lung": 0.1, "left lung": 0.05})
    assert list(result.volumes_ml()) == list(labels.volume_names().values())


def test_overview_colours_are_the_segment_colours():
    from LungSegLib.core import overview

    assert overview._COLOURS == {lab.value: lab.color_255 for lab in labels.LUNG_LABELS}
    assert overview._COLOURS[labels.RIGHT] == (128, 174, 128)


@pytest.fixture(scope="module")
def tiny_keras(tmp_path_factory):
    """A tiny 3-class U-Net saved as .keras (its card is written per test)."""
    from LungSegLib.core.unet import build_unet

    path = tmp_path_factory.mktemp("classes") / "tiny.keras"
    build_unet(size=32, n_classes=3, base_filters=2, depth=1).save(path)
    return path


def _with_card(path, classes):
    from LungSegLib.core.model import write_card

    write_card(path, {"name": "tiny", "classes": classes, "input": {"size": 32, "pixel_mm": 6.0}})
    return path


def test_loading_checks_the_card_classes_against_the_label_table(tiny_keras):
    from LungSegLib.core.model import load_model

    model = load_model(_with_card(tiny_keras, ["background", "right lung", "left lung"]))
    assert model.classes == labels.CLASS_NAMES and model.n_classes == 3
    with pytest.raises(ModelError, match="not LungSeg's label set"):
        load_model(_with_card(tiny_keras, ["background", "left lung", "right lung"]))


def test_loading_checks_the_output_channels_against_the_classes(tiny_keras):
    from LungSegLib.core.model import load_model

    with pytest.raises(ModelError, match="3 output channels .* need 1"):
        load_model(_with_card(tiny_keras, list(labels.BINARY_CLASS_NAMES)))
    card = json.loads(tiny_keras.with_suffix(".json").read_text())
    assert card["classes"] == ["background", "lung"]
