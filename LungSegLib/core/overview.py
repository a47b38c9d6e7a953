"""A PNG overview a person can open: axial and coronal slices with the two lungs overlaid."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..labels import LUNG_LABELS, legend
from .atomic import atomic_path
from .geometry import Geometry, canonical_orientation

_COLOURS = {label.value: label.color_255 for label in LUNG_LABELS}


def _to_rgb(ct: np.ndarray, labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    grey = np.clip((ct.astype(np.float32) + 1000.0) / 1400.0, 0, 1) * 255  # lung window −1000..400 HU
    grey[~np.isfinite(ct)] = 0  # NaN/Inf voxels: outside the field of view, shown black like air
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    for label, colour in _COLOURS.items():
        m = labels == label
        rgb[m] = (1 - alpha) * rgb[m] + alpha * np.asarray(colour, np.float32)
        edge = m & ~_erode(m)
        rgb[edge] = colour
    return rgb.astype(np.uint8)


def _erode(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_erosion(mask)


def _resize(img: np.ndarray, height_mm: float, width_mm: float, px_per_mm: float) -> np.ndarray:
    from PIL import Image

    h = max(1, int(round(height_mm * px_per_mm)))
    w = max(1, int(round(width_mm * px_per_mm)))
    return np.asarray(Image.fromarray(img).resize((w, h), Image.NEAREST))


def write_overview(ct: np.ndarray, labels: np.ndarray, geometry: Geometry, path: os.PathLike,
                   px_per_mm: float = 1.0) -> Path:
    """Save a PNG with the axial slice of largest lung area and the coronal slice through the lungs.

    Shown in radiological convention: patient right on the viewer's left, anterior up, superior up.
    """
    from PIL import Image, ImageDraw

    o = canonical_orientation(geometry)
    ct_c, lab_c = o.to_canonical(ct), o.to_canonical(labels)
    sz, sy, sx = o.spacing_zyx
    lung = lab_c > 0
    z = int(np.argmax(lung.sum(axis=(1, 2)))) if lung.any() else ct_c.shape[0] // 2
    y = int(np.argmax(lung.sum(axis=(0, 2)))) if lung.any() else ct_c.shape[1] // 2
    axial = _resize(_to_rgb(ct_c[z], lab_c[z]), ct_c.shape[1] * sy, ct_c.shape[2] * sx, px_per_mm)
    coronal = _to_rgb(ct_c[::-1, y, :], lab_c[::-1, y, :])  # superior at the top
    coronal = _resize(coronal, ct_c.shape[0] * sz, ct_c.shape[2] * sx, px_per_mm)
    h = max(axial.shape[0], coronal.shape[0])
    canvas = np.zeros((h + 24, axial.shape[1] + coronal.shape[1] + 8, 3), np.uint8)
    canvas[24:24 + axial.shape[0], :axial.shape[1]] = axial
    canvas[24:24 + coronal.shape[0], axial.shape[1] + 8:] = coronal
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    draw.text((4, 4), f"axial slice {z}   R | L   {legend()}", fill=(255, 255, 255))
    draw.text((axial.shape[1] + 12, 4), "coronal", fill=(255, 255, 255))
    path = Path(path)
    with atomic_path(path, ".png") as tmp:
        image.save(tmp)
    return path
