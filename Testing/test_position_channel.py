"""The position channel (``lungseg train --position-channel``): the network's own, weightless layer that
appends each pixel's left-right position, from training through the lean inference graph, exported
weights and safe-mode ``.keras`` loading in a fresh process."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from LungSegLib.core.lean_graph import lean_function  # noqa: E402
from LungSegLib.core.model import load_model  # noqa: E402
from LungSegLib.core.unet import UNetArchitecture, build_unet, position_ramp  # noqa: E402
from LungSegLib.errors import ModelError  # noqa: E402
from LungSegLib.labels import CLASS_NAMES  # noqa: E402
from LungSegLib.training.export import export_model  # noqa: E402

from conftest import REPO_ROOT  # noqa: E402
from test_weights import randomised  # noqa: E402

ARCH = UNetArchitecture(size=32, n_classes=3, base_filters=4, depth=2, position_channel=True)
CARD = {"name": "tiny-position", "classes": list(CLASS_NAMES), "architecture": ARCH.to_card(),
        "input": {"size": 32, "pixel_mm": 6.0, "hu_window": [-1024.0, 600.0]}}


def batch(seed=1, n=3):
    return np.random.default_rng(seed).uniform(0, 1, (n, 32, 32, 1)).astype("float32")


def test_layer_appends_the_column_position_and_has_no_weights():
    model = build_unet(size=32, base_filters=4, depth=2, position_channel=True)
    layer = model.get_layer("position")
    x = batch()
    out = np.asarray(layer(x))
    assert out.shape == (3, 32, 32, 2) and not layer.weights
    assert np.array_equal(out[..., 0], x[..., 0])  # the CT passes unchanged
    expected = np.broadcast_to(position_ramp(32)[None, None, :], (3, 32, 32))
    np.testing.assert_allclose(out[..., 1], expected, atol=1e-6)
    assert out[0, 0, 0, 1] == -1.0 and out[0, 0, -1, 1] == 1.0  # first column -1 (patient right), last +1
    # the first convolution reads both channels; without the option there is no such layer
    assert model.get_layer("enc0_conv0").kernel.shape[2] == 2
    assert "position" not in {layer.name for layer in build_unet(size=32, base_filters=4, depth=2).layers}


def test_lean_graph_matches_keras():
    model = randomised(ARCH.build())
    x = batch(2)
    expected = model.predict_on_batch(x)
    np.testing.assert_allclose(lean_function(model)(tf.constant(x)).numpy(), expected, atol=2e-5)
    bf16 = lean_function(model, "bfloat16")(tf.constant(x)).numpy()
    assert bf16.dtype == np.float32 and np.abs(bf16 - expected).max() < 0.05


def test_card_round_trip_and_old_cards_mean_no_position_channel():
    card = {"architecture": ARCH.to_card(), "input": {"size": 32}}
    assert card["architecture"]["position_channel"] is True
    assert UNetArchitecture.from_card(card) == ARCH
    del card["architecture"]["position_channel"]
    assert UNetArchitecture.from_card(card).position_channel is False


def test_exported_weights_and_keras_file_load_with_the_layer(tmp_path):
    model = randomised(ARCH.build(), seed=4)
    x = batch(5)
    expected = model.predict_on_batch(x)
    loaded = load_model(export_model(model, dict(CARD), tmp_path / "pos.npz"))
    assert loaded.card["architecture"]["position_channel"] is True
    assert loaded.keras_model.get_layer("position") is not None
    assert np.array_equal(loaded.keras_model.predict_on_batch(x), expected)
    # a card that leaves the layer out does not fit these weights (the first convolution reads 2 channels)
    with pytest.raises(ModelError, match="enc0_conv0"):
        export_model(model, dict(CARD, architecture=dict(ARCH.to_card(), position_channel=False)),
                     tmp_path / "wrong.npz")
    # a .keras checkpoint (what `lungseg train` writes and resumes from), read by a fresh Python process
    # in safe mode: the layer must be found by its registered name without running code from the file
    checkpoint = tmp_path / "pos.keras"
    model.save(checkpoint)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "expected.npy", expected)
    code = (
        "import sys, numpy as np\n"
        "from LungSegLib.core.model import _keras_file_model\n"
        "from pathlib import Path\n"
        "d = Path(sys.argv[1])\n"
        "m = _keras_file_model(d / 'pos.keras')\n"
        "out = m.predict_on_batch(np.load(d / 'x.npy'))\n"
        "print(float(np.abs(out - np.load(d / 'expected.npy')).max()))\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert float(proc.stdout.strip().splitlines()[-1]) == 0.0


SIZE = 64


def _mirror_task(rng, n):
    """Slices holding two identical dark discs mirrored about the centre on a uniform background, with the
    labels of the mirror-swap augmentation: the disc in the first half of the columns is right (1), the
    other left (2). The discs lie beyond the receptive field of a depth-1 U-Net from any border, so
    nothing a convolution sees tells them apart: only the position does."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    centre = (SIZE - 1) / 2
    images = np.full((n, SIZE, SIZE, 1), 0.6, np.float32)
    labels = np.zeros((n, SIZE, SIZE), np.uint8)
    for i in range(n):
        r, dy, dx = rng.uniform(5, 7), rng.uniform(-3, 3), rng.uniform(11, 13)
        for side, cx in ((1, centre - dx), (2, centre + dx)):
            disc = (yy - centre - dy) ** 2 + (xx - cx) ** 2 <= r * r
            images[i, disc, 0] = 0.1
            labels[i, disc] = side
    return images, labels


