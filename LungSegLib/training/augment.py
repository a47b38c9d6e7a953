"""Training-time augmentation of model-grid slices (image in [0, 1] over the HU window, ``size x size``
or ``size x size x channels`` with through-plane context; labels 0/1/2).

Everything works on one ``size`` x ``size`` slice with NumPy/SciPy and costs a few milliseconds, since
the CPU that feeds the network is the bottleneck. Geometric changes move image and labels together
(labels with nearest neighbour); a left/right mirror also swaps the right (1) and left (2) labels, so
"right lung" stays the lung on the patient's right. Simulated disease (consolidation, nodules) is
painted *inside* the lung with its label kept as lung: dense lung is still lung (the label convention,
``Resources/Models/MODEL_CARD.md``). Where it touches the lung's outer boundary it is denser than fat
(≥ −30 HU, hard edge), so the network is never taught that fat-density tissue at the border is lung;
lookalikes that are *not* lung (fat pads, gas pockets, pleural effusion) are painted as background by
:mod:`.negatives`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
from scipy import ndimage

from ..core.intensity import hu_to_unit
from ..defaults import HU_WINDOW
from ..labels import LEFT, RIGHT
from .negatives import negative_example, outer_boundary


@dataclass(frozen=True)
class AugmentConfig:
    """How often each augmentation is applied (per slice), then how strong it is (angles in degrees,
    shifts in model-grid pixels, HU in Hounsfield units)."""

    p_flip: float = 0.5
    p_spatial: float = 0.9
    p_elastic: float = 0.3  # within the spatial step
    p_pathology: float = 0.5
    p_negative: float = 0.3
    p_intensity: float = 0.8
    p_blur: float = 0.25  # within the intensity step
    rotate_deg: float = 15.0
    scale: Tuple[float, float] = (0.8, 1.2)
    shift_px: float = 16.0
    elastic_px: float = 6.0
    hu_shift: float = 40.0
    contrast: Tuple[float, float] = (0.85, 1.15)
    noise_hu: float = 30.0
    # The settings below are off in the bundled model's recipe (the defaults) and on in EXTENDED; when
    # off they draw no random numbers, so the defaults reproduce the bundled model's training batches.
    #: Some slices get the noise of a low-dose or thin-slice scan instead (SD in HU), so that noise
    #: alone never makes the lung look like tissue.
    p_heavy_noise: float = 0.0  # within the intensity step
    heavy_noise_hu: Tuple[float, float] = (60.0, 300.0)
    #: Painted consolidation / atelectasis can carry air bronchograms and be patchy (effusion never
    #: is); consolidation blobs can be centred on the pleura.
    p_bronchogram: float = 0.0
    p_patchy: float = 0.0
    p_pleural: float = 0.0
    #: Gas pockets also on slices below the lung bases (stomach, colon).
    gas_below_bases: bool = False


#: The later candidate recipe (air bronchograms, patchy and pleural-based consolidation, low-dose noise,
#: gas below the bases). Leave-one-patient-out it scored below the bundled recipe (model card,
#: ``benchmarks/results/lopo_e16_bronchograms``), so it is not the default; ``lungseg train
#: --augmentation extended`` uses it.
EXTENDED = AugmentConfig(p_heavy_noise=0.1, p_bronchogram=0.6, p_patchy=0.5, p_pleural=0.5, gas_below_bases=True)
#: The named augmentation recipes ``lungseg train --augmentation`` offers.
RECIPES = {"bundled": AugmentConfig(), "extended": EXTENDED}


def _happens(p: float, rng: np.random.Generator) -> bool:
    """True with probability ``p``; draws from ``rng`` only when ``p`` > 0 (see AugmentConfig)."""
    return p > 0 and rng.random() < p


def flip_left_right(image: np.ndarray, labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Mirror a canonical slice across the patient's midline; right and left lung labels swap."""
    flipped = labels[:, ::-1].copy()
    right = flipped == RIGHT
    flipped[flipped == LEFT] = RIGHT
    flipped[right] = LEFT
    return image[:, ::-1].copy(), flipped


