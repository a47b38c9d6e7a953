"""The bundled model on the shipped sample CT: a guard against a broken or degraded model file.

The sample (ACRIN-FLT-Breast-001, reduced) is one of the model's training patients, so this checks that the
shipped weights and the whole pipeline still reproduce a good segmentation — not how well the model
generalises (that is the leave-one-patient-out table in Resources/Models/MODEL_CARD.md).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LungSegLib.core.geometry import Geometry, centroid_lps
from LungSegLib.evaluation.metrics import dice
from LungSegLib.core.model import load_model

SAMPLE = Path(__file__).resolve().parents[1] / "Resources" / "SampleData"


@pytest.fixture(scope="module")
def sample_result():
    model = load_model()
    from LungSegLib.api import LungSegmenter

    ct = sitk.ReadImage(str(SAMPLE / "ACRIN-FLT-Breast-001_chest.nrrd"))
    truth = sitk.ReadImage(str(SAMPLE / "ACRIN-FLT-Breast-001_lungs-label.nrrd"))
    labels = LungSegmenter(model, batch_size=8).segment(ct)
    return sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(truth), Geometry.from_sitk(ct)


@pytest.mark.parametrize("label", [1, 2])
def test_bundled_model_segments_each_lung_of_the_sample(sample_result, label):
    pred, truth, _ = sample_result
    assert dice(pred == label, truth == label) >= 0.93


def test_bundled_model_puts_the_right_lung_on_the_patients_right(sample_result):
    pred, _, geometry = sample_result
    assert centroid_lps(pred == 1, geometry)[0] < centroid_lps(pred == 2, geometry)[0]


def test_bundled_model_lung_volumes_are_close(sample_result):
    pred, truth, _ = sample_result
    for label in (1, 2):
        assert abs(np.count_nonzero(pred == label) / np.count_nonzero(truth == label) - 1) < 0.1
