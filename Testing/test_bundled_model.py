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
    assert UNetArchitecture.from_card(card) == UNetArchitecture(size=256, n_classes=3, base_filters=8, depth=4,
                                                                position_channel=True)
    assert card["architecture"]["parameters"] == 487971
    assert not list((REPO / "Resources" / "Models").glob("*.keras"))  # one copy, one format


def test_the_default_augmentation_is_the_bundled_models_recipe():
    """`lungseg train` with default augmentation trains the shipped recipe: every setting the card
    records has the card's value, and the switches added since are off."""
    from dataclasses import asdict

    from LungSegLib.training.augment import AugmentConfig

    card = json.loads((models_dir() / BUNDLED_MODEL).with_suffix(".json").read_text(encoding="utf-8"))
    recorded = card["training"]["augmentation"]
    defaults = asdict(AugmentConfig())
    for name, value in defaults.items():
        if name in recorded:
            assert (list(value) if isinstance(value, tuple) else value) == recorded[name], name
        elif name.startswith("p_") or isinstance(value, bool):  # a switch, not the strength behind one
            assert not value, f"{name} is on by default but the bundled model was trained without it"
    # and the network `lungseg train` builds by default is the bundled one
    from LungSegLib.training.train import TrainConfig

    assert TrainConfig().position_channel == UNetArchitecture.from_card(card).position_channel


def test_the_card_names_the_recipe_and_the_code_that_trained_the_weights():
    """Anyone can retrain the bundled model: the card gives the schedule, the augmentation, the epoch kept
    and the commit whose code trained it (the augmentation in the code has changed since)."""
    card = json.loads((models_dir() / BUNDLED_MODEL).with_suffix(".json").read_text(encoding="utf-8"))
    training = card["training"]
    assert training["loss"] == "ce_dice" and training["steps_per_epoch"] == 50 and training["batch_size"] == 8
    assert 1 <= training["epoch"] <= training["epochs_planned"] == 16
    assert {"p_pathology", "p_negative", "noise_hu"} <= set(training["augmentation"])
    commit = training["code_commit"]
    assert len(commit) == 40 and commit[:7] in training["command"]
    card_md = (models_dir() / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert commit[:7] in card_md  # the card's prose names the same code

    def git(*args):
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, timeout=60)

    try:
        shallow = git("rev-parse", "--is-shallow-repository")
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"git is not available to look the commit up: {exc}")
    if shallow.returncode != 0:
        pytest.skip("not a git checkout: the training commit cannot be looked up")
    if shallow.stdout.decode().strip() == "true":
        pytest.skip("a shallow clone: the training commit is not in it")
    assert git("cat-file", "-t", commit).stdout.decode().strip() == "commit"
