"""Where the leave-one-patient-out folds go wrong (issue 11): each shared case is segmented by the fold
model that never saw it (``benchmarks/train_bundled.sh lopo``), with the default pipeline in float32, and its
errors against the reference label are broken down per lung:

* missed (reference lung the labels leave out) and added (labelled lung outside the reference), mL;
* by density: aerated (< −500 HU), intermediate (−500..−100 HU) and dense (≥ −100 HU: consolidation,
  collapse, tumour, or soft tissue);
* by depth: within :data:`RIM_MM` of the reference's surface (3-D, mm; the partial-volume rim, where the
  convention and a radiotherapy contour differ by design) or deeper;
* the largest missed regions deeper than the rim (26-connected): volume, slices, median HU and where they lie in the lung
  (lower / middle / upper third of its slices, anterior / posterior and medial / lateral half of its
  in-plane extent on the canonical grid);
* the Dice with the test-time flip (``LungSegmenter(flip=True)``: the mirrored pass averaged in), as a check
  of whether that pass helps.

    python benchmarks/error_breakdown.py --fold-models RUNS --out benchmarks/results/lopo_position/error_breakdown

``RUNS/lopo-<case>/best.keras`` is each fold's model. Suspect reference slices named in a case's
``info.json`` are left out of that lung, as ``lungseg evaluate`` does. Writes ``OUT.md`` and ``OUT.json``;
no images (the LUNG1 CTs are non-commercial data).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy_common import DATA_DIR, case_names  # noqa: E402

from LungSegLib import LungSegmenter  # noqa: E402
from LungSegLib.core.geometry import Geometry, canonical_orientation  # noqa: E402
from LungSegLib.labels import LUNG_LABELS  # noqa: E402

#: Errors closer than this to the reference's surface (mm, 3-D) count as boundary (rim) errors.
RIM_MM = 2.0
#: Density classes (HU): aerated below the first, dense at or above the second.
AERATED_HU, DENSE_HU = -500.0, -100.0
#: How many of the largest missed regions are described per lung.
TOP_REGIONS = 3


def _dice(pred: np.ndarray, ref: np.ndarray) -> float:
    total = int(pred.sum() + ref.sum())
    return 2.0 * float((pred & ref).sum()) / total if total else float("nan")


def _by_density(errors: np.ndarray, ct: np.ndarray, voxel_ml: float) -> Dict[str, float]:
    hu = ct[errors]
    return {"aerated_ml": round(float((hu < AERATED_HU).sum()) * voxel_ml, 1),
            "intermediate_ml": round(float(((hu >= AERATED_HU) & (hu < DENSE_HU)).sum()) * voxel_ml, 1),
            "dense_ml": round(float((hu >= DENSE_HU).sum()) * voxel_ml, 1)}


def _where(region: np.ndarray, lung: np.ndarray, side: int) -> str:
    """Where ``region`` lies within ``lung`` (canonical: slices inferior -> superior, rows -> posterior,
    columns -> patient left; ``side`` is the lung's label value)."""
    z, r, c = (float(v.mean()) for v in np.nonzero(region))
    lz, lr, lc = np.nonzero(lung)
    third = ("lower", "middle", "upper")[min(2, int(3 * (z - lz.min()) / max(1, lz.max() - lz.min() + 1)))]
    ap = "posterior" if r > (lr.min() + lr.max()) / 2 else "anterior"
    towards_left = c > (lc.min() + lc.max()) / 2
    medial = towards_left if side == LUNG_LABELS[0].value else not towards_left  # right lung: medial is to its left
    return f"{third} third, {ap}, {'medial' if medial else 'lateral'}"


def breakdown(case: str, model_path: Path) -> Dict[str, object]:
    folder = DATA_DIR / "cases" / case
    image = sitk.ReadImage(str(folder / "ct.nrrd"))
    geometry = Geometry.from_sitk(image)
    orient = canonical_orientation(geometry)
    ct = orient.to_canonical(sitk.GetArrayFromImage(image).astype(np.float32))
    ref = orient.to_canonical(sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "label.nrrd"))))
    spacing = tuple(float(s) for s in orient.spacing_zyx)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    excluded: Dict[int, List[int]] = {}
    info = folder / "info.json"
    if info.is_file():
        for value, k in json.loads(info.read_text()).get("suspect_slices_label_z", []):
            excluded.setdefault(int(value), []).append(ct.shape[0] - 1 - int(k) if orient.flips[0] else int(k))
    labels = {}
    for flip in (False, True):
        segmenter = LungSegmenter(model_path, compute_dtype="float32", flip=flip)
        labels[flip] = orient.to_canonical(sitk.GetArrayFromImage(segmenter.segment(image)))
    out: Dict[str, object] = {"case": case, "model": str(model_path), "lungs": []}
    for label in LUNG_LABELS:
        keep = np.ones(ct.shape[0], bool)
        keep[excluded.get(label.value, [])] = False
        r = (ref == label.value) & keep[:, None, None]
        p = (labels[False] == label.value) & keep[:, None, None]
        pf = (labels[True] == label.value) & keep[:, None, None]
        missed, added = r & ~p, p & ~r
        depth_in = ndimage.distance_transform_edt(r, sampling=spacing)  # inside the reference: mm to its outside
        depth_out = ndimage.distance_transform_edt(~r, sampling=spacing)
        # regions of the deeper misses: the rim would join every miss of a lung into one region
        comp, count = ndimage.label(missed & (depth_in > RIM_MM), structure=np.ones((3, 3, 3), bool))
        sizes = np.bincount(comp.ravel(), minlength=count + 1)[1:]
        regions = []
        for i in np.argsort(sizes)[::-1][:TOP_REGIONS]:
            region = comp == i + 1
            zs = np.flatnonzero(region.any(axis=(1, 2)))
            regions.append({"ml": round(float(sizes[i]) * voxel_ml, 1),
                            "slices": [int(zs[0]), int(zs[-1])],
                            "median_hu": round(float(np.median(ct[region])), 0),
                            "where": _where(region, r, label.value)})
        out["lungs"].append({
            "lung": label.key, "dice": round(_dice(p, r), 4), "dice_flip": round(_dice(pf, r), 4),
            "reference_ml": round(float(r.sum()) * voxel_ml, 1), "predicted_ml": round(float(p.sum()) * voxel_ml, 1),
            "missed_ml": round(float(missed.sum()) * voxel_ml, 1), "added_ml": round(float(added.sum()) * voxel_ml, 1),
            "missed_rim_ml": round(float((missed & (depth_in <= RIM_MM)).sum()) * voxel_ml, 1),
            "added_rim_ml": round(float((added & (depth_out <= RIM_MM)).sum()) * voxel_ml, 1),
            "missed_by_density": _by_density(missed, ct, voxel_ml),
            "added_by_density": _by_density(added, ct, voxel_ml),
            "largest_missed": regions})
    return out