def spatial(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
            cfg: AugmentConfig = AugmentConfig()) -> Tuple[np.ndarray, np.ndarray]:
    """Random rotation, isotropic scale, shift and (sometimes) a smooth elastic warp, one resampling.

    Pixels coming from outside the slice are air (0) and background.
    """
    size = image.shape[0]
    angle = np.deg2rad(rng.uniform(-cfg.rotate_deg, cfg.rotate_deg))
    zoom = rng.uniform(*cfg.scale)
    c, s = np.cos(angle) / zoom, np.sin(angle) / zoom
    matrix = np.array([[c, -s], [s, c]])
    centre = (size - 1) / 2
    offset = centre - matrix @ np.full(2, centre) + rng.uniform(-cfg.shift_px, cfg.shift_px, 2)
    grid = np.mgrid[0:size, 0:size].astype(np.float32)
    coords = np.tensordot(matrix.astype(np.float32), grid, axes=1) + offset.astype(np.float32)[:, None, None]
    if rng.random() < cfg.p_elastic:
        coarse = rng.normal(0.0, cfg.elastic_px, (2, 6, 6)).astype(np.float32)
        coords += ndimage.zoom(coarse, (1, size / 6, size / 6), order=3)[:, :size, :size]
    if image.ndim == 3:  # channels (through-plane context) move together
        out_image = np.stack([ndimage.map_coordinates(image[..., c], coords, order=1, mode="constant", cval=0.0)
                              for c in range(image.shape[2])], axis=-1)
    else:
        out_image = ndimage.map_coordinates(image, coords, order=1, mode="constant", cval=0.0)
    out_labels = ndimage.map_coordinates(labels, coords, order=0, mode="constant", cval=0)
    return out_image.astype(np.float32), out_labels.astype(np.uint8)


def intensity(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig = AugmentConfig(),
              hu_window: Tuple[float, float] = HU_WINDOW) -> np.ndarray:
    """HU offset, contrast around −500 HU, Gaussian noise (sometimes low-dose heavy) and sometimes blur
    (scanner/kernel variety);
    ``image`` is network input made with ``hu_window`` (HU)."""
    width = hu_window[1] - hu_window[0]
    pivot = hu_to_unit(-500.0, hu_window)
    out = (image - pivot) * rng.uniform(*cfg.contrast) + pivot + rng.uniform(-cfg.hu_shift, cfg.hu_shift) / width
    if rng.random() < cfg.p_blur:
        sigma = rng.uniform(0.5, 1.2)
        out = ndimage.gaussian_filter(out, (sigma, sigma, 0.0) if out.ndim == 3 else sigma)  # in-plane only
    sd = rng.uniform(*cfg.heavy_noise_hu) if _happens(cfg.p_heavy_noise, rng) else rng.uniform(0.0, cfg.noise_hu)
    out = out + rng.normal(0.0, sd / width, out.shape).astype(np.float32)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _blob(shape: Tuple[int, int], centre: Tuple[float, float], radius: float, rng: np.random.Generator,
          roughness: float) -> np.ndarray:
    """A smooth irregular blob (boolean) of about ``radius`` pixels."""
    rows, cols = np.ogrid[:shape[0], :shape[1]]
    aspect = rng.uniform(0.6, 1.4)
    dist = np.hypot((rows - centre[0]) * aspect, (cols - centre[1]) / aspect) / radius
    noise = ndimage.gaussian_filter(rng.normal(0, 1, shape).astype(np.float32), max(2.0, radius / 3))
    noise /= noise.std() + 1e-6
    return dist + roughness * noise < 1.0


#: The lowest density painted disease may have where it touches the lung's outer boundary: clearly
#: above fat (−150..−50 HU), so "fat-density at the border" is never taught as lung.
BORDER_MIN_HU = -30.0


