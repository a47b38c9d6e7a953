"""Accuracy of the bundled model and its post-processing on the shared cases, before/after (issue 11).

Per case and lung: Dice, HD95, ASSD (mm), volume error (%), central-airway voxels inside the lung
labels (mL; trachea + main bronchi found by :mod:`LungSegLib.core.airways` from the reference lungs,
the same mask for every variant), and fat-density (−150..−50 HU) voxels on the lung's outer boundary
(mL); and the Dice / volume error against the *convention reference*: the reference labels with the
convention's partial-volume rule applied to their surface (``boundary.remove_partial_volume_rim``).
Variants differ only after the network (its probabilities are computed once and cached, see
``accuracy_common.py``):

* ``today``: the decision rule and post-processing before issue 11 (argmax; largest components,
  sides, hole filling);
* ``+airways``: the same with the central airways removed;
* ``+airways+fat``: and thick boundary fat removed (:mod:`LungSegLib.core.boundary`);
* ``+airways+rim``: airways removed and the convention's partial-volume rule at the pleura;
* ``default``: that, an island of at least 1 % of a lung lying wholly in the upper half of its slices
  kept, dense lesions against the ribs put back and walled gas removed (today's default post-processing);
  ``default+fat``: and the boundary-fat rule;
* ``+airways t=X``: lung where P(right)+P(left) >= X instead of argmax (boundary calibration).

With the bundled model the cases are its own training cases: every number is a fit, optimistic for
new patients, and a threshold chosen on them is tuned on them. ``--fold-models RUNS`` scores each case
with the leave-one-patient-out fold that never saw it (``RUNS/lopo-<case>/best.weights.npz`` from
``benchmarks/train_bundled.sh lopo``): the honest numbers. ``--model`` scores another model file.

    python benchmarks/accuracy.py [--thresholds 0.5,0.6,0.7] [--out benchmarks/results/accuracy_before_after]
    python benchmarks/accuracy.py --fold-models /tmp/lungseg_runs --defaults-only --thresholds "" \
        --out benchmarks/results/lopo/accuracy
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy_common import Case, case_names, labels_from_probabilities, load_case, network_probabilities  # noqa: E402

from LungSegLib.core.airways import find_central_airways  # noqa: E402
from LungSegLib.core.boundary import remove_partial_volume_rim  # noqa: E402
from LungSegLib.core.postprocess import PostprocessOptions, postprocess  # noqa: E402
from LungSegLib.evaluation.metrics import dice, hd95_and_assd  # noqa: E402

FAT_HU = (-150, -50)
LUNGS = ((1, "right"), (2, "left"))


def outer_boundary(lung: np.ndarray) -> np.ndarray:
    """Lung voxels with a 6-neighbour that is not lung (either lung counts as lung)."""
    return lung & ~ndimage.binary_erosion(lung, structure=ndimage.generate_binary_structure(3, 1))


def measure(case: Case, labels: np.ndarray, airway: np.ndarray, convention: np.ndarray) -> List[Dict]:
    rows = []
    valid = ~case.excluded[:, None, None]
    boundary = outer_boundary(labels > 0)
    fat = (case.ct >= FAT_HU[0]) & (case.ct <= FAT_HU[1])
    for value, name in LUNGS:
        p, t = (labels == value) & valid, (case.truth == value) & valid
        tc = (convention == value) & valid
        vc = tc.sum() * case.voxel_ml
        hd, asd = hd95_and_assd(p, t, case.spacing)
        vp, vt = p.sum() * case.voxel_ml, t.sum() * case.voxel_ml
        rows.append({"case": case.name, "lung": name, "dice": round(dice(p, t), 4), "hd95_mm": round(hd, 1),
                     "assd_mm": round(asd, 2), "volume_ml": round(vp, 1), "truth_ml": round(vt, 1),
                     "volume_error_pct": round(100 * (vp - vt) / vt, 2),
                     "dice_convention": round(dice(p, tc), 4),
                     "volume_error_convention_pct": round(100 * (vp - vc) / vc, 2),
                     "airway_in_lung_ml": round(float((airway & p).sum() * case.voxel_ml), 2),
                     "boundary_fat_ml": round(float((boundary & fat & p).sum() * case.voxel_ml), 2)})
    return rows


def variants(thresholds: List[float], defaults_only: bool = False):
    off = dict(remove_airways=False, remove_boundary_fat=False, boundary_midpoint=False, upper_island_fraction=0.0,
               remove_walled_gas=False)
    yield "today", None, PostprocessOptions(**off)
    if not defaults_only:
        yield "+airways", None, PostprocessOptions(**dict(off, remove_airways=True))
        yield "+airways+fat", None, PostprocessOptions(**dict(off, remove_airways=True, remove_boundary_fat=True))
        yield "+airways+rim", None, PostprocessOptions(**dict(off, remove_airways=True, boundary_midpoint=True))
    yield "default", None, PostprocessOptions()
    yield "default+fat", None, PostprocessOptions(remove_boundary_fat=True)
    for t in thresholds:
        yield f"+airways t={t:g}", t, PostprocessOptions(**dict(off, remove_airways=True))


def model_for(case: str, model: Optional[str], fold_models: Optional[str]) -> Optional[Path]:
    """The model file that scores ``case``: its LOPO fold's, the given one, or None (bundled)."""
    if fold_models:
        path = Path(fold_models) / f"lopo-{case}" / "best.weights.npz"
        if not path.is_file():
            raise SystemExit(f"{path} is missing: run benchmarks/train_bundled.sh lopo {case} first.")
        return path
    return Path(model) if model else None


