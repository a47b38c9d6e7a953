"""A Keras model rebuilt as a lean TensorFlow function for inference.

Keras runs BatchNormalization as a multiply and an add over the whole activation map, and adds a
convolution's bias as a separate broadcast op; on a CPU those passes over memory cost as much as the
small convolutions of a slim U-Net. Here every BatchNormalization that follows a convolution is folded
into that convolution's kernel and bias (``w' = w * s``, ``b' = (b - mean) * s + beta``,
``s = gamma / sqrt(var + eps)``), and convolution + bias + ReLU are written as the
``conv2d -> bias_add -> relu`` chain that TensorFlow's graph optimiser fuses into one oneDNN kernel.
The result is the same function up to float rounding.

``compute_dtype="bfloat16"`` runs the hidden layers in bfloat16 (twice the multiply rate on CPUs with
AVX512_BF16 / AMX); the input, the last layer and the probabilities stay float32.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

#: Layer classes computed here directly; any other layer is called as Keras would (in float32).
_IDENTITY_LAYERS = ("Dropout", "SpatialDropout2D", "Identity", "GaussianNoise", "GaussianDropout")


def _array(variable) -> np.ndarray:
    return np.asarray(variable.numpy(), dtype=np.float64)


def _producer(tensor) -> Any:
    return tensor._keras_history.operation


def _fold_batch_norms(model) -> Tuple[Dict[int, Tuple[np.ndarray, np.ndarray]], set]:
    """Kernels and biases of convolutions with their following BatchNormalization folded in.

    Returns ({id(conv): (kernel, bias)}, {id(batchnorm) that became a no-op}).
    """
    from keras import layers

    folded: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}
    absorbed = set()
    for bn in model.layers:
        if not isinstance(bn, layers.BatchNormalization) or len(bn._inbound_nodes) != 1:
            continue
        if bn.axis not in (-1, 3) or not (bn.center or bn.scale):
            continue
        conv = _producer(bn._inbound_nodes[0].input_tensors[0])
        if (type(conv) is not layers.Conv2D or len(conv._outbound_nodes) != 1
                or conv.get_config()["activation"] != "linear"):
            continue
        kernel = _array(conv.kernel)
        bias = _array(conv.bias) if conv.use_bias else np.zeros(kernel.shape[-1])
        gamma = _array(bn.gamma) if bn.scale else 1.0
        beta = _array(bn.beta) if bn.center else 0.0
        mean = _array(bn.moving_mean)
        scale = gamma / np.sqrt(_array(bn.moving_variance) + bn.epsilon)
        folded[id(conv)] = ((kernel * scale).astype(np.float32), ((bias - mean) * scale + beta).astype(np.float32))
        absorbed.add(id(bn))
    return folded, absorbed


def _activation(name: str) -> Optional[Callable]:
    import tensorflow as tf

    return {"linear": lambda x: x, "relu": tf.nn.relu, "sigmoid": tf.math.sigmoid,
            "softmax": tf.nn.softmax}.get(name)


def lean_function(model, compute_dtype: str = "float32") -> Callable:
    """``f(x) -> y``: ``model``'s forward pass (inference mode) as plain TensorFlow ops.

    ``x`` and ``y`` are float32 tensors; call it inside a ``tf.function``. Layers of other types than
    the usual image-model layers are run by Keras itself, so any functional or sequential model is
    supported (a subclassed model runs unchanged).
    """
    import tensorflow as tf

    graph = model if hasattr(model, "_run_through_graph") else getattr(model, "_functional", None)
    if graph is None or not hasattr(graph, "_run_through_graph"):
        # a subclassed model has no layer graph to rewrite: run it as it is, in float32
        return lambda x: tf.cast(model(x, training=False), tf.float32)
    operation_fn = _LayerConverter(model, tf.as_dtype(compute_dtype))
    for layer in model.layers:
        operation_fn(layer)

    def forward(x):
        out = graph._run_through_graph(x, operation_fn=operation_fn)
        return tf.cast(out, tf.float32)

    return forward


class _LayerConverter:
    """Each Keras layer of a model as a plain TensorFlow function (``operation_fn`` of Keras' graph runner).

    Hidden layers compute in ``dtype``; the model's output layers in float32. BatchNorm layers folded
    into their convolution become identities.
    """

    def __init__(self, model, dtype):
        self.dtype = dtype
        self.folded, self.absorbed = _fold_batch_norms(model)
        self.output_layers = {id(_producer(t)) for t in model.outputs}
        self.converted: Dict[int, Callable] = {}

    def __call__(self, layer) -> Callable:
        if id(layer) not in self.converted:
            self.converted[id(layer)] = self.convert(layer)
        return self.converted[id(layer)]

    def const(self, value, final: bool):
        import tensorflow as tf

        return tf.constant(np.asarray(value, dtype=np.float32), dtype=tf.float32 if final else self.dtype)

    def convert(self, layer) -> Callable:
        import tensorflow as tf
        from keras import layers

        final = id(layer) in self.output_layers
        cfg = layer.get_config()
        if id(layer) in self.absorbed or type(layer).__name__ in _IDENTITY_LAYERS:
            return lambda x, **_: x
        if type(layer) is layers.Conv2D and cfg["data_format"] == "channels_last" and cfg["groups"] == 1:
            if _activation(cfg["activation"]) is not None:
                return self.conv2d(layer, cfg, final)
        if (type(layer) is layers.Conv2DTranspose and cfg["data_format"] == "channels_last"
                and cfg.get("output_padding") is None  # Keras < 3.11 has no output_padding option
                and tuple(cfg["dilation_rate"]) == (1, 1)
                and _activation(cfg["activation"]) is not None):
            return self.conv2d_transpose(layer, cfg, final)
        if type(layer) is layers.Activation and _activation(cfg["activation"]) is not None:
            act = _activation(cfg["activation"])
            return lambda x, **_: act(tf.cast(x, tf.float32) if final else x)
        if type(layer) is layers.MaxPooling2D and cfg["data_format"] == "channels_last":
            pool, strides, pad = cfg["pool_size"], cfg["strides"], cfg["padding"].upper()
            return lambda x, **_: tf.nn.max_pool2d(x, pool, strides, pad)
        if type(layer).__name__ == "PositionChannel" and type(layer).__module__ == __package__ + ".unet":
            from .unet import position_ramp

            width, dtype = layer.input.shape[2], self.dtype
            ramp = tf.reshape(tf.constant(position_ramp(width)), (1, 1, width, 1))

            def with_position(x, **_):
                x = tf.cast(x, dtype)
                shape = tf.shape(x)
                return tf.concat([x, tf.cast(tf.broadcast_to(ramp, (shape[0], shape[1], width, 1)), dtype)], -1)
            return with_position
        if type(layer) is layers.Concatenate:
            axis, dtype = cfg["axis"], self.dtype
            return lambda xs, **_: tf.concat([tf.cast(x, dtype) for x in xs], axis)
        return self.keras_layer(layer, final)

    def conv2d(self, layer, cfg, final: bool) -> Callable:
        """Convolution + bias + activation fused (BatchNorm folded in where it followed)."""
        import tensorflow as tf

        act = _activation(cfg["activation"])
        if id(layer) in self.folded:
            kernel, bias = self.folded[id(layer)]
        else:
            kernel = _array(layer.kernel)
            bias = _array(layer.bias) if layer.use_bias else None
        k = self.const(kernel, final)
        b = None if bias is None else self.const(bias, final)
        strides, dil, pad = tuple(cfg["strides"]), tuple(cfg["dilation_rate"]), cfg["padding"].upper()

        def conv(x, **_):
            x = tf.cast(x, k.dtype)
            y = tf.nn.conv2d(x, k, strides, pad, dilations=dil)
            return act(y if b is None else tf.nn.bias_add(y, b))
        return conv

    def conv2d_transpose(self, layer, cfg, final: bool) -> Callable:
        """Transposed convolution; one matrix product and a shuffle when the kernel equals the stride."""
        import tensorflow as tf

        act = _activation(cfg["activation"])
        k = self.const(_array(layer.kernel), final)
        b = self.const(_array(layer.bias), final) if layer.use_bias else None
        (kh, kw), (sh, sw), pad = cfg["kernel_size"], cfg["strides"], cfg["padding"].upper()
        cout, cin = k.shape[2], k.shape[3]
        if (kh, kw) == (sh, sw):
            # no overlap between the kernel's footprints: one matrix product (every input pixel
            # times the kernel gives its kh x kw output block) and a shuffle into place, about
            # twice as fast on CPU as TensorFlow's transposed convolution
            k_mat = tf.reshape(tf.transpose(k, (3, 0, 1, 2)), (cin, kh * kw * cout))
            b_mat = None if b is None else tf.tile(b, [kh * kw])

            def deconv_blocks(x, **_):
                x = tf.cast(x, k_mat.dtype)
                n, h, w = tf.shape(x)[0], x.shape[1], x.shape[2]
                y = tf.matmul(tf.reshape(x, (-1, cin)), k_mat)
                y = y if b_mat is None else tf.nn.bias_add(y, b_mat)
                y = tf.transpose(tf.reshape(y, (n, h, w, kh, kw, cout)), (0, 1, 3, 2, 4, 5))
                return act(tf.reshape(y, (n, h * kh, w * kw, cout)))
            return deconv_blocks

        def deconv(x, **_):
            x = tf.cast(x, k.dtype)
            n, h, w = tf.shape(x)[0], x.shape[1], x.shape[2]
            if pad == "SAME":
                oh, ow = h * sh, w * sw
            else:
                oh, ow = (h - 1) * sh + kh, (w - 1) * sw + kw
            y = tf.nn.conv2d_transpose(x, k, tf.stack([n, oh, ow, cout]), (sh, sw), pad)
            return act(y if b is None else tf.nn.bias_add(y, b))
        return deconv

    def keras_layer(self, layer, final: bool) -> Callable:
        """Any other layer, run by Keras in float32 (inference mode)."""
        import tensorflow as tf

        dtype = self.dtype

        def run(*args, **kwargs):
            args = tf.nest.map_structure(lambda t: tf.cast(t, tf.float32), args)
            kwargs.pop("training", None)
            out = layer(*args, training=False, **kwargs)
            return tf.nest.map_structure(lambda t: tf.cast(t, tf.float32 if final else dtype), out)
        return run