def _side_dice(position_channel: bool):
    from LungSegLib.training.losses import SegmentationLoss

    keras.utils.set_random_seed(0)
    x, y = _mirror_task(np.random.default_rng(0), 32)
    model = build_unet(size=SIZE, base_filters=4, depth=1, position_channel=position_channel)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=SegmentationLoss("ce_dice", 3))
    model.fit(x, y, batch_size=16, epochs=100, verbose=0)
    xt, yt = _mirror_task(np.random.default_rng(1), 16)
    pred = np.argmax(model.predict_on_batch(xt), axis=-1)
    return [2 * np.sum((pred == s) & (yt == s)) / max(1, np.sum(pred == s) + np.sum(yt == s)) for s in (1, 2)]


def test_the_side_is_learned_from_the_position_channel_alone():
    """With the channel a short run labels each disc by its side (measured 0.97 / 0.93); the same network
    without it cannot (0.07 / 0.58): the cue, not the image, carries the side."""
    with_channel, without = _side_dice(True), _side_dice(False)
    assert min(with_channel) > 0.85, with_channel
    assert min(without) < 0.6, without


def test_cli_train_has_it_by_default_and_fine_tuning_keeps_what_the_model_has(tmp_path, chest_phantom):
    from LungSegLib.cli import main

    from test_training import write_case

    cases = tmp_path / "cases"
    write_case(cases / "p1", chest_phantom)
    write_case(cases / "p2", chest_phantom, shift=(8.0, -4.0, 0.0))
    common = [str(cases), "--val", "p2", "--base-filters", "4", "--depth", "2", "--epochs", "1",
              "--steps-per-epoch", "1", "--batch-size", "2", "--quiet"]
    run = tmp_path / "pos"
    assert main(["train", "--out", str(run)] + common) == 0
    config = json.loads((run / "config.json").read_text())["config"]
    assert config["position_channel"] is True
    for name in ("best.keras", "best.weights.npz"):
        loaded = load_model(run / name)
        assert loaded.card["architecture"]["position_channel"] is True
        assert loaded.keras_model.get_layer("position") is not None
    plain = tmp_path / "plain"
    assert main(["train", "--out", str(plain), "--no-position-channel"] + common) == 0
    assert load_model(plain / "best.weights.npz").card["architecture"]["position_channel"] is False
    assert json.loads((plain / "config.json").read_text())["config"]["position_channel"] is False
    # --init takes the architecture from the model, with or without the channel, whatever the flag says
    for source, expected in ((run, True), (plain, False)):
        tuned = tmp_path / f"tuned-{expected}"
        assert main(["train", "--out", str(tuned), "--init", str(source / "best.weights.npz")] + common) == 0
        assert load_model(tuned / "best.weights.npz").card["architecture"]["position_channel"] is expected


def test_test_time_flip_keeps_the_sides_of_a_position_channel_model(sample_ct_crop):
    """The flip pass mirrors the CT but not the position ramp (the layer makes it inside the network), so
    its "right lung" is still the lung on the patient's right: averaged with the plain pass, the labels
    stay the plain pass's. The bundled model has the channel."""
    import SimpleITK as sitk

    from LungSegLib.core.confidence import ConfidenceOptions
    from LungSegLib.core.geometry import Geometry
    from LungSegLib.core.inference import segment_array

    bundled = load_model()
    assert bundled.card["architecture"]["position_channel"] is True
    image = sitk.ReadImage(str(sample_ct_crop))
    ct, geometry = sitk.GetArrayFromImage(image), Geometry.from_sitk(image)
    plain = segment_array(ct, geometry, bundled, compute_dtype="float32")
    flipped = segment_array(ct, geometry, bundled, compute_dtype="float32",
                            confidence=ConfidenceOptions(flip=True, flip_all=True))
    assert (plain.labels == 1).sum() > 1000 and (plain.labels == 2).sum() > 1000
    for lung in (1, 2):
        a, b = plain.labels == lung, flipped.labels == lung
        assert 2.0 * (a & b).sum() / (a.sum() + b.sum()) > 0.97, lung
    assert np.nanmax(flipped.confidence.stats["flip_disagreement_px"]) < 0.05 * (plain.labels > 0).sum()
