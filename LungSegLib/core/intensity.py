"""Hounsfield-unit checks and the intensity window the model sees."""
from __future__ import annotations

from typing import Tuple

import numpy as np

from ..errors import InputError

#: Model input window in HU: air (−1024) to soft-tissue/contrast (600). Values outside are clipped,
#: so −3024 padding outside the scan circle looks like air and bone/metal like dense tissue.
HU_WINDOW: Tuple[float, float] = (-1024.0, 600.0)


def window(hu: np.ndarray, hu_window: Tuple[float, float] = HU_WINDOW) -> np.ndarray:
    """Clip HU to ``hu_window`` and scale to [0, 1] (float32)."""
    lo, hi = hu_window
    out = np.clip(np.asarray(hu, dtype=np.float32), lo, hi)
    out -= lo
    out *= 1.0 / (hi - lo)
    return out


def _sample(volume: np.ndarray, max_samples: int = 2_000_000) -> np.ndarray:
    step = max(1, int(np.ceil((volume.size / max_samples) ** (1 / 3))))
    return np.asarray(volume[::step, ::step, ::step]).ravel()


def check_hounsfield(volume: np.ndarray) -> None:
    """Refuse volumes that are clearly not CT in Hounsfield units.

    A chest CT always holds air (lungs, outside the body, about −1000 HU) and soft tissue (about
    0..100 HU). Raises :class:`InputError` naming the likely cause (raw stored values without the
    −1024 rescale intercept, MR or a normalised image); pass ``check_hu=False`` /
    ``--no-hu-check`` to segment anyway.
    """
    sample = _sample(volume).astype(np.float32)
    if sample.size == 0:
        raise InputError("The image is empty (no voxels).")
    lo, p1, hi = np.percentile(sample, [0, 1, 100])
    hint = "If you are sure it is CT in HU, rerun with --no-hu-check (check_hu=False)."
    if hi - lo < 1e-6:
        raise InputError(f"The image is constant ({lo:g}): there is nothing to segment.")
    if hi <= 50 and lo >= -50:
        raise InputError(
            f"Intensities span only {lo:g}..{hi:g}, which is not Hounsfield units "
            "(a normalised image or a probability map?). Give the original CT. " + hint)
    if p1 > -500:
        if lo >= 0 and hi >= 1500:
            cause = ("it looks like raw stored values without the rescale intercept: "
                     "subtract 1024 (RescaleIntercept) to get HU")
        elif lo >= 0:
            cause = "it does not look like CT at all (MR, PET or an unsigned export?)"
        else:
            cause = "air (lungs, outside the body) should be near -1000 HU"
        raise InputError(
            f"The image has no air: its 1st percentile is {p1:g} (range {lo:g}..{hi:g}); {cause}. "
            + hint)