def run(thresholds: List[float], cases: Optional[List[str]] = None, model: Optional[str] = None,
        fold_models: Optional[str] = None, defaults_only: bool = False) -> List[Dict]:
    rows = []
    for name in cases or case_names():
        case = load_case(name)
        right, left = network_probabilities(case, model_path=model_for(name, model, fold_models))
        airway = find_central_airways(case.ct, case.truth, case.spacing).mask
        # the reference with the convention's partial-volume rule applied at its surface
        convention = case.truth.copy()
        remove_partial_volume_rim(convention, case.ct, case.spacing)
        for variant, threshold, options in variants(thresholds, defaults_only):
            labels = labels_from_probabilities(right, left, threshold)
            t0 = time.perf_counter()
            postprocess(labels, options, ct=case.ct, spacing=case.spacing)
            seconds = time.perf_counter() - t0
            for row in measure(case, labels, airway, convention):
                rows.append(dict(row, variant=variant, postprocess_s=round(seconds, 2)))
                print(rows[-1], flush=True)
    return rows


def summary_table(rows: List[Dict]) -> str:
    names = list(dict.fromkeys(r["variant"] for r in rows))
    out = ["| variant | mean Dice R / L | min Dice | mean HD95 R / L (mm) | mean ASSD (mm) | volume error R / L (%) | "
           "airway in lungs (mL, sum) | boundary fat (mL, sum) | vs convention reference: Dice R / L, "
           "volume error R / L (%) | post-processing (s, mean) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for v in names:
        sel = [r for r in rows if r["variant"] == v]
        by = {s: [r for r in sel if r["lung"] == s] for s in ("right", "left")}
        m = lambda side, k: float(np.mean([r[k] for r in by[side]]))  # noqa: E731
        out.append(f"| {v} | {m('right', 'dice'):.4f} / {m('left', 'dice'):.4f} | {min(r['dice'] for r in sel):.4f} | "
                   f"{m('right', 'hd95_mm'):.1f} / {m('left', 'hd95_mm'):.1f} | {np.mean([r['assd_mm'] for r in sel]):.2f} | "
                   f"{m('right', 'volume_error_pct'):+.2f} / {m('left', 'volume_error_pct'):+.2f} | "
                   f"{sum(r['airway_in_lung_ml'] for r in sel):.2f} | {sum(r['boundary_fat_ml'] for r in sel):.2f} | "
                   f"{m('right', 'dice_convention'):.4f} / {m('left', 'dice_convention'):.4f}, "
                   f"{m('right', 'volume_error_convention_pct'):+.2f} / {m('left', 'volume_error_convention_pct'):+.2f} | "
                   f"{np.mean([r['postprocess_s'] for r in sel]):.2f} |")
    return "\n".join(out)


def case_table(rows: List[Dict]) -> str:
    out = ["| variant | case | lung | Dice | HD95 (mm) | ASSD (mm) | volume (mL) | reference (mL) | error (%) | "
           "airway in lung (mL) | boundary fat (mL) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['variant']} | {r['case']} | {r['lung']} | {r['dice']:.4f} | {r['hd95_mm']} | {r['assd_mm']} | "
                   f"{r['volume_ml']} | {r['truth_ml']} | {r['volume_error_pct']:+.2f} | {r['airway_in_lung_ml']} | "
                   f"{r['boundary_fat_ml']} |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--thresholds", default="0.5,0.6,0.7")
    parser.add_argument("--cases", default="")
    parser.add_argument("--out", default="benchmarks/results/accuracy_before_after")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--model", help="score this model file (.npz/.keras + card) instead of the bundled one")
    which.add_argument("--fold-models", metavar="RUNS",
                       help="score each case with RUNS/lopo-<case>/best.weights.npz (leave-one-patient-out)")
    parser.add_argument("--defaults-only", action="store_true",
                        help="only the old post-processing and today's default")
    args = parser.parse_args()
    thresholds = [float(t) for t in args.thresholds.split(",") if t]
    rows = run(thresholds, [c for c in args.cases.split(",") if c] or None, args.model, args.fold_models,
               args.defaults_only)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    if args.fold_models:
        what = ("each case scored by the leave-one-patient-out fold model that never saw it "
                "(`benchmarks/train_bundled.sh lopo`)")
    else:
        what = (f"model {Path(args.model).name}" if args.model else "bundled model") + \
            ", shared cases = its training cases: a fit, not generalisation"
    command = " ".join(["python benchmarks/accuracy.py"] + [a if a and " " not in a else repr(a) for a in sys.argv[1:]])
    text = (f"# Accuracy before/after (issue 11)\n\n`{command}` ({what})\n\n"
            + summary_table(rows) + "\n\n## Per case\n\n" + case_table(rows) + "\n")
    out.with_suffix(".md").write_text(text)
    print(summary_table(rows))


if __name__ == "__main__":
    main()