def to_markdown(rows: List[Dict[str, object]], command: str) -> str:
    lines = ["# Where the leave-one-patient-out folds go wrong (issue 11)", "",
             f"`{command}` (each case segmented by the fold model that never saw it; the script's docstring says "
             "what each column is)", "",
             "| case | lung | Dice (with flip) | reference / predicted mL | missed mL (rim / deeper) | missed by density: "
             "aerated / intermediate / dense mL | added mL (rim / deeper) | added by density mL |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        for lung in row["lungs"]:
            m, a = lung["missed_by_density"], lung["added_by_density"]
            lines.append(
                f"| {row['case']} | {lung['lung']} | {lung['dice']:.4f} ({lung['dice_flip']:.4f}) | "
                f"{lung['reference_ml']:.0f} / {lung['predicted_ml']:.0f} | {lung['missed_ml']:.0f} "
                f"({lung['missed_rim_ml']:.0f} / {lung['missed_ml'] - lung['missed_rim_ml']:.0f}) | "
                f"{m['aerated_ml']:.0f} / {m['intermediate_ml']:.0f} / {m['dense_ml']:.0f} | {lung['added_ml']:.0f} "
                f"({lung['added_rim_ml']:.0f} / {lung['added_ml'] - lung['added_rim_ml']:.0f}) | "
                f"{a['aerated_ml']:.0f} / {a['intermediate_ml']:.0f} / {a['dense_ml']:.0f} |")
    lines += ["", "## Largest missed regions (deeper than the rim)", "",
              "| case | lung | mL | canonical slices (inferior → superior) | median HU | where in the lung |",
              "|---|---|---|---|---|---|"]
    for row in rows:
        for lung in row["lungs"]:
            for reg in lung["largest_missed"]:
                lines.append(f"| {row['case']} | {lung['lung']} | {reg['ml']:.1f} | {reg['slices'][0]}–{reg['slices'][1]} | "
                             f"{reg['median_hu']:.0f} | {reg['where']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fold-models", type=Path, required=True, help="RUNS: holds lopo-<case>/best.keras")
    parser.add_argument("--cases", nargs="*", default=None, help="default: every shared case with a fold model")
    parser.add_argument("--out", type=Path, required=True, help="writes OUT.md and OUT.json")
    args = parser.parse_args()
    cases = args.cases or [c for c in case_names() if (args.fold_models / f"lopo-{c}" / "best.keras").is_file()]
    if not cases:
        parser.error(f"no fold model under {args.fold_models} (expected lopo-<case>/best.keras)")
    rows = [breakdown(c, args.fold_models / f"lopo-{c}" / "best.keras") for c in cases]
    command = "python benchmarks/error_breakdown.py " + " ".join(sys.argv[1:])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"command": command, "rim_mm": RIM_MM, "cases": rows}, indent=1))
    args.out.with_suffix(".md").write_text(to_markdown(rows, command))
    print(to_markdown(rows, command))


if __name__ == "__main__":
    main()
