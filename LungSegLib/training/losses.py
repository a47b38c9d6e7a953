"""Segmentation losses for the binary (sigmoid lung) and 3-class (softmax) U-Net.

Targets are integer label maps ``(B, S, S)`` (0/1/2, or 0/1 for a binary model); predictions the
network's probabilities ``(B, S, S, C)``. Dice is computed over the whole batch per foreground class
(slices without lung then cannot blow it up) and added, the same for every sample, to the per-slice
cross-entropy.
"""
from __future__ import annotations

import keras
from keras import ops

from ..defaults import LOSSES  # noqa: F401  (the names the CLI offers; kept importable here)
from ..labels import BINARY_CLASS_NAMES, CLASS_NAMES

_EPS = 1e-6


def _targets(y_true, y_pred, n_classes: int):
    if n_classes == 1:
        return ops.cast(ops.expand_dims(y_true, -1), y_pred.dtype)
    return ops.one_hot(ops.cast(y_true, "int32"), n_classes, dtype=y_pred.dtype)


def cross_entropy(y_true, y_pred, n_classes: int):
    """Per-slice mean binary (``n_classes == 1``) or categorical cross-entropy, shape (B,)."""
    t = _targets(y_true, y_pred, n_classes)
    p = ops.clip(y_pred, _EPS, 1.0 - _EPS)
    if n_classes == 1:
        pixel = -(t * ops.log(p) + (1.0 - t) * ops.log(1.0 - p))[..., 0]
    else:
        pixel = -ops.sum(t * ops.log(p), axis=-1)
    return ops.mean(pixel, axis=(1, 2))


def dice_loss(y_true, y_pred, n_classes: int, smooth: float = 1.0):
    """1 − mean soft Dice of the foreground classes over the batch (a scalar)."""
    t = _targets(y_true, y_pred, n_classes)
    if n_classes > 1:
        t, y_pred = t[..., 1:], y_pred[..., 1:]
    inter = ops.sum(t * y_pred, axis=(0, 1, 2))
    total = ops.sum(t, axis=(0, 1, 2)) + ops.sum(y_pred, axis=(0, 1, 2))
    return 1.0 - ops.mean((2.0 * inter + smooth) / (total + smooth))


@keras.saving.register_keras_serializable(package="lungseg")
class SegmentationLoss(keras.losses.Loss):
    """``kind`` is one of :data:`LOSSES`: ``ce`` (categorical, or binary for one class), ``bce``
    (binary models only), ``dice`` or ``ce_dice`` (their sum)."""

    def __init__(self, kind: str = "ce_dice", n_classes: int = 3, smooth: float = 1.0, name=None, **kwargs):
        if kind not in LOSSES:
            raise ValueError(f"unknown loss {kind!r}; choose one of {LOSSES}")
        if kind == "bce" and n_classes != 1:
            raise ValueError("the 'bce' loss is for binary (one-class) models; use 'ce' for 3 classes")
        if n_classes not in (1, len(CLASS_NAMES)):
            raise ValueError(f"n_classes must be 1 ({BINARY_CLASS_NAMES[1]}) or {len(CLASS_NAMES)} "
                             f"({'/'.join(CLASS_NAMES)}), got {n_classes}")
        super().__init__(name=name or f"{kind}_loss", **kwargs)
        self.kind, self.n_classes, self.smooth = kind, int(n_classes), float(smooth)

    def call(self, y_true, y_pred):
        batch = ops.shape(y_pred)[0]
        loss = ops.zeros((batch,), dtype=y_pred.dtype)
        if self.kind in ("ce", "bce", "ce_dice"):
            loss = loss + cross_entropy(y_true, y_pred, self.n_classes)
        if self.kind in ("dice", "ce_dice"):
            loss = loss + dice_loss(y_true, y_pred, self.n_classes, self.smooth)
        return loss

    def get_config(self):
        return dict(super().get_config(), kind=self.kind, n_classes=self.n_classes, smooth=self.smooth)
