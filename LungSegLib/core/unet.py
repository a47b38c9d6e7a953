"""The 2-D U-Net (Keras 3) that labels one axial slice at a time.

The network is defined here in code, and a model card's ``architecture`` section
(:class:`UNetArchitecture`) says which one: that is all it takes to rebuild it, so shipped weights need
no Keras serialisation (see :mod:`.weights`). Every layer has a fixed name (``enc0_conv1``, ``dec2_up``,
``lungs``...), the keys of the exported weight arrays; do not rename them without a new weights format.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

from ..errors import ModelError

#: ``architecture["builder"]`` of a card whose network :func:`build_unet` builds.
BUILDER = "LungSegLib.core.unet.build_unet"


@dataclass(frozen=True)
class UNetArchitecture:
    """The arguments of :func:`build_unet`: enough to rebuild the network of a model card.

    Attributes:
        size: pixels per side of the input slice (the card's ``input.size``).
        n_classes: output channels: 3 (softmax: background, right lung, left lung) or 1 (sigmoid lung).
        base_filters: filters of the first level (doubling per level).
        depth: number of 2x poolings.
        batch_norm: BatchNormalization after each 3x3 convolution.
        dropout: dropout rate at the bottom (no weights; training only).
        in_channels: input channels: 1 (the slice), or 3 with through-plane context (the card's
            ``input.context_mm``; cards written before it existed mean 1).
        position_channel: the network appends :class:`PositionChannel` (the model-grid column as a
            ramp) to its input, so it can tell the patient's right half from the left without
            inferring it from context (cards written before it existed mean False).
    """

    size: int
    n_classes: int
    base_filters: int
    depth: int
    batch_norm: bool = True
    dropout: float = 0.0
    in_channels: int = 1
    position_channel: bool = False

    def to_card(self) -> Dict[str, Any]:
        """The card's ``architecture`` fields that rebuild this network."""
        return {"type": "2D U-Net", "builder": BUILDER, "size": self.size, "n_classes": self.n_classes,
                "base_filters": self.base_filters, "depth": self.depth, "batch_norm": self.batch_norm,
                "dropout": self.dropout, "in_channels": self.in_channels,
                "position_channel": self.position_channel}

    @classmethod
    def from_card(cls, card: Dict[str, Any], complete: bool = True) -> "UNetArchitecture":
        """The architecture a model card records.

        ``complete=False`` accepts cards written before the card held every field (``lungseg train``
        of LungSeg 0.1): ``size`` then comes from ``input.size``, ``n_classes`` from ``classes`` and
        ``dropout`` defaults to 0 (it has no weights). Raises :class:`ModelError` when a field is
        missing or invalid, or the card names another network.
        """
        arch = dict(card.get("architecture") or {})
        builder = arch.get("builder", BUILDER if not complete else None)
        if builder != BUILDER:
            raise ModelError(f"The model card's architecture.builder is {builder!r}: LungSeg can only rebuild "
                             f"networks of {BUILDER} from weights. Export the weights with `lungseg "
                             "export-weights` from a model trained by `lungseg train`.")
        if not complete:
            classes = card.get("classes") or ()
            arch.setdefault("size", (card.get("input") or {}).get("size"))
            arch.setdefault("n_classes", 1 if len(classes) == 2 else len(classes) or None)
            arch.setdefault("dropout", 0.0)
        missing = [k for k in ("size", "n_classes", "base_filters", "depth", "batch_norm", "dropout")
                   if arch.get(k) is None]
        if missing:
            raise ModelError(f"The model card's architecture lacks {', '.join(missing)}: the network cannot "
                             "be rebuilt. Re-export the weights with `lungseg export-weights`.")
        try:
            result = cls(size=int(arch["size"]), n_classes=int(arch["n_classes"]),
                         base_filters=int(arch["base_filters"]), depth=int(arch["depth"]),
                         batch_norm=bool(arch["batch_norm"]), dropout=float(arch["dropout"]),
                         in_channels=int(arch.get("in_channels", 1)),
                         position_channel=bool(arch.get("position_channel", False)))
        except (TypeError, ValueError) as exc:
            raise ModelError(f"The model card's architecture is invalid: {exc}") from exc
        if result.n_classes not in (1, 3) or result.base_filters < 1 or result.depth < 1 \
                or result.size < 1 or result.size % (2 ** result.depth) or not 0 <= result.dropout < 1 \
                or result.in_channels not in (1, 3):
            raise ModelError(f"The model card's architecture {result} is not one build_unet makes "
                             "(n_classes 1 or 3, in_channels 1 or 3, size divisible by 2**depth).")
        input_size = (card.get("input") or {}).get("size")
        if input_size is not None and int(input_size) != result.size:
            raise ModelError(f"The model card says input.size {input_size} but architecture.size "
                             f"{result.size}: fix the card.")
        return result

    def build(self, name: Optional[str] = None):
        """The Keras model (freshly initialised weights)."""
        return build_unet(size=self.size, n_classes=self.n_classes, base_filters=self.base_filters,
                          depth=self.depth, batch_norm=self.batch_norm, dropout=self.dropout, name=name,
                          in_channels=self.in_channels, position_channel=self.position_channel)


#: ``PositionChannel``'s registered Keras name (``package>name``): ``.keras`` files refer to it.
_KERAS_PACKAGE = "LungSeg"


def position_layer():
    """:class:`PositionChannel`, defined (and registered for safe-mode loading) on first use, so that
    importing this module does not import Keras."""
    global PositionChannel
    if PositionChannel is not None:
        return PositionChannel
    import keras

    @keras.saving.register_keras_serializable(package=_KERAS_PACKAGE, name="PositionChannel")
    class PositionChannel(keras.layers.Layer):
        """Appends one channel to a ``[B, H, W, C]`` slice batch: the column's position across the
        width, from -1 (first column) to +1 (last), the same in every row and every slice.

        On the body-centred canonical model grid (columns run towards the patient's left) the sign
        says which half of the body a pixel is in. The training mirror swaps the lung labels, so a
        network without this cue must work out the side from context alone, and some seeds never
        do (``benchmarks/results/lopo/seed2``). It has no weights.
        """

        def compute_output_shape(self, input_shape):
            return tuple(input_shape[:-1]) + (None if input_shape[-1] is None else input_shape[-1] + 1,)

        def call(self, x):
            from keras import ops

            width = x.shape[2]
            ramp = ops.cast(ops.reshape(ops.linspace(-1.0, 1.0, width), (1, 1, width, 1)), x.dtype)
            shape = ops.shape(x)
            return ops.concatenate([x, ops.broadcast_to(ramp, (shape[0], shape[1], width, 1))], axis=-1)

    return PositionChannel


#: Set by :func:`position_layer` (the Keras layer class), None before Keras is needed.
PositionChannel = None


def position_ramp(width: int):
    """The values :class:`PositionChannel` appends, per column (float32, -1 .. +1)."""
    import numpy as np

    return np.linspace(-1.0, 1.0, width, dtype=np.float32)


def build_unet(size: int = 256, n_classes: int = 3, base_filters: int = 16, depth: int = 4,
               batch_norm: bool = True, dropout: float = 0.0, name: Optional[str] = None,
               in_channels: int = 1, position_channel: bool = False):
    """A U-Net for ``size`` x ``size`` slices of ``in_channels`` channels (the slice, or the slice with
    the CT below and above it); ``position_channel`` appends :class:`PositionChannel` to the input.

    Each level is two 3x3 convolutions (+ BatchNormalization) and ReLU; ``depth`` 2x poolings, filters
    doubling from ``base_filters``; the decoder upsamples with 2x2 transposed convolutions and
    concatenates the skip connections. ``n_classes == 1`` gives a sigmoid "lung" map (binary model),
    otherwise a softmax over background / right lung / left lung.
    """
    import keras
    from keras import layers

    if size % (2 ** depth):
        raise ValueError(f"size {size} must be divisible by 2**depth = {2 ** depth}")

    # Fixed layer names (not Keras' per-session counters conv2d_7...): the weights file is keyed by them.
    def block(x, filters, prefix):
        for i in range(2):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=not batch_norm,
                              kernel_initializer="he_normal", name=f"{prefix}_conv{i}")(x)
            if batch_norm:
                x = layers.BatchNormalization(name=f"{prefix}_bn{i}")(x)
            x = layers.Activation("relu", name=f"{prefix}_relu{i}")(x)
        return x

    inputs = keras.Input((size, size, in_channels), name="ct")
    x = position_layer()(name="position")(inputs) if position_channel else inputs
    skips = []
    for level in range(depth):
        x = block(x, base_filters * 2 ** level, f"enc{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)
    x = block(x, base_filters * 2 ** depth, "bottom")
    if dropout:
        x = layers.Dropout(dropout, name="bottom_dropout")(x)
    for level in reversed(range(depth)):
        x = layers.Conv2DTranspose(base_filters * 2 ** level, 2, strides=2, padding="same",
                                   name=f"dec{level}_up")(x)
        x = layers.Concatenate(name=f"dec{level}_concat")([x, skips[level]])
        x = block(x, base_filters * 2 ** level, f"dec{level}")
    activation = "sigmoid" if n_classes == 1 else "softmax"
    outputs = layers.Conv2D(n_classes, 1, activation=activation, dtype="float32", name="lungs")(x)
    return keras.Model(inputs, outputs, name=name or f"lungseg_unet_d{depth}_f{base_filters}")


def count_flops(model) -> float:
    """Floating-point operations (multiply + add = 2) of one forward pass per slice.

    Counted from the convolution layers' shapes, which is where nearly all the work is.
    """
    from keras import layers

    flops = 0.0
    for layer in model.layers:
        if isinstance(layer, (layers.Conv2D, layers.Conv2DTranspose)):
            kh, kw = layer.kernel_size
            cin = layer.input.shape[-1]
            out_h, out_w, cout = layer.output.shape[1:]
            if isinstance(layer, layers.Conv2DTranspose):
                in_h, in_w = layer.input.shape[1:3]
                flops += 2.0 * in_h * in_w * cin * cout * kh * kw
            else:
                flops += 2.0 * out_h * out_w * cin * cout * kh * kw
    return flops
