"""Do the shared cases' reference labels follow the LungSeg label convention? (issue 11)

The convention (``Resources/Models/MODEL_CARD.md``, "Label convention"): lung = aerated and dense
parenchyma inside the pleura; not lung = trachea and main bronchi, hilar structures outside the lung,
pleural effusion, chest wall, diaphragm, fat, abdominal gas; at the pleural boundary a partial-volume
voxel is lung when its HU is below the midpoint between the lung's aerated parenchyma (the median HU of
the label's interior, 3 voxels in) and soft tissue (+40 HU).

Per case and lung it measures on ``label.nrrd`` + ``ct.nrrd``:

* ``fat_pct``: share of the label's voxels at fat density (−150..−50 HU) — partial volume of vessels
  and of the boundary, or fat inside the label;
* ``dense_pct``: share above −50 HU (vessels, tumour, consolidation, atelectasis — lung if inside the
  pleura);
* ``airway_ml``: central airway (trachea + main bronchi, :mod:`LungSegLib.core.airways`) inside the label;
* the boundary: mean HU of the label's outer surface voxels (``ring_in_hu``) and of the background
  voxels touching it (``ring_out_hu``, outside air excluded), the midpoint, and the volume the
  midpoint rule would add (outside ring voxels below it) or remove (surface voxels above it), in % of
  the label: ``boundary_rule_pct`` (positive = the rule makes the lung larger).

    python benchmarks/label_convention.py   # writes benchmarks/results/label_convention.{md,json}
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy_common import case_names, load_case  # noqa: E402

from LungSegLib.core.airways import find_central_airways  # noqa: E402

SOFT_TISSUE_HU = 40.0
CROSS = ndimage.generate_binary_structure(3, 1)


def measure_case(name: str):
    case = load_case(name)
    ct, truth = case.ct, case.truth
    valid = ~case.excluded[:, None, None]
    airway = find_central_airways(ct, truth, case.spacing).mask
    lungs_any = truth > 0
    rows = []
    for value, side in ((1, "right"), (2, "left")):
        lung = (truth == value) & valid
        n = int(lung.sum())
        interior = ndimage.binary_erosion(lung, CROSS, iterations=3)
        parenchyma = float(np.median(ct[interior]))
        midpoint = (parenchyma + SOFT_TISSUE_HU) / 2
        surface = lung & ~ndimage.binary_erosion(lung, CROSS)
        ring_out = ndimage.binary_dilation(lung, CROSS) & ~lungs_any & valid & (ct > -990)  # not outside air
        added = int((ring_out & (ct < midpoint)).sum())
        removed = int((surface & (ct >= midpoint)).sum())
        hu = ct[lung]
        rows.append({
            "case": name, "lung": side, "volume_ml": round(n * case.voxel_ml, 1),
            "fat_pct": round(100 * float(((hu >= -150) & (hu <= -50)).mean()), 2),
            "dense_pct": round(100 * float((hu > -50).mean()), 2),
            "airway_ml": round(float((airway & lung).sum() * case.voxel_ml), 2),
            "parenchyma_hu": round(parenchyma), "midpoint_hu": round(midpoint),
            "ring_in_hu": round(float(ct[surface].mean())), "ring_out_hu": round(float(ct[ring_out].mean())),
            "surface_above_midpoint_pct": round(100 * removed / n, 2),
            "outside_below_midpoint_pct": round(100 * added / n, 2),
            "boundary_rule_pct": round(100 * (added - removed) / n, 2),
        })
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    rows = [r for name in case_names() for r in measure_case(name)]
    out = Path(__file__).resolve().parent / "results" / "label_convention"
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    keys = list(rows[0])
    lines = ["# Reference labels vs the label convention", "", "`python benchmarks/label_convention.py` "
             "(see its docstring for each column)", "", "| " + " | ".join(keys) + " |",
             "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
