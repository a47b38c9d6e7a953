"""Starting a training run from existing weights (``lungseg train --init bundled|MODEL``).

Fine-tuning the bundled model on a few local cases is how a site goes past what can be shipped: the
network keeps what it learned and adapts to the local scanner, protocol and contouring style in
minutes instead of the ~40 minutes (2 CPU cores) of a training from scratch. The initial network is
loaded with :func:`LungSegLib.core.model.load_model` (any model file LungSeg can load: the bundled
weights, a ``best.keras`` or exported ``.npz`` of an earlier run), so its checksum is verified and its
card says what input grid and architecture it has; the run's recipe takes those over (a network
can only continue on the grid it was trained on).
"""
from __future__ import annotations

from typing import Any, Optional

from ..errors import InputError

#: ``--init`` value naming the model bundled with LungSeg.
BUNDLED = "bundled"


def initial_model(init: str, config) -> Any:
    """A fresh Keras model holding the weights of ``init`` ("bundled" or a model path), with
    ``config`` (a :class:`LungSegLib.training.train.TrainConfig`, changed in place) set to that
    network's input grid, classes and architecture.

    Raises :class:`InputError` when the model cannot be loaded or its classes differ from the
    recipe's ``n_classes`` (fine-tuning keeps the output layer).
    """
    import keras

    from ..core.model import load_model
    from ..errors import ModelError

    try:
        loaded = load_model(None if init == BUNDLED else init)
    except ModelError as exc:
        raise InputError(f"--init {init}: {exc}") from exc
    if loaded.n_classes != config.n_classes:
        raise InputError(f"--init {init}: that model has {loaded.n_classes} output class(es) "
                         f"({', '.join(loaded.classes)}), the run asks for --classes {config.n_classes}; "
                         f"use --classes {loaded.n_classes}.")
    source = loaded.keras_model
    config.size = int(loaded.spec.size)
    config.pixel_mm = float(loaded.spec.pixel_mm)
    config.hu_window = tuple(float(v) for v in loaded.spec.hu_window)
    config.context_mm = float(loaded.spec.context_mm)
    arch = loaded.card.get("architecture") or {}
    config.base_filters = int(arch.get("base_filters", config.base_filters))
    config.depth = int(arch.get("depth", config.depth))
    config.position_channel = bool(arch.get("position_channel", False))
    # a fresh copy: the loaded model may be shared (and compiled) elsewhere in this process
    model = keras.Model.from_config(source.get_config())
    model.set_weights(source.get_weights())
    return model


def describe(init: Optional[str]) -> str:
    """How the run's weights started, for logs and cards."""
    return "random (He) initialisation" if not init else f"weights of {init}"
