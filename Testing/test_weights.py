"""Exported weights (named arrays in .npz + the card's architecture): export, load, and every refusal."""
from __future__ import annotations

import hashlib
import json
import zipfile

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from LungSegLib.cli import main  # noqa: E402
from LungSegLib.core.model import card_path, load_model, read_card, write_card  # noqa: E402
from LungSegLib.core.unet import UNetArchitecture, build_unet  # noqa: E402
from LungSegLib.core.weights import WEIGHTS_FORMAT, read_weights, write_weights  # noqa: E402
from LungSegLib.errors import ModelError, OutputError  # noqa: E402
from LungSegLib.labels import CLASS_NAMES  # noqa: E402
from LungSegLib.training.export import export_model, export_weights  # noqa: E402

ARCH = UNetArchitecture(size=32, n_classes=3, base_filters=4, depth=2)
#: A card as LungSeg 0.1's `lungseg train` wrote it: no size, n_classes, dropout or builder.
OLD_CARD = {"name": "tiny", "placeholder": False, "classes": list(CLASS_NAMES),
            "input": {"size": 32, "pixel_mm": 6.0, "hu_window": [-1024.0, 600.0]},
            "architecture": {"type": "2D U-Net", "base_filters": 4, "depth": 2, "batch_norm": True}}


def randomised(model, seed=0):
    """Every weight (BatchNorm statistics too) set to distinct random values, so a swapped or missed
    array changes the output."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        shape = tuple(variable.shape)
        values = rng.uniform(0.5, 1.5, shape) if "variance" in variable.name else rng.normal(0, 0.3, shape)
        variable.assign(values.astype("float32"))
    return model


def auto_named(model):
    """The same network with Keras' automatic layer names (as checkpoints of LungSeg 0.1 have)."""
    config = model.get_config()
    renamed = json.loads(json.dumps(config).replace('"enc', '"x_enc').replace('"dec', '"x_dec')
                         .replace('"bottom', '"x_bottom'))
    clone = keras.Model.from_config(renamed)
    clone.set_weights(model.get_weights())
    assert clone.layers[1].name.startswith("x_") and clone.layers[1].name != model.layers[1].name
    return clone


@pytest.fixture(scope="module")
def tiny():
    return randomised(ARCH.build())


@pytest.fixture()
def exported(tiny, tmp_path):
    return export_model(tiny, dict(OLD_CARD), tmp_path / "tiny.npz")


def batch(seed=1):
    return np.random.default_rng(seed).uniform(0, 1, (2, 32, 32, 1)).astype("float32")


def test_layer_names_are_fixed_whatever_was_built_before():
    first, second = build_unet(size=32, base_filters=4, depth=2), build_unet(size=32, base_filters=4, depth=2)
    assert [layer.name for layer in first.layers] == [layer.name for layer in second.layers]
    assert {"enc0_conv0", "enc1_bn1", "bottom_conv1", "dec0_up", "lungs"} <= {layer.name for layer in first.layers}


def test_export_then_load_gives_the_same_network(tiny, exported):
    loaded = load_model(exported)
    card = loaded.card
    assert card["weights_format"] == WEIGHTS_FORMAT and card["file"] == "tiny.npz"
    assert card["architecture"]["size"] == 32 and card["architecture"]["n_classes"] == 3
    assert card["architecture"]["parameters"] == tiny.count_params()
    assert card["sha256"] == hashlib.sha256(exported.read_bytes()).hexdigest()
    for a, b in zip(tiny.get_weights(), loaded.keras_model.get_weights()):
        assert np.array_equal(a, b)
    x = batch()
    assert np.array_equal(tiny.predict_on_batch(x), loaded.keras_model.predict_on_batch(x))
    assert loaded.classes == CLASS_NAMES and loaded.spec.size == 32


def test_weights_file_holds_only_named_float_arrays(tiny, exported):
    with zipfile.ZipFile(exported) as archive:
        names = sorted(archive.namelist())
    expected = sorted(f"{layer.name}/{v.name}.npy" for layer in tiny.layers for v in layer.weights)
    assert names == expected and "enc0_bn0/moving_mean.npy" in names
    arrays = read_weights(exported)
    assert all(a.dtype == np.float32 for a in arrays.values())


def test_export_is_byte_for_byte_reproducible(tiny, tmp_path):
    first = export_model(tiny, dict(OLD_CARD), tmp_path / "a.npz")
    second = export_model(tiny, dict(OLD_CARD), tmp_path / "b.npz")
    assert first.read_bytes() == second.read_bytes()


def test_keras_checkpoint_with_automatic_names_exports_exactly(tiny, tmp_path, capsys):
    checkpoint = tmp_path / "best.keras"
    auto_named(tiny).save(checkpoint)
    write_card(checkpoint, dict(OLD_CARD, keras_version=keras.__version__))
    assert main(["export-weights", str(checkpoint), str(tmp_path / "best.weights.npz")]) == 0
    assert "Wrote" in capsys.readouterr().out
    loaded = load_model(tmp_path / "best.weights.npz")
    assert loaded.card["exported_from"]["file"] == "best.keras"
    assert loaded.card["exported_from"]["sha256"] == read_card(checkpoint)["sha256"]
    x = batch(2)
    assert np.array_equal(tiny.predict_on_batch(x), loaded.keras_model.predict_on_batch(x))
    # never silently overwritten; --overwrite replaces
    before = (tmp_path / "best.weights.npz").read_bytes()
    assert main(["export-weights", str(checkpoint), str(tmp_path / "best.weights.npz")]) == 4
    assert "already exist" in capsys.readouterr().err
    assert (tmp_path / "best.weights.npz").read_bytes() == before
    assert main(["export-weights", str(checkpoint), str(tmp_path / "best.weights.npz"), "--overwrite"]) == 0


