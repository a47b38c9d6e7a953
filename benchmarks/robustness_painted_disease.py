"""Does the bundled model keep dense disease inside the lung? Paints it into real CTs and compares.

1. consolidation: a 25 mm-radius ball of 30 HU (± 15 HU noise) at the deepest point of the right lung;
2. effusion-like fluid: the posterior third of the left lung on its 8 lowest slices at 15 HU (± 15).
Prints, per case, the share of painted voxels still labelled as that lung and the lung's Dice with and
without the paint. The cases are training cases of the bundled model, so this is a best case.

    python benchmarks/robustness_painted_disease.py [CASES_DIR]   (default: $LUNGSEG_DATA_DIR/cases)
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from LungSegLib.api import LungSegmenter
from LungSegLib.evaluation.metrics import dice
from LungSegLib.core.geometry import Geometry

CASES = ("LUNG1-002", "ACRIN-FLT-Breast-001")




def painted_regions(gt: np.ndarray, spacing_zyx: np.ndarray):
    dist = ndimage.distance_transform_edt(gt == 1, sampling=spacing_zyx)
    c = np.unravel_index(np.argmax(dist), dist.shape)
    zz, yy, xx = np.ogrid[:gt.shape[0], :gt.shape[1], :gt.shape[2]]
    r2 = ((zz - c[0]) * spacing_zyx[0]) ** 2 + ((yy - c[1]) * spacing_zyx[1]) ** 2 + ((xx - c[2]) * spacing_zyx[2]) ** 2
    yield "consolidation ball 25 mm, 30 HU", (r2 <= 25 ** 2) & (gt == 1), 1, 30
    left = gt == 2
    fluid = np.zeros_like(left)
    for z in np.flatnonzero(left.any(axis=(1, 2)))[:8]:  # rows grow towards posterior in these LPS files
        rows = np.nonzero(left[z])[0]
        fluid[z] = left[z] & (np.arange(gt.shape[1])[:, None] > rows.max() - (rows.max() - rows.min()) / 3)
    yield "posterior basal fluid, 15 HU", fluid, 2, 15


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(
        os.environ.get("LUNGSEG_DATA_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "data")) / "cases"
    segmenter = LungSegmenter()
    rng = np.random.default_rng(0)
    for case in CASES:
        image = sitk.ReadImage(str(root / case / "ct.nrrd"))
        ct = sitk.GetArrayFromImage(image)
        gt = sitk.GetArrayFromImage(sitk.ReadImage(str(root / case / "label.nrrd")))
        geometry = Geometry.from_sitk(image)
        spacing = np.array(image.GetSpacing())[::-1]
        base = segmenter.segment_array(ct, geometry).labels
        for name, mask, lung, hu in painted_regions(gt, spacing):
            painted = ct.copy()
            painted[mask] = hu + rng.normal(0, 15, int(mask.sum())).astype(ct.dtype)
            out = segmenter.segment_array(painted, geometry).labels
            print(f"{case}: {name}: {mask.sum() * np.prod(spacing) / 1000:.0f} mL painted; kept as lung "
                  f"{np.mean(out[mask] == lung):.2f} (unpainted: {np.mean(base[mask] == lung):.2f}); lung Dice "
                  f"{dice(out == lung, gt == lung):.3f} (unpainted {dice(base == lung, gt == lung):.3f})")


if __name__ == "__main__":
    main()
