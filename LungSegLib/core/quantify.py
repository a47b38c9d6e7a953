"""Lung density measures per lung and for both lungs: volume, HU statistics, emphysema and
high-attenuation indices, and the Lung CT Analyzer density bins.

Everything comes from one histogram: the lung voxels' HU, rounded to whole HU, are counted per
label with ``np.bincount`` over (label x HU) in one pass over the volume (slab by slab, so the
temporaries stay small) -- no per-lung pass. Mean, SD and the percentiles (median, Perc15, NumPy's
default linear rule) are exact for integer HU; float HU are rounded for the thresholds and percentiles,
their mean and SD use the exact values.

**Research measures, not diagnostic values.** Densitometry depends on the reconstruction kernel,
slice thickness, dose/noise, inspiration level, contrast and scanner calibration; compare values
only between scans acquired and reconstructed alike (see Mets et al., Eur Radiol 2012,
doi:10.1007/s00330-011-2215-6). The segmentation itself also moves them (a tumour inside or outside
the lung contour changes %HAA and the dense bins).

Threshold conventions (all configurable in :class:`DensityThresholds`; a voxel's HU is ``h``):

* ``%LAA-950`` / ``%LAA-910``: share of lung voxels with ``h < -950`` / ``h < -910`` (strictly
  below). Emphysema index at full inspiration: Gevenois et al., AJRCCM 1996;154:187
  (doi:10.1164/ajrccm.154.1.8680679) for -950; Müller et al., Chest 1988;94:782 (the "density
  mask") and COPDGene (Regan et al., COPD 2010, doi:10.3109/15412550903499522) for -910/-950.
* ``Perc15``: the HU below which 15 % of lung voxels lie (Dirksen et al., AJRCCM 1999;160:1585;
  Parr et al., AJRCCM 2004, doi:10.1164/rccm.200306-768OC).
* ``%HAA``: share with ``-600 <= h <= -250`` (both ends inclusive), the high-attenuation area of
  interstitial abnormality (Lederer et al., AJRCCM 2009, doi:10.1164/rccm.200903-0394OC;
  Podolanczuk et al., Eur Respir J 2016, doi:10.1183/13993003.00129-2016).
* Lung CT Analyzer bins (Bumm R. et al., "Lung CT Analyzer", 3D Slicer extension,
  github.com/rbumm/SlicerLungCTAnalyzer; used for COVID-19 pneumonia): emphysema -1050..-950,
  inflated -950..-750, infiltrated -750..-400, collapsed -400..0 HU. Here each bin is half-open,
  ``lo <= h < hi``, so neighbouring bins never count a voxel twice and a voxel at exactly -950 HU is
  "inflated" (consistent with ``%LAA-950`` counting only ``h < -950``). Lung voxels outside every
  bin (below -1050 or at/above 0 HU) are in no bin, so the bins need not add up to 100 %.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Tuple

import numpy as np

from ..labels import LUNG_LABELS
from .geometry import Geometry
from .jsonsafe import json_safe

#: Key of the "both lungs" region in the results (the single lungs use the label table's keys).
BOTH = "both"
#: The HU range of the histogram (int16, what CT is stored in); values beyond it are clipped to it.
_HU_MIN, _HU_MAX = -32768, 32767
#: Voxels per slab of the one pass (a few MB of temporaries).
_SLAB_VOXELS = 1 << 21


@dataclass(frozen=True)
class DensityThresholds:
    """Thresholds of the density measures, in HU (see the module docstring for sources and edges).

    Attributes:
        laa_low: %LAA counts ``h < laa_low`` (default -950 HU).
        laa_high: the second emphysema index, ``h < laa_high`` (default -910 HU).
        haa: (low, high) of %HAA, both inclusive (default -600..-250 HU).
        percentile: the Perc-N density percentile (default 15).
        bins: Lung CT Analyzer bins as (name, low, high), each ``low <= h < high``.
    """

    laa_low: float = -950.0
    laa_high: float = -910.0
    haa: Tuple[float, float] = (-600.0, -250.0)
    percentile: float = 15.0
    bins: Tuple[Tuple[str, float, float], ...] = (
        ("emphysema", -1050.0, -950.0),
        ("inflated", -950.0, -750.0),
        ("infiltrated", -750.0, -400.0),
        ("collapsed", -400.0, 0.0),
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.percentile <= 100.0:
            raise ValueError(f"percentile must lie in 0..100, got {self.percentile}")
        if self.haa[0] > self.haa[1]:
            raise ValueError(f"the %HAA range must be (low, high), got {self.haa}")
        for name, lo, hi in self.bins:
            if lo >= hi:
                raise ValueError(f"density bin {name!r} must have low < high, got {lo}..{hi} HU")


@dataclass(frozen=True)
class RegionMeasures:
    """The measures of one region (one lung or both).

    Attributes:
        region: ``"right"``, ``"left"`` or ``"both"``.
        name: display name ("Right lung", "Both lungs").
        voxels: number of voxels.
        volume_ml: volume in mL.
        mean_hu, median_hu, sd_hu: HU statistics (SD with ddof=0); NaN for an empty region.
        perc_hu: the Perc-N density (HU), N = ``DensityThresholds.percentile``; NaN when empty.
        laa_low_pct, laa_high_pct, haa_pct: %LAA-950, %LAA-910, %HAA (percent of the region's voxels).
        bins_pct, bins_ml: per Lung CT Analyzer bin, percent of the region and volume in mL.
    """

    region: str
    name: str
    voxels: int
    volume_ml: float
    mean_hu: float
    median_hu: float
    sd_hu: float
    perc_hu: float
    laa_low_pct: float
    laa_high_pct: float
    haa_pct: float
    bins_pct: Dict[str, float] = field(default_factory=dict)
    bins_ml: Dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class LungMeasures:
    """Density measures of the right lung, the left lung and both lungs (in that order)."""

    regions: Tuple[RegionMeasures, ...]
    thresholds: DensityThresholds

    def __getitem__(self, region: str) -> RegionMeasures:
        for r in self.regions:
            if r.region == region:
                return r
        raise KeyError(f"No region {region!r}; have {[r.region for r in self.regions]}")

    def columns(self) -> List[Tuple[str, str]]:
        """(column key, column title with unit) of :meth:`rows`, in table order."""
        t = self.thresholds
        cols = [("name", "Region"), ("volume_ml", "Volume (mL)"), ("mean_hu", "Mean (HU)"),
                ("median_hu", "Median (HU)"), ("sd_hu", "SD (HU)"),
                ("perc_hu", f"Perc{t.percentile:g} (HU)"),
                ("laa_low_pct", f"%LAA{t.laa_low:g}"), ("laa_high_pct", f"%LAA{t.laa_high:g}"),
                ("haa_pct", f"%HAA {t.haa[0]:g}..{t.haa[1]:g}")]
        cols += [(f"bin_{name}_pct", f"% {name} {lo:g}..{hi:g}") for name, lo, hi in t.bins]
        return cols

    def rows(self) -> List[Dict[str, object]]:
        """One flat dict per region, keys as in :meth:`columns` (CSV, tables)."""
        out = []
        for r in self.regions:
            row: Dict[str, object] = {"region": r.region}
            row.update({k: getattr(r, k) for k, _ in self.columns() if hasattr(r, k)})
            row.update({f"bin_{name}_pct": r.bins_pct[name] for name, _, _ in self.thresholds.bins})
            out.append(row)
        return out

    def to_dict(self) -> Dict[str, object]:
        """JSON-ready (NaN becomes None)."""
        return {"regions": [json_safe(asdict(r)) for r in self.regions],
                "thresholds": json_safe(asdict(self.thresholds)),
                "note": "Research measures: kernel, dose, slice thickness and inspiration change them."}


def _percentile(counts: np.ndarray, hu0: int, q: float) -> float:
    """``np.percentile(values, q)`` (linear rule) of the values whose 1-HU histogram is ``counts``
    (``counts[n]`` voxels at ``hu0 + n`` HU)."""
    n = int(counts.sum())
    if n == 0:
        return float("nan")
    pos = q / 100.0 * (n - 1)
    below, frac = int(math.floor(pos)), pos - math.floor(pos)
    cum = np.cumsum(counts)
    # the value of 0-based rank r is the first HU whose cumulative count exceeds r
    lo = int(np.searchsorted(cum, below, side="right"))
    hi = int(np.searchsorted(cum, min(below + 1, n - 1), side="right"))
    return float(hu0 + lo + frac * (hi - lo))


def _count(counts: np.ndarray, hu0: int, lo: float = -math.inf, hi: float = math.inf,
           lo_inclusive: bool = True, hi_inclusive: bool = False) -> int:
    """Voxels of the 1-HU histogram within lo..hi (inclusive as told)."""
    hu = hu0 + np.arange(counts.size)
    keep = (hu >= lo if lo_inclusive else hu > lo) & (hu <= hi if hi_inclusive else hu < hi)
    return int(counts[keep].sum())


def measure_lungs(volume_hu: np.ndarray, labels: np.ndarray, geometry: Geometry,
                  thresholds: DensityThresholds = DensityThresholds()) -> LungMeasures:
    """Density measures of each lung label and of all of them together.

    Args:
        volume_hu: ``[k, j, i]`` CT in HU (integer or float; float HU are rounded to whole HU for the
            thresholds and percentiles, the mean and SD use them as they are).
        labels: ``[k, j, i]`` labelmap on the same grid (values from :mod:`LungSegLib.labels`).
        geometry: the grid (voxel volume for mL).
        thresholds: the measures' thresholds (HU).

    Threshold comparisons are made on whole HU: a float voxel of -950.4 HU counts as -950.
    """
    volume_hu, labels = np.asarray(volume_hu), np.asarray(labels)
    if volume_hu.shape != labels.shape:
        raise ValueError(f"CT {volume_hu.shape} and labels {labels.shape} must have the same shape")
    voxel_ml = geometry.voxel_volume_ml()
    values = [label.value for label in LUNG_LABELS]
    is_float = np.issubdtype(volume_hu.dtype, np.floating)
    hist, sums, sq = _label_histogram(volume_hu, labels, max(values) + 1, is_float)
    regions = [(label.key, label.name, [label.value]) for label in LUNG_LABELS]
    regions.append((BOTH, "Both lungs", values))
    out = [_region_measures(key, name, hist[members].sum(axis=0), float(sums[members].sum()),
                            float(sq[members].sum()), is_float, voxel_ml, thresholds)
           for key, name, members in regions]
    return LungMeasures(tuple(out), thresholds)


def _label_histogram(volume_hu: np.ndarray, labels: np.ndarray, n_labels: int,
                     is_float: bool) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(hist, sums, sq)``: voxels per (label, whole HU from _HU_MIN) ``[n_labels, bins]``, and for float
    CTs the sum and the sum of squares of each label's exact HU (zeros for integer CTs)."""
    # one histogram of (label, whole HU) over the int16 range (HU beyond it are clipped to it: no CT has
    # them), accumulated over slabs so the temporaries stay small and in cache
    hu0, n_bins = _HU_MIN, _HU_MAX - _HU_MIN + 1
    hist = np.zeros(n_labels * n_bins, np.int64)
    sums = np.zeros(n_labels)
    sq = np.zeros(n_labels)
    step = max(1, _SLAB_VOXELS // max(1, int(np.prod(labels.shape[1:]))))
    for k in range(0, labels.shape[0], step):
        lab_slab = np.asarray(labels[k:k + step])
        mask = (lab_slab > 0) & (lab_slab < n_labels)  # unknown label values are not lungs
        if not mask.any():
            continue
        lab = lab_slab[mask].astype(np.intp)
        hu = np.asarray(volume_hu[k:k + step])[mask]
        if is_float:
            hu_f = hu.astype(np.float64)
            sums += np.bincount(lab, weights=hu_f, minlength=n_labels)
            sq += np.bincount(lab, weights=hu_f * hu_f, minlength=n_labels)
            hu = np.rint(hu_f)
        index = lab * n_bins
        index += np.clip(hu, _HU_MIN, _HU_MAX).astype(np.intp)
        index -= hu0
        hist += np.bincount(index, minlength=n_labels * n_bins)
    return hist.reshape(n_labels, n_bins), sums, sq


def _region_measures(key: str, name: str, counts: np.ndarray, hu_sum: float, hu_sq: float, is_float: bool,
                     voxel_ml: float, t: DensityThresholds) -> RegionMeasures:
    """One region's measures from its whole-HU histogram ``counts`` (from _HU_MIN) and, for a float CT,
    the sum and sum of squares of its exact HU."""
    hu0 = _HU_MIN
    hu_values = hu0 + np.arange(counts.size, dtype=np.float64)
    n = int(counts.sum())
    nan = float("nan")
    if not n:
        mean = sd = nan
    elif is_float:  # the exact values' moments (the histogram holds them rounded)
        mean = hu_sum / n
        sd = math.sqrt(max(0.0, hu_sq / n - mean * mean))
    else:  # integer HU: the histogram is exact
        mean = float(counts @ hu_values) / n
        sd = math.sqrt(float(counts @ (hu_values - mean) ** 2) / n)

    def pct(count: int) -> float:
        return 100.0 * count / n if n else nan

    return RegionMeasures(
        region=key, name=name, voxels=n, volume_ml=n * voxel_ml, mean_hu=mean,
        median_hu=_percentile(counts, hu0, 50.0), sd_hu=sd,
        perc_hu=_percentile(counts, hu0, t.percentile),
        laa_low_pct=pct(_count(counts, hu0, hi=t.laa_low)),
        laa_high_pct=pct(_count(counts, hu0, hi=t.laa_high)),
        haa_pct=pct(_count(counts, hu0, t.haa[0], t.haa[1], hi_inclusive=True)),
        bins_pct={b: pct(_count(counts, hu0, lo, hi)) for b, lo, hi in t.bins},
        bins_ml={b: _count(counts, hu0, lo, hi) * voxel_ml for b, lo, hi in t.bins},
    )


__all__ = ["BOTH", "DensityThresholds", "LungMeasures", "RegionMeasures", "measure_lungs"]
