"""Image noise on the model grid: a robust per-slice estimate, and smoothing of slices noisier than the
network was trained on.

Low-dose and thin-slice scans, sharp (lung) reconstruction kernels and single corrupted slices can carry
100–600 HU of noise. A network trained on standard-dose CT then sees lung (−850 HU) speckled with
tissue-dense pixels and cuts it out confidently. Rather than teach every model every noise level, the
input preparation measures each slice's noise where it is unambiguous — the spread of soft tissue within
small windows — and smooths only the slices above a trigger level until they are back at a level the
network knows. Slices at ordinary noise pass through untouched (bit for bit), so results on ordinary CT
do not change.

The estimate is the 10th percentile, over soft-tissue windows of 5 x 5 model-grid pixels (7.5 mm), of
each window's standard deviation. Flat tissue (muscle, liver, heart) fills many windows, so a low
percentile reads the noise and not the anatomy's edges; windows see noise of every grain, so it reads
the fine noise of a sharp kernel and the coarse noise of a low-dose soft-kernel scan alike (a
second-difference residual, the usual estimator, misses the latter: such a scan then went unsmoothed and
unflagged with Dice 0.69).
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
from scipy import ndimage

#: Soft tissue on the model grid (HU): a window whose mean lies here is counted (away from the window's
#: clipping ends and from lung, so its spread is noise or tissue texture, not a lung edge).
TISSUE_HU = (-250.0, 250.0)
#: Window size (model-grid pixels), the percentile of the windows' SDs read, and the sampling step.
WINDOW_PX = 5
PERCENTILE = 10.0
STRIDE_PX = 3
#: Fewest tissue windows a slice needs for an estimate.
MIN_WINDOWS = 200
#: The sample SD of n = 25 Gaussian values has its 10th percentile at 0.8077 of the true SD
#: (chi distribution, 24 degrees of freedom): dividing by it reads white noise in HU.
_PERCENTILE_SCALE = 1.0 / 0.8077
#: At most this many smoothing passes per slice (each widens the Gaussian by the remaining excess).
MAX_PASSES = 3


def _window_sums(x: np.ndarray, axis: int, count: int) -> np.ndarray:
    """Sums of ``WINDOW_PX`` consecutive values along ``axis`` at every ``STRIDE_PX``-th start."""
    out = None
    for k in range(WINDOW_PX):
        index = [slice(None)] * x.ndim
        index[axis] = slice(k, k + STRIDE_PX * (count - 1) + 1, STRIDE_PX)
        part = x[tuple(index)]
        out = part.copy() if out is None else out + part
    return out


def noise_sd_hu(slices: np.ndarray, hu_window: Tuple[float, float]) -> np.ndarray:
    """Robust noise SD (HU) of each model-grid slice (see the module docstring).

    ``slices`` is ``(B, size, size)`` network input in [0, 1] over ``hu_window`` (HU). White noise of SD s
    reads about s; slices with fewer than :data:`MIN_WINDOWS` soft-tissue windows (air, outside the body)
    read 0.
    """
    x = np.asarray(slices, dtype=np.float32)
    if x.ndim != 3:
        raise ValueError(f"slices must be (B, size, size), got shape {x.shape}")
    lo, hi = float(hu_window[0]), float(hu_window[1])
    width = hi - lo
    n = WINDOW_PX * WINDOW_PX
    rows = (x.shape[1] - WINDOW_PX) // STRIDE_PX + 1
    cols = (x.shape[2] - WINDOW_PX) // STRIDE_PX + 1
    mean = _window_sums(_window_sums(x, 1, rows), 2, cols) / n
    square = _window_sums(_window_sums(x * x, 1, rows), 2, cols) / n
    sd = np.sqrt(np.maximum(square - mean * mean, 0.0) * (n / (n - 1.0))) * width
    tissue = (mean > (TISSUE_HU[0] - lo) / width) & (mean < (TISSUE_HU[1] - lo) / width)
    out = np.zeros(x.shape[0], dtype=np.float64)
    for i in range(x.shape[0]):
        values = sd[i][tissue[i]]
        if values.size >= MIN_WINDOWS:
            out[i] = float(np.percentile(values, PERCENTILE)) * _PERCENTILE_SCALE
    return out


def smoothing_sigma_px(noise_hu: float, target_hu: float) -> float:
    """Gaussian SD (model-grid pixels) that brings white noise of ``noise_hu`` down to about ``target_hu``
    (a 2D Gaussian of SD s averages white noise down by 1 / (2 s sqrt(pi))); coarser noise needs more,
    which :func:`suppress_noise` measures."""
    return float(noise_hu) / (2.0 * np.sqrt(np.pi) * float(target_hu))


def suppress_noise(slices: np.ndarray, hu_window: Tuple[float, float], trigger_hu: float,
                   target_hu: float) -> np.ndarray:
    """Smooth, in place, every slice of ``slices`` (``(B, size, size)`` in [0, 1]) whose noise is above
    ``trigger_hu`` (HU) until it reads about ``target_hu``; returns each slice's noise estimate before (HU).

    The Gaussian starts at the width that would do it for white noise and is widened, at most
    :data:`MAX_PASSES` times in all, while the smoothed slice still reads above ``target_hu`` (coarse
    noise). ``trigger_hu`` <= 0 turns it off (estimates are still returned). Smoothing is in-plane only: a
    corrupted slice never borrows from its neighbours, and a slice below the trigger is not touched.
    """
    noise = noise_sd_hu(slices, hu_window)
    if trigger_hu > 0:
        for i in np.flatnonzero(noise > trigger_hu):
            original = slices[i].copy()
            sigma = smoothing_sigma_px(noise[i], target_hu)
            for _ in range(MAX_PASSES):
                slices[i] = ndimage.gaussian_filter(original, sigma, mode="nearest")
                left = noise_sd_hu(slices[i][None], hu_window)[0]
                if left <= target_hu:
                    break
                sigma *= left / target_hu
    return noise


__all__ = ["MAX_PASSES", "MIN_WINDOWS", "PERCENTILE", "TISSUE_HU", "WINDOW_PX", "noise_sd_hu", "smoothing_sigma_px",
           "suppress_noise"]