def test_export_refuses_to_share_the_checkpoints_card(tiny, tmp_path):
    checkpoint = tmp_path / "m.keras"
    tiny.save(checkpoint)
    write_card(checkpoint, dict(OLD_CARD))
    card_before = card_path(checkpoint).read_bytes()
    with pytest.raises(OutputError, match="share its card"):
        export_weights(checkpoint, tmp_path / "m.npz")
    assert card_path(checkpoint).read_bytes() == card_before and not (tmp_path / "m.npz").exists()


def test_export_refuses_a_network_of_another_architecture(tiny, tmp_path):
    with pytest.raises(ModelError, match="layers with weights"):
        export_model(tiny, dict(OLD_CARD, architecture=dict(OLD_CARD["architecture"], depth=3)),
                     tmp_path / "x.npz")
    with pytest.raises(ModelError, match="does not match"):
        export_model(tiny, dict(OLD_CARD, architecture=dict(OLD_CARD["architecture"], base_filters=8)),
                     tmp_path / "x.npz")
    assert not (tmp_path / "x.npz").exists()


def _rewrite(path, arrays):
    """Replace the weights and fix the card's checksum, so only the content is wrong."""
    write_weights(path, arrays)
    write_card(path, read_card(path))


def test_missing_extra_and_misshaped_weights_are_named(exported):
    arrays = read_weights(exported)
    good = dict(arrays)
    del arrays["dec0_conv1/kernel"]
    arrays["extra_layer/kernel"] = np.zeros(3, np.float32)
    arrays["enc1_bn0/gamma"] = np.zeros(99, np.float32)
    _rewrite(exported, arrays)
    with pytest.raises(ModelError) as info:
        load_model(exported)
    message = str(info.value)
    assert "dec0_conv1/kernel" in message and "extra_layer/kernel" in message
    assert "enc1_bn0/gamma (99,)" in message and "re-export" in message
    _rewrite(exported, good)
    assert load_model(exported).keras_model.count_params() > 0


def test_pickled_objects_and_non_float_arrays_are_refused(exported):
    with zipfile.ZipFile(exported, "a") as archive:
        with archive.open("evil.npy", "w") as member:
            np.lib.format.write_array(member, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    write_card(exported, read_card(exported))
    with pytest.raises(ModelError, match="not a readable LungSeg weights file"):
        load_model(exported)
    np.savez(exported, **{"lungs/kernel": np.zeros((1, 1, 4, 3), np.int32)})  # write_weights refuses it too
    write_card(exported, read_card(exported))
    with pytest.raises(ModelError, match="not a float array"):
        load_model(exported)


def test_non_finite_weights_are_refused(exported):
    arrays = read_weights(exported)
    arrays["lungs/bias"] = np.array([0.0, np.nan, 0.0], np.float32)
    _rewrite(exported, arrays)
    with pytest.raises(ModelError, match="NaN"):
        load_model(exported)


def test_checksum_is_verified(exported):
    card = read_card(exported)
    card["sha256"] = "0" * 64
    card_path(exported).write_text(json.dumps(card))
    with pytest.raises(ModelError, match="Checksum mismatch"):
        load_model(exported)


@pytest.mark.parametrize("change, message", [
    (lambda c: c.pop("weights_format"), "weights_format"),
    (lambda c: c["architecture"].pop("n_classes"), "lacks n_classes"),
    (lambda c: c["architecture"].update(builder="somebody.else"), "builder"),
    (lambda c: c["architecture"].update(size=30), "divisible"),
    (lambda c: c["input"].update(size=64), "input.size 64"),
    (lambda c: c.update(classes=["background", "lung"]), "output channels"),
])
def test_cards_that_cannot_rebuild_the_network_are_refused(exported, change, message):
    card = read_card(exported)
    change(card)
    card_path(exported).write_text(json.dumps(card))
    with pytest.raises(ModelError, match=message):
        load_model(exported)


def test_binary_network_round_trips(tmp_path):
    model = randomised(UNetArchitecture(size=32, n_classes=1, base_filters=4, depth=2).build(), seed=3)
    card = dict(OLD_CARD, classes=["background", "lung"])
    loaded = load_model(export_model(model, card, tmp_path / "binary.npz"))
    assert loaded.n_classes == 1 and loaded.card["architecture"]["n_classes"] == 1
    x = batch(4)
    assert np.array_equal(model.predict_on_batch(x), loaded.keras_model.predict_on_batch(x))


def test_not_a_weights_file_is_a_model_error(tmp_path):
    bogus = tmp_path / "bogus.npz"
    bogus.write_bytes(b"not a zip at all")
    write_card(bogus, dict(OLD_CARD, architecture=ARCH.to_card(), weights_format=WEIGHTS_FORMAT))
    with pytest.raises(ModelError, match="not a readable"):
        load_model(bogus)
    other = tmp_path / "model.h5"
    other.write_bytes(b"x")
    with pytest.raises(ModelError, match="exported weights"):
        load_model(other)