def _paint(image: np.ndarray, region: np.ndarray, hu: Tuple[float, float], rng: np.random.Generator,
           hu_window: Tuple[float, float], border: Optional[np.ndarray] = None, patchy: bool = False) -> None:
    """Fill ``region`` with a textured density in the ``hu`` range, its edge softened by ~1 pixel.

    ``patchy`` spares 10–40 % of the region in smooth spots of 2–5 pixels (partly aerated lung, as in
    bronchopneumonia; fluid is never patchy). Where ``region`` meets ``border`` (the lung's outer
    boundary) the density is at least :data:`BORDER_MIN_HU` and the edge is hard.
    """
    if not region.any():
        return
    if border is not None and (region & border).any():
        hu = (max(hu[0], BORDER_MIN_HU), max(hu[1], BORDER_MIN_HU + 10.0))
    width = hu_window[1] - hu_window[0]
    value = hu_to_unit(rng.uniform(*hu), hu_window)
    texture = rng.normal(0.0, 12.0 / width, image.shape).astype(np.float32)
    # soft rim, but only inside the region: the painted density never leaves the lung
    alpha = np.where(region, np.clip(1.5 * ndimage.gaussian_filter(region.astype(np.float32), 0.7), 0, 1), 0)
    if patchy:
        field = ndimage.gaussian_filter(rng.normal(0, 1, region.shape).astype(np.float32), rng.uniform(2.0, 5.0))
        spared = field > np.quantile(field[region], 1.0 - rng.uniform(0.1, 0.4))
        alpha *= 1.0 - 0.9 * np.clip(ndimage.gaussian_filter(spared.astype(np.float32), 0.7) * 1.5, 0, 1)
    if border is not None:
        alpha[region & border] = 1.0  # against the pleura: no fat-density blend of lesion and air
    if image.ndim == 3:
        alpha = alpha[..., None]  # the lesion reaches the context channels too (it spans a few mm)
    image += alpha * (value + texture - image)


def air_bronchograms(image: np.ndarray, region: np.ndarray, rng: np.random.Generator,
                     hu_window: Tuple[float, float]) -> np.ndarray:
    """Draw 1–4 air-filled bronchi (−950..−800 HU, 1–3 pixels wide, gently curving, sometimes forking)
    inside ``region`` (kept one pixel off its edge) in place; returns the pixels drawn.

    Air bronchograms are the radiological sign that dense tissue is lung (consolidation, atelectasis)
    and not fluid outside it, so painted disease carries them and painted effusion never does.
    """
    inner = ndimage.binary_erosion(region, iterations=1)
    drawn = np.zeros(region.shape, dtype=bool)
    pts = np.argwhere(inner)
    if pts.shape[0] < 30:
        return drawn
    wanted, tries = int(rng.integers(1, 5)), 0
    while wanted > 0 and tries < 12:
        tries += 1
        path = []
        pos = pts[rng.integers(len(pts))].astype(np.float64)
        heading = rng.uniform(0, 2 * np.pi)
        branches = [(pos, heading, rng.uniform(8, 40))]
        while branches:
            pos, heading, length = branches.pop()
            for _step in range(int(length)):
                heading += rng.normal(0.0, 0.12)
                pos = pos + (np.sin(heading), np.cos(heading))
                r, c = int(round(pos[0])), int(round(pos[1]))
                if not (0 <= r < region.shape[0] and 0 <= c < region.shape[1]) or not inner[r, c]:
                    break
                path.append((r, c))
                if len(branches) < 2 and rng.random() < 0.03:  # a fork
                    branches.append((pos, heading + rng.choice((-1, 1)) * rng.uniform(0.3, 0.8), length / 2))
        if len(path) < 6:
            continue
        wanted -= 1
        centre = np.zeros(region.shape, dtype=bool)
        centre[tuple(np.array(path).T)] = True
        width = rng.uniform(0.5, 1.5)
        drawn |= (ndimage.distance_transform_edt(~centre) <= width) & inner
    if drawn.any():
        width_hu = hu_window[1] - hu_window[0]
        value = hu_to_unit(rng.uniform(-950.0, -800.0), hu_window)
        noise = rng.normal(0.0, 20.0 / width_hu, (int(drawn.sum()),) + image.shape[2:]).astype(np.float32)
        image[drawn] = value + noise  # a bronchus spans the few mm of the context channels too
    return drawn


