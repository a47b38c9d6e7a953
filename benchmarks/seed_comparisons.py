"""Reproduce the seed project's two loss comparisons on one patient-wise split.

1. binary lung model: binary cross-entropy vs Dice loss;
2. 3-class model (background / right / left): categorical cross-entropy vs Dice loss.

Each model is trained with ``lungseg train`` (same recipe, seed and number of steps; the last epoch is kept,
so the held-out patient chooses nothing), then run on the held-out patient's whole CT without
post-processing (the network's own output), and scored per class with Dice and accuracy on that CT's
voxel grid. Accuracy is reported because the seed did, and to show why it misleads: background is ~95 %
of the voxels, so every model scores > 0.99.

    python benchmarks/seed_comparisons.py [--val LUNG1-002] [--epochs 6] [--runs /tmp/lungseg_seed]

Writes benchmarks/results/seed_comparisons.{csv,json,md}.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from LungSegLib.evaluation.metrics import dice  # noqa: E402  (the library's Dice: both empty -> 1.0)

CONFIGS = [
    ("binary", "bce", ["--classes", "1", "--loss", "bce"]),
    ("binary", "dice", ["--classes", "1", "--loss", "dice"]),
    ("3-class", "ce", ["--classes", "3", "--loss", "ce"]),
    ("3-class", "dice", ["--classes", "3", "--loss", "dice"]),
]


def per_class_scores(pred: np.ndarray, truth: np.ndarray, classes) -> dict:
    """Dice and accuracy ((TP + TN) / all voxels) of each class value in ``classes``."""
    scores = {}
    for name, value in classes:
        p, t = pred == value, truth == value
        scores[f"dice_{name}"] = dice(p, t)
        scores[f"accuracy_{name}"] = float(np.mean(p == t))
    return scores


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("LUNGSEG_DATA_DIR", str(REPO.parent / "shared" / "data")))
    parser.add_argument("--val", default="LUNG1-002", help="held-out patient")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--steps-per-epoch", type=int, default=50)
    parser.add_argument("--runs", default="/tmp/lungseg_seed")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args()

    import SimpleITK as sitk

    from LungSegLib.api import LungSegmenter

    cases = Path(args.data) / "cases"
    truth_image = sitk.ReadImage(str(cases / args.val / "label.nrrd"))
    truth = sitk.GetArrayFromImage(truth_image)
    ct = sitk.ReadImage(str(cases / args.val / "ct.nrrd"))
    rows = []
    for kind, loss, options in CONFIGS:
        run = Path(args.runs) / f"{kind}-{loss}"
        cmd = [sys.executable, "-m", "LungSegLib", "train", str(cases), "--out", str(run), "--val", args.val,
               "--base-filters", "8", "--depth", "4", "--batch-size", "8", "--steps-per-epoch",
               str(args.steps_per_epoch), "--epochs", str(args.epochs), "--patience", "0", "--select", "last",
               "--seed", "0", "--cache-dir", str(Path(args.runs) / "cache"), "--quiet"] + options
        if not (run / "best.keras").exists():
            print("+", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        segmenter = LungSegmenter(run / "best.keras", postprocess=False)
        pred = sitk.GetArrayFromImage(segmenter.segment(ct))
        if kind == "binary":
            scores = per_class_scores((pred > 0).astype(np.uint8), (truth > 0).astype(np.uint8),
                                      [("background", 0), ("lung", 1)])
        else:
            scores = per_class_scores(pred, truth, [("background", 0), ("right", 1), ("left", 2)])
        log = list(csv.DictReader(open(run / "log.csv")))
        row = {"model": kind, "loss": loss, "val_case": args.val,
               "train_steps": len(log) * args.steps_per_epoch,
               "train_minutes": round(float(log[-1]["minutes"]), 1)}
        row.update({k: round(v, 4) for k, v in scores.items()})
        rows.append(row)
        print(row, flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fields = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    with open(out / "seed_comparisons.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    (out / "seed_comparisons.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = [f"# Seed comparisons (held-out patient {args.val}, raw network output, no post-processing)", "",
             "| model | loss | Dice per class | accuracy per class | training |", "|---|---|---|---|---|"]
    for r in rows:
        names = [k[5:] for k in r if k.startswith("dice_")]
        dice = " / ".join(f"{r['dice_' + n]:.4f}" for n in names)
        acc = " / ".join(f"{r['accuracy_' + n]:.4f}" for n in names)
        lines.append(f"| {r['model']} | {r['loss']} | {dice} ({' / '.join(names)}) | {acc} | "
                     f"{r['train_steps']} steps, {r['train_minutes']} min |")
    (out / "seed_comparisons.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
