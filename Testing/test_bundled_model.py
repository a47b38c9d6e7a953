"""The bundled model on the shipped sample CT: a guard against a broken or degraded model file.

The sample (ACRIN-FLT-Breast-001, reduced) is one of the model's training patients, so this checks that the
shipped weights and the whole pipeline still reproduce a good segmentation — not how well the model
generalises (that is the leave-one-patient-out table in Resources/Models/MODEL_CARD.md).
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LungSegLib.core.geometry import Geometry, centroid_lps
from LungSegLib.evaluation.metrics import dice
from LungSegLib.core.model import BUNDLED_MODEL, load_model, models_dir, sha256_of
from LungSegLib.core.unet import UNetArchitecture
from LungSegLib.core.weights import WEIGHTS_FORMAT
from LungSegLib.labels import CLASS_NAMES

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "Resources" / "SampleData"
#: The last commit that shipped the bundled model as a Keras 3.15 ``.keras`` file (before the export).
KERAS_COMMIT = "f8f85a4d61cc6733bdbe403481434d3e11bc764b"
KERAS_FILE = "Resources/Models/lungseg_unet_3class.keras"


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


def test_bundled_model_is_exported_weights_with_a_complete_card():
    path = models_dir() / BUNDLED_MODEL
    card = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    assert path.suffix == ".npz" and card["file"] == path.name and card["sha256"] == sha256_of(path)
    assert card["weights_format"] == WEIGHTS_FORMAT and tuple(card["classes"]) == CLASS_NAMES
    assert UNetArchitecture.from_card(card) == UNetArchitecture(size=256, n_classes=3, base_filters=8, depth=4)
    assert card["architecture"]["parameters"] == 487899
    assert not list((REPO / "Resources" / "Models").glob("*.keras"))  # one copy, one format


def _git_show(commit: str, path: str, out: Path) -> None:
    try:
        proc = subprocess.run(["git", "-C", str(REPO), "show", f"{commit}:{path}"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"git is not available to read the former .keras model: {exc}")
    if proc.returncode != 0:  # e.g. a shallow CI clone without that commit
        pytest.skip(f"this checkout lacks commit {KERAS_COMMIT[:7]} holding the former .keras model")
    out.write_bytes(proc.stdout)


def test_exported_weights_label_the_sample_exactly_as_the_former_keras_file(sample_result, tmp_path):
    """The conversion lost nothing: bit-identical arrays, identical labels on the sample CT."""
    old = tmp_path / "lungseg_unet_3class.keras"
    _git_show(KERAS_COMMIT, KERAS_FILE, old)
    _git_show(KERAS_COMMIT, KERAS_FILE.replace(".keras", ".json"), old.with_suffix(".json"))
    from LungSegLib.api import LungSegmenter

    former, bundled = load_model(old), load_model()
    assert bundled.card["exported_from"]["sha256"] == former.card["sha256"]
    for a, b in zip(former.keras_model.get_weights(), bundled.keras_model.get_weights()):
        assert a.shape == b.shape and np.array_equal(a, b)
    ct = sitk.ReadImage(str(SAMPLE / "ACRIN-FLT-Breast-001_chest.nrrd"))
    labels = sitk.GetArrayFromImage(LungSegmenter(former, batch_size=8).segment(ct))
    pred, _, _ = sample_result
    assert np.array_equal(labels, pred), (np.bincount(labels.ravel(), minlength=3),
                                          np.bincount(pred.ravel(), minlength=3))
