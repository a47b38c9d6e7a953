"""The one preprocessing path shared by inference and training.

Every canonical axial slice is resampled onto the model's fixed millimetre grid (``size`` x ``size``
pixels of ``pixel_mm``), centred on the patient's body, so the network sees every scan at the same
physical scale whatever its pixel spacing or field of view. Resampling is separable (a row matrix and a
column matrix), so a batch of slices is two matrix products; the way back to the input grid uses the
same machinery on the lung probabilities, which keeps sub-pixel boundaries. The matrices are banded
(each output pixel reads a few input pixels), so they are applied in tiles of output rows, each
multiplying only the input rows it reads: the same products at a tenth of the arithmetic. Slices far
noisier than the network was trained on are smoothed on the model grid (:mod:`.noise`); others are not
touched.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import numpy as np
from scipy import ndimage

from .geometry import CanonicalOrientation, Geometry, canonical_orientation, interpolation_matrix, support
from ..defaults import BODY_HU, GRID_PIXEL_MM, GRID_SIZE, HU_WINDOW, NOISE_TARGET_HU, NOISE_TRIGGER_HU
from .intensity import window_offset_scale
from .noise import suppress_noise

#: Output rows per tile of a banded resampling matrix (small enough to skip most zeros, large enough
#: for efficient matrix products).
_TILE = 32


@dataclass(frozen=True)
class _Banded:
    """A resampling matrix ``(n_out, n_in)`` kept as tiles of output rows with the input range each reads."""

    n_out: int
    tiles: Tuple[Tuple[int, int, int, int, np.ndarray], ...]  # out start, out stop, in start, in stop, weights

    @classmethod
    def of(cls, weights: np.ndarray, tile: int = _TILE) -> "_Banded":
        tiles = []
        for lo in range(0, weights.shape[0], tile):
            block = weights[lo:lo + tile]
            a, b = support(block)
            if b > a:
                tiles.append((lo, lo + block.shape[0], a, b, np.ascontiguousarray(block[:, a:b])))
        return cls(weights.shape[0], tuple(tiles))

    def within(self, start: int, stop: int) -> Tuple["_Banded", int, int]:
        """The tiles that read input ``[start, stop)``: (that matrix, its first and last+1 output row)."""
        tiles = [t for t in self.tiles if t[2] < stop and t[3] > start]
        if not tiles:
            return _Banded(0, ()), 0, 0
        lo, hi = tiles[0][0], tiles[-1][1]
        return _Banded(hi - lo, tuple((a - lo, b - lo) + t[2:] for t in tiles for a, b in [t[:2]])), lo, hi

    def rows(self, x: np.ndarray) -> np.ndarray:
        """``W @ x`` over the second-last axis of ``x`` (float32)."""
        out = np.zeros(x.shape[:-2] + (self.n_out, x.shape[-1]), dtype=np.float32)
        for lo, hi, a, b, w in self.tiles:
            out[..., lo:hi, :] = np.matmul(w, x[..., a:b, :])
        return out

    def cols(self, x: np.ndarray) -> np.ndarray:
        """``x @ W.T`` over the last axis of ``x`` (float32)."""
        out = np.zeros(x.shape[:-1] + (self.n_out,), dtype=np.float32)
        for lo, hi, a, b, w in self.tiles:
            out[..., lo:hi] = np.matmul(x[..., a:b], w.T)
        return out


@dataclass(frozen=True)
class ModelGridSpec:
    """The model's input grid: ``size`` x ``size`` pixels of ``pixel_mm`` mm, HU window, and the
    through-plane context.

    ``context_mm`` > 0 gives the network two more input channels: the CT ``context_mm`` below and above
    the slice (mm along the patient's superior axis, interpolated between slices, so thin and thick
    slices show the same anatomy). 0 (the default) is one slice alone.

    A slice whose noise on the model grid (:func:`LungSegLib.core.noise.noise_sd_hu`, HU) is above
    ``noise_trigger_hu`` is smoothed down to about ``noise_target_hu`` before the network sees it;
    ``noise_trigger_hu`` 0 turns that off.
    """

    size: int = GRID_SIZE
    pixel_mm: float = GRID_PIXEL_MM
    hu_window: Tuple[float, float] = HU_WINDOW
    context_mm: float = 0.0
    noise_trigger_hu: float = NOISE_TRIGGER_HU
    noise_target_hu: float = NOISE_TARGET_HU

    @property
    def channels(self) -> int:
        """Input channels of the network: 1, or 3 (inferior, the slice, superior) with context."""
        return 3 if self.context_mm > 0 else 1

    @property
    def offsets_mm(self) -> Tuple[float, ...]:
        """Each input channel's distance from the slice (mm, towards superior)."""
        return (-self.context_mm, 0.0, self.context_mm) if self.context_mm > 0 else (0.0,)