def pathology(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
              hu_window: Tuple[float, float] = HU_WINDOW, p_bronchogram: float = 0.0, p_patchy: float = 0.0,
              p_pleural: float = 0.0) -> np.ndarray:
    """Paint one kind of simulated disease inside the lung (labels are left unchanged); ``image`` is
    network input made with ``hu_window`` (HU).

    * consolidation / atelectasis: irregular blobs of −100..+60 HU, centred on the pleura with
      probability ``p_pleural``;
    * dependent atelectasis: the posterior (dependent) part of one lung at +20..+60 HU with a curved
      upper border (in the canonical slice rows grow towards posterior);
    * nodules: 1–5 round lesions of 3–20 mm at −50..+80 HU, some against the pleura.

    Consolidation and atelectasis are patchy with probability ``p_patchy`` and carry
    :func:`air_bronchograms` with probability ``p_bronchogram``: the two signs that tell dense lung from
    pleural fluid.
    Lesions touching the lung's outer boundary (2 pixels) are at least :data:`BORDER_MIN_HU` dense.
    """
    lung = labels > 0
    if lung.sum() < 200:
        return image
    image = image.copy()
    kind = rng.choice(("consolidation", "dependent", "nodules"), p=(0.45, 0.3, 0.25))
    rows, cols = np.nonzero(lung)
    border = outer_boundary(labels, 2)
    if kind == "consolidation":
        edge_rows, edge_cols = np.nonzero(outer_boundary(labels, 1))
        for _ in range(int(rng.integers(1, 3))):
            if edge_rows.size and _happens(p_pleural, rng):  # pleural-based: the lung meets the chest wall densely
                k = int(rng.integers(edge_rows.size))
                centre = (edge_rows[k], edge_cols[k])
            else:
                k = int(rng.integers(rows.size))
                centre = (rows[k], cols[k])
            region = _blob(lung.shape, centre, rng.uniform(8, 40), rng, 0.35) & lung
            _paint(image, region, (-100.0, 60.0), rng, hu_window, border, patchy=_happens(p_patchy, rng))
            if _happens(p_bronchogram, rng):
                air_bronchograms(image, region, rng, hu_window)
    elif kind == "dependent":
        # dependent atelectasis / consolidation of a lung's posterior part (inside the pleura: lung;
        # pleural *fluid* there is not lung and is painted as background by .negatives)
        side = (labels == rng.choice((RIGHT, LEFT))) if rng.random() < 0.8 else lung
        if side.sum() < 200:
            side = lung
        r, c = np.nonzero(side)
        depth = rng.uniform(0.15, 0.5) * (r.max() - r.min())
        col_pos = np.linspace(-1, 1, lung.shape[1])
        level = r.max() - depth + rng.uniform(0.0, 0.4) * depth * col_pos[None, :] ** 2 * rng.choice((-1, 1))
        region = side & (np.arange(lung.shape[0])[:, None] > level)
        _paint(image, region, (20.0, 60.0), rng, hu_window, border, patchy=_happens(p_patchy, rng))
        if _happens(p_bronchogram, rng):
            air_bronchograms(image, region, rng, hu_window)
    else:
        for _ in range(int(rng.integers(1, 6))):
            k = int(rng.integers(rows.size))
            region = _blob(lung.shape, (rows[k], cols[k]), rng.uniform(1.0, 6.5), rng, 0.1) & lung
            _paint(image, region, (-50.0, 80.0), rng, hu_window, border)
    return np.clip(image, 0.0, 1.0)


class Augmenter:
    """The training augmentation: a callable ``(image, labels, rng) -> (image, labels)`` on network
    input made with ``hu_window`` (HU; the model's, so painted densities are right for any window)."""

    def __init__(self, cfg: AugmentConfig = AugmentConfig(), hu_window: Tuple[float, float] = HU_WINDOW):
        self.cfg = cfg
        self.hu_window = (float(hu_window[0]), float(hu_window[1]))

    def __call__(self, image: np.ndarray, labels: np.ndarray,
                 rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
        cfg = self.cfg
        if rng.random() < cfg.p_pathology:
            image = pathology(image, labels, rng, self.hu_window, cfg.p_bronchogram, cfg.p_patchy,
                              cfg.p_pleural)  # before warping, so lesions warp with the lung
        if rng.random() < cfg.p_negative:
            image, labels = negative_example(image, labels, rng, self.hu_window,
                                             gas_below_bases=cfg.gas_below_bases)
        if rng.random() < cfg.p_flip:
            image, labels = flip_left_right(image, labels)
        if rng.random() < cfg.p_spatial:
            image, labels = spatial(image, labels, rng, cfg)
        if rng.random() < cfg.p_intensity:
            image = intensity(image, rng, cfg, self.hu_window)
        return image, labels
