"""Image noise on the model grid: a robust per-slice estimate, and smoothing of slices noisier than the
network was trained on.

Low-dose and thin-slice scans, sharp (lung) reconstruction kernels and single corrupted slices can carry
100–600 HU of noise. A network trained on standard-dose CT then sees lung (−850 HU) speckled with
tissue-dense pixels and cuts it out confidently. Rather than teach every model every noise level, the
input preparation measures each slice's noise where it is cheap and unambiguous — in soft tissue, from a
second-difference (Laplacian) residual — and smooths only the slices above a trigger level down to a
target level the network knows. Slices at ordinary noise pass through untouched (bit for bit), so results
on ordinary CT do not change.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
from scipy import ndimage

#: Soft tissue on the model grid (HU): wide enough to hold tissue under heavy noise, away from the
#: window's clipping ends and from lung, so the residual there is noise, not anatomy.
TISSUE_HU = (-250.0, 250.0)
#: The residual of the 3 x 3 kernel [[1,-2,1],[-2,4,-2],[1,-2,1]] on white noise of SD s has SD 6 s;
#: for a Gaussian the median absolute value is 0.6745 SD.
_MAD_SCALE = 6.0 * 0.6745
#: Fewest tissue pixels a slice needs for an estimate (sampled every ``stride`` pixels).
MIN_PIXELS = 200


def noise_sd_hu(slices: np.ndarray, hu_window: Tuple[float, float], stride: int = 3) -> np.ndarray:
    """Robust noise SD (HU) of each model-grid slice.

    ``slices`` is ``(B, size, size)`` network input in [0, 1] over ``hu_window`` (HU). The estimate is the
    median absolute Laplacian residual over soft-tissue pixels (:data:`TISSUE_HU`), sampled every
    ``stride`` pixels in each direction; anatomy edges are a minority of those pixels, so the median
    ignores them. Slices with fewer than :data:`MIN_PIXELS` tissue samples (air, outside the body) get 0.
    White noise of SD s gives about s; noise correlated by the resampling reads lower, which the trigger
    level takes into account (it was set on resampled CT).
    """
    x = np.asarray(slices, dtype=np.float32)
    if x.ndim != 3:
        raise ValueError(f"slices must be (B, size, size), got shape {x.shape}")
    lo, hi = float(hu_window[0]), float(hu_window[1])
    width = hi - lo
    n_rows, n_cols = x.shape[1], x.shape[2]

    def shifted(dr: int, dc: int) -> np.ndarray:
        return x[:, 1 + dr:n_rows - 1 + dr:stride, 1 + dc:n_cols - 1 + dc:stride]

    centre = shifted(0, 0)
    residual = (4.0 * centre - 2.0 * (shifted(-1, 0) + shifted(1, 0) + shifted(0, -1) + shifted(0, 1))
                + shifted(-1, -1) + shifted(-1, 1) + shifted(1, -1) + shifted(1, 1))
    tissue = (centre > (TISSUE_HU[0] - lo) / width) & (centre < (TISSUE_HU[1] - lo) / width)
    magnitude = np.abs(residual)
    out = np.zeros(x.shape[0], dtype=np.float64)
    for i in range(x.shape[0]):
        values = magnitude[i][tissue[i]]
        if values.size >= MIN_PIXELS:
            out[i] = float(np.median(values)) * width / _MAD_SCALE
    return out


def smoothing_sigma_px(noise_hu: float, target_hu: float) -> float:
    """Gaussian SD (model-grid pixels) that brings white noise of ``noise_hu`` down to about ``target_hu``
    (a 2D Gaussian of SD s averages white noise down by 1 / (2 s sqrt(pi)))."""
    return float(noise_hu) / (2.0 * np.sqrt(np.pi) * float(target_hu))


def suppress_noise(slices: np.ndarray, hu_window: Tuple[float, float], trigger_hu: float,
                   target_hu: float) -> np.ndarray:
    """Smooth, in place, every slice of ``slices`` (``(B, size, size)`` in [0, 1]) whose noise is above
    ``trigger_hu`` (HU) down to about ``target_hu``; returns each slice's noise estimate before (HU).

    ``trigger_hu`` <= 0 turns it off (estimates are still returned). Smoothing is in-plane only: a
    corrupted slice never borrows from its neighbours, and a slice below the trigger is not touched.
    """
    noise = noise_sd_hu(slices, hu_window)
    if trigger_hu > 0:
        for i in np.flatnonzero(noise > trigger_hu):
            slices[i] = ndimage.gaussian_filter(slices[i], smoothing_sigma_px(noise[i], target_hu), mode="nearest")
    return noise


__all__ = ["MIN_PIXELS", "TISSUE_HU", "noise_sd_hu", "smoothing_sigma_px", "suppress_noise"]