@dataclass(frozen=True)
class SliceResampler:
    """Maps canonical slices (H x W at ``pixel_spacing`` mm) to and from the model grid.

    ``center_mm`` is the (row, column) position in the input slice, in mm from pixel (0, 0), that
    becomes the centre of the model grid.
    """

    shape: Tuple[int, int]
    pixel_spacing: Tuple[float, float]
    center_mm: Tuple[float, float]
    spec: ModelGridSpec

    def __post_init__(self) -> None:
        size, mm = self.spec.size, self.spec.pixel_mm
        fwd, back = [], []
        for axis in range(2):
            n, sp = self.shape[axis], self.pixel_spacing[axis]
            start = self.center_mm[axis] - (size - 1) / 2 * mm
            w, _ = interpolation_matrix(n, sp, size, mm, offset_mm=start)
            lo, hi = support(w)
            fwd.append((_Banded.of(w[:, lo:hi]), lo, hi))
            wb, _ = interpolation_matrix(size, mm, n, sp, offset_mm=-start)
            rows = np.flatnonzero(wb.any(axis=1))
            blo, bhi = (int(rows[0]), int(rows[-1]) + 1) if rows.size else (0, 0)
            back.append((_Banded.of(wb[blo:bhi]), blo, bhi))
        object.__setattr__(self, "_fwd", fwd)
        object.__setattr__(self, "_back", back)

    def to_model(self, slices_hu: np.ndarray) -> np.ndarray:
        """(B, H, W) HU (any numeric dtype) -> (B, size, size) float32 in [0, 1]."""
        (wr, r0, r1), (wc, c0, c1) = self._fwd
        lo, hi = self.spec.hu_window
        offset, scale = window_offset_scale(self.spec.hu_window)
        crop = np.array(slices_hu[:, r0:r1, c0:c1], dtype=np.float32)
        if np.asarray(slices_hu).dtype.kind == "f" and not np.isfinite(crop).all():
            # NaN/Inf voxels lie outside the field of view: air like padding (a NaN would spread
            # through the resampling products over whole rows and columns)
            np.nan_to_num(crop, copy=False, nan=lo, posinf=lo, neginf=lo)
        np.clip(crop, lo, hi, out=crop)
        crop -= offset  # air becomes 0, so pixels outside the scan need no extra term
        out = wc.cols(wr.rows(crop))
        out *= scale  # resampling is linear: scaling after it is the same, on fewer pixels
        return out

    def to_input(self, maps: np.ndarray, channel_axis: int = -1,
                 within: Optional[Tuple[Tuple[int, int], Tuple[int, int]]] = None,
                 ) -> Tuple[np.ndarray, Tuple[slice, slice]]:
        """(B, size, size, C) model-grid maps (0 outside) -> (B, h, w, C) on the input grid.

        Only the part of the input slice the model grid covers is returned, with the (row, column)
        slices locating it; everything outside is 0. ``channel_axis=1`` takes and returns
        channels-first maps ``(B, C, size, size)`` -> ``(B, C, h, w)`` (no transposes).
        ``within=((row0, row1), (col0, col1))`` narrows the result to the input pixels that read any
        model-grid pixel in those ranges (for maps known to be negligible elsewhere).
        """
        (wr, r0, r1), (wc, c0, c1) = self._back
        if within is not None:
            wr, lo, hi = wr.within(*within[0])
            r0, r1 = r0 + lo, r0 + hi
            wc, lo, hi = wc.within(*within[1])
            c0, c1 = c0 + lo, c0 + hi
        if channel_axis == 1:
            return wc.cols(wr.rows(np.asarray(maps, dtype=np.float32))), (slice(r0, r1), slice(c0, c1))
        x = np.ascontiguousarray(np.moveaxis(np.asarray(maps, dtype=np.float32), -1, 1))  # B, C, S, S
        out = wc.cols(wr.rows(x))
        return np.moveaxis(out, 1, -1), (slice(r0, r1), slice(c0, c1))

    def labels_to_model(self, labels: np.ndarray, n_classes: int) -> np.ndarray:
        """(B, H, W) integer labels -> (B, size, size) labels on the model grid (majority vote)."""
        (wr, r0, r1), (wc, c0, c1) = self._fwd
        crop = np.asarray(labels[:, r0:r1, c0:c1])
        votes = np.stack([wc.cols(wr.rows((crop == c).astype(np.float32)))
                          for c in range(1, n_classes)], axis=-1)
        background = 1.0 - votes.sum(axis=-1, keepdims=True)
        return np.argmax(np.concatenate([background, votes], axis=-1), axis=-1).astype(np.uint8)


