"""The lean inference graph computes the Keras model's function (BatchNorm folded, fused convs)."""
from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from LungSegLib.core.lean_graph import lean_function  # noqa: E402
from LungSegLib.core.unet import build_unet  # noqa: E402


def _randomise_batch_norms(model, seed=0):
    """Non-trivial moving statistics, so that folding them into the kernels is really exercised."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, n).astype("f4"), rng.normal(0, 0.2, n).astype("f4"),
                               rng.normal(0, 0.2, n).astype("f4"), rng.uniform(0.5, 2.0, n).astype("f4")])


@pytest.fixture(scope="module")
def unet():
    model = build_unet(size=32, base_filters=4, depth=2)
    _randomise_batch_norms(model)
    return model


@pytest.fixture(scope="module")
def batch():
    return tf.constant(np.random.default_rng(1).random((3, 32, 32, 1), dtype=np.float32))


def test_float32_matches_keras(unet, batch):
    expected = unet(batch, training=False).numpy()
    got = tf.function(lean_function(unet))(batch).numpy()
    assert got.shape == expected.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_bfloat16_is_close_and_returns_float32(unet, batch):
    expected = unet(batch, training=False).numpy()
    got = tf.function(lean_function(unet, "bfloat16"))(batch).numpy()
    assert got.dtype == np.float32
    np.testing.assert_allclose(got.sum(axis=-1), 1.0, atol=1e-5)  # softmax computed in float32
    assert np.abs(got - expected).max() < 0.05


def test_binary_model_matches(batch):
    model = build_unet(size=32, n_classes=1, base_filters=4, depth=2)
    _randomise_batch_norms(model, seed=3)
    np.testing.assert_allclose(tf.function(lean_function(model))(batch).numpy(),
                               model(batch, training=False).numpy(), atol=1e-5)


def test_other_layers_run_through_keras(batch):
    """Layers it does not rewrite (LayerNormalization, a strided transposed conv with overlap) and a
    Sequential model still give Keras's result."""
    model = keras.Sequential([
        keras.Input((32, 32, 1)),
        keras.layers.Conv2D(4, 3, padding="same", use_bias=False),
        keras.layers.BatchNormalization(),
        keras.layers.Activation("relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Conv2DTranspose(4, 3, strides=2, padding="same"),
        keras.layers.LayerNormalization(),
        keras.layers.Conv2D(3, 1, activation="softmax"),
    ])
    _randomise_batch_norms(model, seed=5)
    np.testing.assert_allclose(tf.function(lean_function(model))(batch).numpy(),
                               model(batch, training=False).numpy(), atol=1e-5)
