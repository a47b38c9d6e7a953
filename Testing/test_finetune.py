"""``lungseg train --init bundled|MODEL``: a run that starts from existing weights (fine-tuning)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from LungSegLib.errors import InputError
from LungSegLib.training.train import TrainConfig, train

from test_training import write_case

pytest.importorskip("keras")


@pytest.fixture(scope="module")
def one_case(tmp_path_factory, chest_phantom) -> Path:
    root = tmp_path_factory.mktemp("ft_cases")
    write_case(root / "p1", chest_phantom, info={"patient_id": "P1"})
    return root


def _kernels(keras_model):
    """The convolution kernels and biases (what the optimizer changes), by layer name."""
    return {layer.name: [np.asarray(w) for w in layer.get_weights()]
            for layer in keras_model.layers if "conv" in type(layer).__name__.lower()}


def test_initial_model_holds_the_bundled_weights_and_takes_its_grid():
    from LungSegLib.core.model import load_model
    from LungSegLib.training.finetune import initial_model

    bundled = load_model()
    config = TrainConfig(size=64, pixel_mm=6.0, base_filters=4, depth=2)  # all overridden by the model
    model = initial_model("bundled", config)
    assert (config.size, config.pixel_mm, config.base_filters, config.depth) == (256, 1.5, 8, 4)
    assert model is not bundled.keras_model  # a copy: training it never changes the loaded model
    for a, b in zip(model.get_weights(), bundled.keras_model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_fine_tune_from_bundled_starts_at_its_weights_then_loads_and_segments(one_case, tmp_path, chest_phantom):
    from LungSegLib.core.inference import segment_array
    from LungSegLib.core.model import load_model

    bundled = load_model()
    # a learning rate of ~0: after two steps the kernels must still be the bundled ones (only the
    # BatchNorm running statistics move), which shows where the run started
    config = TrainConfig(init="bundled", epochs=1, steps_per_epoch=2, batch_size=2, patience=0,
                         augment=False, learning_rate=1e-12, min_learning_rate=1e-13)
    result = train(one_case, tmp_path / "ft", config, verbose=0, log=lambda *_: None)
    tuned = load_model(result.best_model)
    start, end = _kernels(bundled.keras_model), _kernels(tuned.keras_model)
    assert start.keys() == end.keys() and len(start) > 10
    for name in start:
        for a, b in zip(start[name], end[name]):
            np.testing.assert_allclose(a, b, atol=1e-6)
    saved = json.loads((tmp_path / "ft" / "config.json").read_text())["config"]
    assert saved["init"] == "bundled" and saved["size"] == 256 and saved["base_filters"] == 8
    assert json.loads(result.card.read_text())["training"]["init"] == "bundled"
    # ... and the fine-tuned file is a working LungSeg model
    shape = (24, 96, 96)
    geometry = chest_phantom.geometry(shape, (4.0, 4.0, 8.0))
    labels = segment_array(chest_phantom.ct(geometry, shape), geometry, tuned).labels
    assert labels.shape == shape and set(np.unique(labels)) <= {0, 1, 2}


def test_init_with_other_classes_or_a_missing_file_is_refused(one_case, tmp_path):
    with pytest.raises(InputError, match="--classes 3"):
        train(one_case, tmp_path / "a", TrainConfig(init="bundled", n_classes=1, epochs=1), verbose=0,
              log=lambda *_: None)
    with pytest.raises(InputError, match="--init"):
        train(one_case, tmp_path / "b", TrainConfig(init=str(tmp_path / "nope.keras"), epochs=1), verbose=0,
              log=lambda *_: None)
    assert not (tmp_path / "a" / "config.json").exists()  # refused before anything was written


def test_cli_train_init_option(one_case, tmp_path, capsys):
    from LungSegLib.cli import main

    code = main(["train", str(one_case), "--out", str(tmp_path / "cli"), "--init", "bundled", "--epochs", "1",
                 "--steps-per-epoch", "1", "--batch-size", "2", "--lr", "2e-4", "--no-augment", "--quiet"])
    assert code == 0
    assert json.loads((tmp_path / "cli" / "config.json").read_text())["config"]["init"] == "bundled"
    # with a real learning rate the kernels move away from the bundled ones
    from LungSegLib.core.model import load_model

    start, end = _kernels(load_model().keras_model), _kernels(load_model(tmp_path / "cli" / "best.keras").keras_model)
    assert any(not np.allclose(a, b, atol=1e-6) for n in start for a, b in zip(start[n], end[n]))
