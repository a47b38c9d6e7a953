"""The 2-D U-Net (Keras 3) that labels one axial slice at a time."""
from __future__ import annotations

from typing import Optional


def build_unet(size: int = 256, n_classes: int = 3, base_filters: int = 16, depth: int = 4,
               batch_norm: bool = True, dropout: float = 0.0, name: Optional[str] = None):
    """A U-Net for ``size`` x ``size`` single-channel slices.

    Each level is two 3x3 convolutions (+ BatchNormalization) and ReLU; ``depth`` 2x poolings, filters
    doubling from ``base_filters``; the decoder upsamples with 2x2 transposed convolutions and
    concatenates the skip connections. ``n_classes == 1`` gives a sigmoid "lung" map (binary model),
    otherwise a softmax over background / right lung / left lung.
    """
    import keras
    from keras import layers

    if size % (2 ** depth):
        raise ValueError(f"size {size} must be divisible by 2**depth = {2 ** depth}")

    def block(x, filters):
        for _ in range(2):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=not batch_norm,
                              kernel_initializer="he_normal")(x)
            if batch_norm:
                x = layers.BatchNormalization()(x)
            x = layers.Activation("relu")(x)
        return x

    inputs = keras.Input((size, size, 1), name="ct")
    x = inputs
    skips = []
    for level in range(depth):
        x = block(x, base_filters * 2 ** level)
        skips.append(x)
        x = layers.MaxPooling2D(2)(x)
    x = block(x, base_filters * 2 ** depth)
    if dropout:
        x = layers.Dropout(dropout)(x)
    for level in reversed(range(depth)):
        x = layers.Conv2DTranspose(base_filters * 2 ** level, 2, strides=2, padding="same")(x)
        x = layers.Concatenate()([x, skips[level]])
        x = block(x, base_filters * 2 ** level)
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