def body_center_mm(volume_hu: np.ndarray, pixel_spacing: Tuple[float, float]) -> Tuple[float, float]:
    """(row, column) centre in mm of the patient's body in a canonical volume.

    The body is what is denser than −500 HU in at least a third of the slices, opened by ~10 mm so a
    couch or a blanket separated by a thin gap falls away, largest component kept. Falls back to the
    slice centre when nothing looks like a body.
    """
    nz, h, w = volume_hu.shape
    step_z = max(1, nz // 48)
    step = [max(1, int(round(4.0 / s))) for s in pixel_spacing]
    sub = np.asarray(volume_hu[::step_z, ::step[0], ::step[1]])
    frac = (sub > BODY_HU).mean(axis=0) if sub.dtype.kind != "f" else \
        ((sub > BODY_HU) & np.isfinite(sub)).mean(axis=0)  # +inf voxels are not body
    body = frac >= 1 / 3
    radius = [max(1, int(round(10.0 / (s * st)))) for s, st in zip(pixel_spacing, step)]
    body = ndimage.binary_opening(body, structure=np.ones((2 * radius[0] + 1, 2 * radius[1] + 1)))
    lab, n = ndimage.label(body)
    centre = ((h - 1) / 2 * pixel_spacing[0], (w - 1) / 2 * pixel_spacing[1])
    if n == 0:
        return centre
    largest = 1 + int(np.argmax(ndimage.sum_labels(body, lab, index=range(1, n + 1))))
    rows, cols = np.nonzero(lab == largest)
    return (float((rows.min() + rows.max()) / 2 * step[0] * pixel_spacing[0]),
            float((cols.min() + cols.max()) / 2 * step[1] * pixel_spacing[1]))


def resampler_for_volume(volume_hu: np.ndarray, pixel_spacing: Tuple[float, float],
                         spec: ModelGridSpec = ModelGridSpec()) -> SliceResampler:
    """The slice resampler for a canonical volume: its slices, centred on its body."""
    return SliceResampler(tuple(volume_hu.shape[1:]), tuple(pixel_spacing),
                          body_center_mm(volume_hu, pixel_spacing), spec)


@dataclass(frozen=True)
class PreparedVolume:
    """A CT volume made ready for the model, the same way for inference and training.

    ``canonical`` is the input reordered to the canonical stack (a view where possible, never
    modified; HU), ``orientation`` maps arrays to and from it, and ``resampler`` takes its slices to
    the model grid (body-centred, ``spec``'s pixel size) and back. ``noise_hu`` collects the noise
    estimate (HU on the model grid) of every canonical slice resampled so far.
    """

    orientation: CanonicalOrientation
    canonical: np.ndarray
    resampler: SliceResampler
    noise_hu: Dict[int, float] = field(default_factory=dict, compare=False)

    def model_slices(self, index) -> np.ndarray:
        """Canonical slices ``index`` (a slice or an index array) on the model grid, float32 in [0, 1]
        (intensity window applied, slices above the spec's noise trigger smoothed)."""
        out = self.resampler.to_model(self.canonical[index])
        spec = self.resampler.spec
        noise = suppress_noise(out, spec.hu_window, spec.noise_trigger_hu, spec.noise_target_hu)
        positions = range(self.canonical.shape[0])[index] if isinstance(index, slice) else np.asarray(index).reshape(-1)
        self.noise_hu.update(zip((int(k) for k in positions), (float(v) for v in noise)))
        return out

    def model_input(self, indices: np.ndarray, reuse: Optional[Dict[int, np.ndarray]] = None) -> np.ndarray:
        """The network input for canonical slices ``indices``: ``(B, size, size, channels)`` float32.

        One channel is :meth:`model_slices`. With context (``spec.context_mm`` > 0) the other channels
        are the CT that far below and above, linearly interpolated between the model-grid slices on
        either side and clamped to the first/last slice. ``reuse`` (a dict the caller keeps between
        calls that walk the stack upwards) holds model-grid slices already resampled, so each slice is
        resampled once; entries below the batch's lowest need are dropped.
        """
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        spec = self.resampler.spec
        if spec.channels == 1:
            return self.model_slices(_as_slice(indices))[..., None]
        n = self.canonical.shape[0]
        step = np.array(spec.offsets_mm) / self.orientation.slice_spacing_mm
        position = np.clip(indices[:, None] + step[None, :], 0, n - 1)  # (B, C) fractional slice index
        below = np.floor(position).astype(np.int64)
        above = np.minimum(below + 1, n - 1)
        weight = (position - below).astype(np.float32)
        needed = np.union1d(below, above)
        cache = {} if reuse is None else reuse
        for k in [k for k in cache if k < needed[0]]:
            del cache[k]
        missing = np.array([k for k in needed if int(k) not in cache], dtype=np.int64)
        if missing.size:
            for k, image in zip(missing, self.model_slices(_as_slice(missing))):
                cache[int(k)] = image
        out = np.empty((indices.size, spec.size, spec.size, spec.channels), np.float32)
        for b in range(indices.size):
            for c in range(spec.channels):
                lo, hi, w = cache[int(below[b, c])], cache[int(above[b, c])], weight[b, c]
                out[b, :, :, c] = lo if w == 0 else (1 - w) * lo + w * hi
        return out


def _as_slice(indices: np.ndarray):
    """A run of consecutive indices as a slice: the input is then cropped as a view, not gathered into a
    copy of whole slices first (the usual batch)."""
    if indices.size and indices[-1] - indices[0] == indices.size - 1 and np.all(np.diff(indices) == 1):
        return slice(int(indices[0]), int(indices[-1]) + 1)
    return indices


def prepare_volume(volume: np.ndarray, geometry: Geometry, spec: ModelGridSpec = ModelGridSpec()) -> PreparedVolume:
    """The one preparation path: orientation (canonical stack from the patient geometry, so sides are
    the patient's), then the model grid (centred on the body), then intensity (:meth:`PreparedVolume.model_slices`,
    batch by batch, so memory stays bounded)."""
    orientation = canonical_orientation(geometry)
    canonical = orientation.to_canonical(volume)
    return PreparedVolume(orientation, canonical,
                          resampler_for_volume(canonical, orientation.pixel_spacing_mm, spec))


__all__ = ["BODY_HU", "ModelGridSpec", "PreparedVolume", "SliceResampler", "body_center_mm", "prepare_volume",
           "resampler_for_volume"]
