"""Robustness of the bundled model + post-processing to painted disease and lookalikes (issue 11).

Extends ``robustness_painted_disease.py``: on every shared case, one change at a time is painted into
the CT (HU, with texture) and the case is segmented again. What the labels *should* be follows the
label convention (``Resources/Models/MODEL_CARD.md``):

lung (the reference stays as it is)
  * ``consolidation``: a 25 mm-radius ball of +35 HU (± 15) against the right lung's lateral pleura,
    with air bronchograms (1.5 mm-radius tubes at −950 HU) inside;
  * ``ground glass``: a 35 mm-radius ball in the left lung with the parenchyma raised by +300 HU;
  * ``hilar tumour``: a 30 mm-radius ball of +40 HU (± 15) centred 10 mm medial to the right lung's
    hilum, half in the lung, half in the mediastinum;
  * ``emphysema``: low-attenuation patches (−980 HU) over ~30 % of the upper half of both lungs;
  * ``subpleural bulla``: −990 HU in a 20 mm-radius ball centred on the left lung's lateral pleura a
    quarter of the way up (half walled by the ribs: the walled-gas step must leave it);

not lung (the painted voxels leave the reference)
  * ``effusion``: fluid (+10 HU ± 10) filling the posterior part of the right lung's lowest 40 mm
    (deeper towards the base, a meniscus);
  * ``fat pad``: fat (−100 HU ± 15) in the anterior-medial part of the left lung's lowest 12 mm
    (the cardiophrenic angle);
  * ``subphrenic gas``: gas (−1000 HU) in the soft tissue within 30 mm below/around the left lung's
    base, behind a 4 mm wall.

Per case, change and post-processing variant (``today``: before issue 11; ``default``: airways +
partial-volume rule + pleural lesions put back (``LungSegLib/core/pleural.py``) + walled gas removed
(``LungSegLib/core/boundary.py``); ``default+fat``: and the
boundary-fat rule): Dice per lung against the expected
labels, total lung volume change against the same variant unpainted (%), and for the painted region the
share kept as lung (lung changes) or the mL labelled lung (lookalikes). The cases are the bundled
model's training cases: a best case for unseen patients.

    python benchmarks/robustness.py    # -> benchmarks/results/robustness.{md,json}
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy_common import (Case, bundled_model_path, case_names, labels_from_probabilities, load_case,  # noqa: E402
                             network_probabilities, probabilities)

from LungSegLib.core.model import load_model  # noqa: E402
from LungSegLib.core.postprocess import PostprocessOptions, postprocess  # noqa: E402
from LungSegLib.evaluation.metrics import dice  # noqa: E402

OFF = dict(remove_airways=False, remove_boundary_fat=False, boundary_midpoint=False, upper_island_fraction=0.0,
           fill_pleural_lesions=False, remove_walled_gas=False)
VARIANTS = {"today": PostprocessOptions(**OFF), "default": PostprocessOptions(),
            "default+fat": PostprocessOptions(remove_boundary_fat=True)}


def _dist_mm(shape, spacing, centre) -> np.ndarray:
    z, r, c = np.ogrid[:shape[0], :shape[1], :shape[2]]
    return np.sqrt(((z - centre[0]) * spacing[0]) ** 2 + ((r - centre[1]) * spacing[1]) ** 2
                   + ((c - centre[2]) * spacing[2]) ** 2)


def _noise(rng, n, sd) -> np.ndarray:
    return rng.normal(0, sd, n)


def paints(case: Case, rng: np.random.Generator):
    """(name, kind, painted CT, region) for each change; kind "lung" or "not lung"."""
    ct, truth, sp = case.ct, case.truth, case.spacing
    right, left = truth == 1, truth == 2
    zr = np.flatnonzero(right.any(axis=(1, 2)))
    zl = np.flatnonzero(left.any(axis=(1, 2)))

    # consolidation with air bronchograms against the right lung's lateral pleura
    z = int(zr[len(zr) // 2])
    rows, cols = np.nonzero(right[z])
    row = int(np.median(rows))
    col = int(cols[rows == row].min()) if (rows == row).any() else int(cols.min())
    centre = (z, row, col + 15.0 / sp[2])
    region = (_dist_mm(ct.shape, sp, centre) <= 25.0) & right
    out = ct.copy()
    out[region] = (35 + _noise(rng, int(region.sum()), 15)).astype(ct.dtype)
    inner = ndimage.binary_erosion(region, iterations=2)
    zz, rr, cc = np.ogrid[:ct.shape[0], :ct.shape[1], :ct.shape[2]]
    for dr in (-8.0, 0.0, 8.0):  # three bronchi running laterally, 8 mm apart
        tube = (np.hypot((zz - z) * sp[0], (rr - row - dr / sp[1]) * sp[1]) <= 1.5) & inner
        out[tube] = -950
    yield "consolidation + air bronchograms at the pleura", "lung", out, region

    # ground glass in the left lung
    dist = ndimage.distance_transform_edt(left, sampling=sp)
    centre = np.unravel_index(np.argmax(dist), dist.shape)
    region = (_dist_mm(ct.shape, sp, centre) <= 35.0) & left
    out = ct.copy()
    out[region & (ct < -500)] += 300
    yield "ground glass (+300 HU)", "lung", out, region

    # large hilar tumour: centred 10 mm medial to the right lung's most medial point at 60 % height
    z = int(zr[int(len(zr) * 0.6)])
    rows, cols = np.nonzero(right[z])
    k = int(np.argmax(cols))
    centre = (z, rows[k], cols[k] + 10.0 / sp[2])
    ball = (_dist_mm(ct.shape, sp, centre) <= 30.0) & (ct > -990)
    out = ct.copy()
    out[ball] = (40 + _noise(rng, int(ball.sum()), 15)).astype(ct.dtype)
    yield "hilar tumour 30 mm", "lung", out, ball & right

    # emphysema: low-attenuation patches over the upper half of both lungs
    lungs = truth > 0
    zs = np.flatnonzero(lungs.any(axis=(1, 2)))
    upper = np.zeros(ct.shape[0], bool)
    upper[zs[len(zs) // 2]:zs[-1] + 1] = True
    field = ndimage.gaussian_filter(rng.normal(0, 1, ct.shape).astype(np.float32), (1, 4, 4))
    region = lungs & upper[:, None, None] & (field > np.quantile(field[lungs & upper[:, None, None]], 0.7))
    out = ct.copy()
    out[region] = (-980 + _noise(rng, int(region.sum()), 10)).astype(ct.dtype)
    yield "emphysema (30 % of the upper half)", "lung", out, region

    # a subpleural bulla low in the left lung: air walled half by the ribs, where the walled-gas step looks
    z = int(zl[len(zl) // 4])
    rows, cols = np.nonzero(left[z])
    row = int(np.median(rows))
    col = int(cols[rows == row].max()) if (rows == row).any() else int(cols.max())
    region = (_dist_mm(ct.shape, sp, (z, row, col)) <= 20.0) & left
    out = ct.copy()
    out[region] = (-990 + _noise(rng, int(region.sum()), 5)).astype(ct.dtype)
    yield "subpleural bulla (20 mm, lower left lung)", "lung", out, region

    # effusion: fluid in the posterior part of the right lung's lowest 40 mm
    n = max(2, int(round(40.0 / sp[0])))
    region = np.zeros_like(right)
    for i, z in enumerate(zr[:n]):
        rows = np.nonzero(right[z])[0]
        depth = (0.45 - 0.3 * i / n) * (rows.max() - rows.min())
        region[z] = right[z] & (np.arange(ct.shape[1])[:, None] > rows.max() - depth)
    out = ct.copy()
    out[region] = (10 + _noise(rng, int(region.sum()), 10)).astype(ct.dtype)
    yield "pleural effusion (outside the lung)", "not lung", out, region

    # fat pad at the left cardiophrenic angle: the anterior-medial quarter of the lowest 12 mm
    n = max(2, int(round(12.0 / sp[0])))
    region = np.zeros_like(left)
    for z in zl[:n]:
        rows, cols = np.nonzero(left[z])
        region[z] = left[z] & (np.arange(ct.shape[1])[:, None] < np.median(rows)) & \
            (np.arange(ct.shape[2])[None, :] < np.median(cols))
    out = ct.copy()
    out[region] = (-100 + _noise(rng, int(region.sum()), 15)).astype(ct.dtype)
    yield "fat pad at the cardiophrenic angle", "not lung", out, region

    # subphrenic gas under the left lung's base, behind a 4 mm wall
    z0 = int(zl[0])
    rows, cols = np.nonzero(left[z0])
    centre = (z0 - 10.0 / sp[0], np.median(rows), np.median(cols))
    away = ndimage.distance_transform_edt(~lungs, sampling=sp) > 4.0
    region = (_dist_mm(ct.shape, sp, centre) <= 30.0) & away & (ct > -200) & (ct < 200)
    out = ct.copy()
    out[region] = -1000
    yield "subphrenic gas (4 mm wall)", "not lung", out, region


def score(case: Case, labels: np.ndarray, expected: np.ndarray, base_volume: float, kind: str,
          region: np.ndarray) -> Dict:
    valid = ~case.excluded[:, None, None]
    row = {f"dice_{side}": round(dice((labels == v) & valid, (expected == v) & valid), 4)
           for v, side in ((1, "right"), (2, "left"))}
    volume = float((labels > 0).sum() * case.voxel_ml)
    row["volume_change_pct"] = round(100 * (volume - base_volume) / base_volume, 2)
    if kind == "lung":
        row["region_kept_as_lung"] = round(float((labels[region] > 0).mean()), 3) if region.any() else None
    else:
        row["region_labelled_lung_ml"] = round(float((labels[region] > 0).sum() * case.voxel_ml), 1)
    row["region_ml"] = round(float(region.sum() * case.voxel_ml), 1)
    return row


def run(model_path=None, only: str = "", fold_models=None, cases: str = "") -> List[Dict]:
    """``fold_models``: score each case with its leave-one-patient-out fold (``RUNS/lopo-<case>``)."""
    from accuracy import model_for

    model = None if fold_models else load_model(model_path or bundled_model_path())
    rows = []
    for name in [c for c in cases.split(",") if c] or case_names():
        case = load_case(name)
        if fold_models:
            model = load_model(model_for(name, None, fold_models))
        rng = np.random.default_rng(0)
        base = labels_from_probabilities(*network_probabilities(case, model))
        base_volume = {}
        for variant, options in VARIANTS.items():
            labels = postprocess(base.copy(), options, ct=case.ct, spacing=case.spacing)
            base_volume[variant] = float((labels > 0).sum() * case.voxel_ml)
        for paint, kind, ct, region in paints(case, rng):
            if only and not any(word in paint for word in only.split(",")):
                continue
            expected = case.truth.copy()
            if kind == "not lung":
                expected[region] = 0
            raw = labels_from_probabilities(*probabilities(ct, case.spacing, model))
            for variant, options in VARIANTS.items():
                labels = postprocess(raw.copy(), options, ct=ct, spacing=case.spacing)
                row = dict(case=name, change=paint, expected=kind, variant=variant,
                           **score(case, labels, expected, base_volume[variant], kind, region))
                rows.append(row)
                print(row, flush=True)
    return rows


def table(rows: List[Dict]) -> str:
    out = ["| case | change | expected | post-processing | Dice R / L | volume change | painted region |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        region = (f"{100 * r['region_kept_as_lung']:.0f} % kept as lung" if r["expected"] == "lung"
                  else f"{r['region_labelled_lung_ml']} of {r['region_ml']} mL labelled lung")
        out.append(f"| {r['case']} | {r['change']} | {r['expected']} | {r['variant']} | {r['dice_right']:.3f} / "
                   f"{r['dice_left']:.3f} | {r['volume_change_pct']:+.1f} % | {region} |")
    return "\n".join(out)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--model", help="model file (default: the bundled model)")
    which.add_argument("--fold-models", metavar="RUNS",
                       help="score each case with RUNS/lopo-<case>/best.weights.npz (leave-one-patient-out)")
    parser.add_argument("--only", default="", help="comma-separated words: only the changes whose name has one")
    parser.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    parser.add_argument("--name", default="robustness", help="output stem in benchmarks/results")
    args = parser.parse_args()
    rows = run(args.model, args.only, args.fold_models, args.cases)
    out = Path(__file__).resolve().parent / "results" / args.name
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    command = "python benchmarks/robustness.py" + "".join(
        f" --{k} {v}" for k, v in (("model", args.model), ("fold-models", args.fold_models), ("only", args.only),
                                   ("cases", args.cases), ("name", args.name)) if v and v != "robustness")
    if args.fold_models:
        what = "each case scored by the leave-one-patient-out fold model that never saw it"
    else:
        what = f"{args.model or 'bundled model'}, the shared cases = its training cases"
    out.with_suffix(".md").write_text(
        f"# Robustness: painted disease and lookalikes ({what})\n\n"
        f"`{command}`; what each change is and what is expected: the script's docstring.\n\n"
        + table(rows) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
