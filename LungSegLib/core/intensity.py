"""Hounsfield-unit checks and the intensity window the model sees."""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from ..defaults import HU_WINDOW
from ..errors import InputError


def window_offset_scale(hu_window: Tuple[float, float] = HU_WINDOW) -> Tuple[float, float]:
    """``(offset, scale)`` of the one HU-to-model-input mapping: ``(clip(hu, window) - offset) * scale``.

    The offset is the window's bottom, so air becomes 0 (pixels outside the scan need no extra term
    when slices are resampled), and the window's top becomes 1.
    """
    lo, hi = hu_window
    return lo, 1.0 / (hi - lo)


def hu_to_unit(hu, hu_window: Tuple[float, float] = HU_WINDOW):
    """An HU value (or array) on the model input's scale, 0 at the window's bottom and 1 at its top
    (not clipped: thresholds and augmentation levels)."""
    offset, scale = window_offset_scale(hu_window)
    return (hu - offset) * scale


def window(hu: np.ndarray, hu_window: Tuple[float, float] = HU_WINDOW) -> np.ndarray:
    """Clip HU to ``hu_window`` and scale to [0, 1] (float32)."""
    offset, scale = window_offset_scale(hu_window)
    out = np.clip(np.asarray(hu, dtype=np.float32), *hu_window)
    out -= offset
    out *= scale
    return out


def _sample(volume: np.ndarray, max_samples: int = 2_000_000) -> np.ndarray:
    step = max(1, int(np.ceil((volume.size / max_samples) ** (1 / 3))))
    return np.asarray(volume[::step, ::step, ::step]).ravel()


#: Below anything a scanner measures in a body or in air (air is about -1000 HU, its noise rarely goes
#: under -1050): values under this are padding outside the field of view (-2000, -3024...).
PADDING_BELOW_HU = -1100.0
#: The image minimum is a padding (or clamping) plateau when at least this share of voxels holds
#: exactly that value; measured tissue and air vary from voxel to voxel.
PLATEAU_SHARE = 0.001
#: A plateau between these values (HU) is air clamped by the scanner, not a foreign padding value.
CLAMPED_AIR_HU = (-1100.0, -900.0)


def _field_of_view(sample: np.ndarray) -> Tuple[np.ndarray, Optional[float], float]:
    """The finite values of ``sample`` that lie inside the field of view: values under
    :data:`PADDING_BELOW_HU` and a plateau at the image minimum (padding) are left out.
    Returns (values, the plateau value or None, the share of the sample left out)."""
    if sample.size == 0:
        return sample, None, 0.0
    lo = float(sample.min())
    keep = sample >= PADDING_BELOW_HU
    plateau: Optional[float] = None
    if np.count_nonzero(sample == lo) >= PLATEAU_SHARE * sample.size:
        plateau = lo
        keep &= sample != lo
    kept = sample[keep]
    if plateau is not None and CLAMPED_AIR_HU[0] <= plateau <= CLAMPED_AIR_HU[1] and kept.size and \
            not (kept.min() >= 0 and kept.max() >= 1500):
        # air clamped by the scanner (-1024), unless the rest is raw stored values (0..4095), whose
        # padding this is
        plateau = None
        kept = sample[sample >= PADDING_BELOW_HU]
    return kept, plateau, 1.0 - kept.size / sample.size


def hounsfield_problem(volume: np.ndarray) -> Optional[str]:
    """Why ``volume`` is not a CT in Hounsfield units (a sentence naming the likely cause), or None.

    Intensities are judged inside the field of view: NaN/infinite voxels, values under
    :data:`PADDING_BELOW_HU` and a plateau at the minimum (the padding value of the scanner or the
    converter) are left out, so padding cannot pass off raw stored values as air.
    """
    sample = _sample(volume)
    if sample.size == 0:
        return "The image is empty (no voxels)."
    sample = sample.astype(np.float32)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return "Every voxel of the image is NaN or infinite: there is no image to segment."
    if float(sample.max()) - float(sample.min()) < 1e-6:
        return f"The image is constant ({float(sample.min()):g}): there is nothing to segment."
    fov, plateau, left_out = _field_of_view(sample)
    if fov.size == 0:
        return (f"The image holds only padding values ({float(sample.min()):g}..{float(sample.max()):g}, "
                "nothing between -1100 HU and the maximum): there is nothing to segment.")
    lo, p1, hi = (float(v) for v in np.percentile(fov, [0, 1, 100]))
    padding = (f", ignoring {100 * left_out:.0f}% padding"
               + (f" at {plateau:g}" if plateau is not None else "")) if left_out >= 0.0005 else ""
    if hi - lo < 1e-6:
        return f"Inside the field of view the image is constant ({lo:g}{padding}): there is nothing to segment."
    if hi <= 50 and lo >= -50:
        return (f"Intensities span only {lo:g}..{hi:g}{padding}, which is not Hounsfield units "
                "(a normalised image or a probability map?). Give the original CT.")
    if p1 > -500:
        if lo >= 0 and hi >= 1500:
            cause = ("it looks like raw stored values without the rescale intercept: "
                     "subtract 1024 (RescaleIntercept) to get HU")
        elif lo >= 0:
            cause = "it does not look like CT at all (MR, PET or an unsigned export?)"
        else:
            cause = "air (lungs, outside the body) should be near -1000 HU"
        return (f"The image has no air inside its field of view: its 1st percentile is {p1:g} (range "
                f"{lo:g}..{hi:g}{padding}); {cause}.")
    return None


def check_hounsfield(volume: np.ndarray) -> None:
    """Refuse volumes that are clearly not CT in Hounsfield units.

    A chest CT always holds air (lungs, outside the body, about −1000 HU) and soft tissue (about
    0..100 HU) inside its field of view. Raises :class:`InputError` naming the likely cause (raw
    stored values without the −1024 rescale intercept, MR or a normalised image; see
    :func:`hounsfield_problem`); pass ``check_hu=False`` / ``--no-hu-check`` to segment anyway.
    """
    problem = hounsfield_problem(volume)
    if problem is not None:
        hint = " If you are sure it is CT in HU, rerun with --no-hu-check (check_hu=False)."
        raise InputError(problem + hint)


def _chunks(volume: np.ndarray, chunk_voxels: int = 1 << 22):
    """Slices of axis 0 holding about ``chunk_voxels`` voxels each (bounded temporaries)."""
    step = max(1, chunk_voxels // max(1, int(np.prod(volume.shape[1:]))))
    for start in range(0, volume.shape[0], step):
        yield slice(start, min(volume.shape[0], start + step))


def count_non_finite(volume: np.ndarray) -> int:
    """Number of NaN or infinite voxels (0 for integer images), counted in chunks of slices."""
    volume = np.asarray(volume)
    if not np.issubdtype(volume.dtype, np.floating) or volume.ndim == 0:
        return 0
    return int(sum(volume[s].size - np.count_nonzero(np.isfinite(volume[s])) for s in _chunks(volume)))


def clear_non_finite(volume: np.ndarray, labels: np.ndarray) -> None:
    """Set ``labels`` (same shape as ``volume``) to 0 wherever ``volume`` is NaN or infinite, in place:
    such voxels lie outside the field of view and are never lung."""
    volume = np.asarray(volume)
    if not np.issubdtype(volume.dtype, np.floating):
        return
    for s in _chunks(volume):
        labels[s][~np.isfinite(volume[s])] = 0
