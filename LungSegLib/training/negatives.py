"""Negative examples painted into training slices: lookalikes next to the lung that are NOT lung.

The label convention (``Resources/Models/MODEL_CARD.md``) keeps fat, pleural effusion and abdominal
gas out of the lung. Three clinical CTs hold few examples of them, and the disease painted *inside*
the lung (:func:`LungSegLib.training.augment.pathology`) would otherwise teach only "dense at the
border = lung". Each function paints one lookalike on a model-grid slice (image in [0, 1] over the HU
window, ``size x size`` or ``size x size x channels`` with context channels, labels 0/1/2, canonical:
rows grow towards posterior) and returns new arrays with the lookalike labelled **background**:

* :func:`fat_at_border` — a fat pad (−120..−60 HU) at the lung's outer boundary (the diaphragm dome,
  the cardiophrenic angle, the anterior chest wall, pericardial fat): the lung gives way to it;
* :func:`gas_beside_lung` — a gas pocket (−1000..−900 HU) in the soft tissue next to the lung,
  behind a 3–6 mm wall (stomach or colon gas under the diaphragm, oesophageal air), or anywhere in
  the abdomen on a slice below the lung bases;
* :func:`effusion_outside` — pleural fluid (0..+25 HU) in the dependent (posterior) part of one lung's
  space, with a curved upper border: the lung ends where the fluid begins.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
from scipy import ndimage

from ..labels import LEFT, RIGHT

KINDS = ("fat", "gas", "effusion")


def _unit(hu: float, window: Tuple[float, float]) -> float:
    return (hu - window[0]) / (window[1] - window[0])


def _blob(shape: Tuple[int, int], centre: Tuple[float, float], radius: float, rng: np.random.Generator) -> np.ndarray:
    rows, cols = np.ogrid[:shape[0], :shape[1]]
    aspect = rng.uniform(0.6, 1.5)
    dist = np.hypot((rows - centre[0]) * aspect, (cols - centre[1]) / aspect) / radius
    noise = ndimage.gaussian_filter(rng.normal(0, 1, shape).astype(np.float32), max(2.0, radius / 3))
    noise /= noise.std() + 1e-6
    return dist + 0.25 * noise < 1.0


def _slice(image: np.ndarray) -> np.ndarray:
    """The slice itself: the middle channel of an image with through-plane context channels."""
    return image[..., image.shape[2] // 2] if image.ndim == 3 else image


def _fill(image: np.ndarray, region: np.ndarray, hu: Tuple[float, float], rng: np.random.Generator,
          window: Tuple[float, float], texture_hu: float = 12.0) -> None:
    """``region`` gets a uniform density in ``hu`` plus a little texture (hard edge: tissue next to tissue),
    in every channel (a lookalike spans the few mm of the context channels)."""
    width = window[1] - window[0]
    value = _unit(rng.uniform(*hu), window)
    shape = (int(region.sum()),) + image.shape[2:]
    image[region] = value + rng.normal(0.0, texture_hu / width, shape).astype(np.float32)


def outer_boundary(labels: np.ndarray, width_px: int = 1) -> np.ndarray:
    """Lung pixels within ``width_px`` of non-lung pixels (the lung's outer boundary, not the
    junction between the two lungs)."""
    lung = labels > 0
    return lung & ndimage.binary_dilation(~lung, iterations=width_px)


def fat_at_border(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                  window: Tuple[float, float]) -> Tuple[np.ndarray, np.ndarray]:
    """A fat pad centred on the lung's outer boundary; the lung pixels it covers become background."""
    edge = np.argwhere(outer_boundary(labels))
    if edge.size == 0:
        return image, labels
    image, labels = image.copy(), labels.copy()
    r, c = edge[rng.integers(len(edge))]
    body = _slice(image) > _unit(-500.0, window)  # fat goes into lung or soft tissue, never outside the patient
    region = _blob(labels.shape, (r, c), rng.uniform(4.0, 14.0), rng) & (body | (labels > 0))
    _fill(image, region, (-120.0, -60.0), rng, window)
    labels[region] = 0
    return image, labels


def gas_beside_lung(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                    window: Tuple[float, float], below_bases: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """A gas pocket in soft tissue 2–20 pixels from the lung, behind a wall (labels unchanged: background).

    On a slice without lung (below the bases: stomach, colon) the pocket lies anywhere in the body's
    soft tissue at least 8 pixels inside the skin, or, with ``below_bases`` False, the slice is left
    as it is.
    """
    lung = labels > 0
    if not below_bases and not lung.any():
        return image, labels
    tissue = (labels == 0) & (_slice(image) > _unit(-300.0, window))
    wall = rng.uniform(2.0, 4.0)  # pixels of 1.5 mm: a 3–6 mm diaphragm / bowel wall
    if lung.any():
        dist = ndimage.distance_transform_edt(~lung)
        allowed = dist > wall
        candidates = np.argwhere(tissue & (dist > wall + 1) & (dist < 20))
    else:
        body = ndimage.binary_fill_holes(_slice(image) > _unit(-500.0, window))
        allowed = ndimage.distance_transform_edt(body) > 8
        candidates = np.argwhere(tissue & allowed)
    if candidates.size == 0:
        return image, labels
    image = image.copy()
    r, c = candidates[rng.integers(len(candidates))]
    region = _blob(labels.shape, (r, c), rng.uniform(3.0, 12.0), rng) & tissue & allowed
    _fill(image, region, (-1000.0, -900.0), rng, window, texture_hu=20.0)
    return image, labels


def effusion_outside(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                     window: Tuple[float, float]) -> Tuple[np.ndarray, np.ndarray]:
    """Fluid in the posterior part of one lung's space (curved meniscus); it is labelled background."""
    side = labels == (RIGHT if rng.random() < 0.5 else LEFT)
    if side.sum() < 200:
        side = labels > 0
        if side.sum() < 200:
            return image, labels
    image, labels = image.copy(), labels.copy()
    r, _c = np.nonzero(side)
    depth = rng.uniform(0.1, 0.4) * (r.max() - r.min())
    col_pos = np.linspace(-1, 1, labels.shape[1])
    level = r.max() - depth + rng.uniform(0.0, 0.4) * depth * col_pos[None, :] ** 2 * rng.choice((-1, 1))
    region = side & (np.arange(labels.shape[0])[:, None] > level)
    _fill(image, region, (0.0, 25.0), rng, window)
    labels[region] = 0
    return image, labels


def negative_example(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                     window: Tuple[float, float], kinds: Tuple[str, ...] = KINDS,
                     gas_below_bases: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """One lookalike of a random kind (see the module docstring); image clipped to [0, 1]. With
    ``gas_below_bases`` a slice without lung can only get gas (fat and effusion take the place of lung);
    without it such a slice is left as it is (the bundled model's recipe)."""
    if gas_below_bases and "gas" in kinds and not (labels > 0).any():
        kinds = ("gas",)
    kind = kinds[int(rng.integers(len(kinds)))]
    if kind == "gas":
        image, labels = gas_beside_lung(image, labels, rng, window, below_bases=gas_below_bases)
    else:
        image, labels = {"fat": fat_at_border, "effusion": effusion_outside}[kind](image, labels, rng, window)
    return np.clip(image, 0.0, 1.0).astype(np.float32), labels
