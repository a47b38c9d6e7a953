"""Fine-tuning a model on local cases (``lungseg train --init``): how long, what changed.

1. fine-tune on the ``--train`` cases (default: all shared cases but the left-out one; the command is
   printed and run unless ``--run`` names a finished run directory):

       lungseg train CASES --out RUN --split SPLIT --init bundled --lr 2e-4 --epochs 8 \\
           --steps-per-epoch 50 --patience 0 --max-minutes 5 --select last --seed 0

   (``--select last``: the left-out case is reported, never used to choose an epoch);
2. segment the left-out case with the starting and the fine-tuned model (same default post-processing)
   and compare Dice, HD95 and volume error per lung against its reference labels.

With the bundled model as the start (the default), the left-out case was among its training cases:
that shows the mechanism and its cost, **not** what fine-tuning gains on a new site. ``--init MODEL``
starts from another model instead, e.g. one trained on ACRIN-FLT-Breast-001 alone (another source than
the two NSCLC-Radiomics cases), fine-tuned on LUNG1-001 and scored on LUNG1-002: a site adapting a
model that never saw its scanner to one of its own cases, scored on another of them.

    python benchmarks/finetune_demo.py [--run RUN_DIR] [--left-out LUNG1-002]
    python benchmarks/finetune_demo.py --init RUNS/acrin_only/best.weights.npz --train LUNG1-001 --name finetune_site
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy_common import DATA_DIR, bundled_model_path, labels_from_probabilities, load_case, probabilities  # noqa: E402

from LungSegLib.core.model import load_model  # noqa: E402
from LungSegLib.core.postprocess import postprocess  # noqa: E402
from LungSegLib.evaluation.metrics import dice, hd95_and_assd  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a finished fine-tuning run directory (else one is trained)")
    parser.add_argument("--left-out", default="LUNG1-002")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--init", default="bundled", help="the model to start from (default: bundled)")
    parser.add_argument("--train", default="", help="comma-separated cases to fine-tune on (default: all but "
                                                    "the left-out one)")
    parser.add_argument("--name", default="finetune_demo", help="output stem in benchmarks/results")
    args = parser.parse_args()
    run = Path(args.run) if args.run else Path(f"/tmp/lungseg_finetune_{int(time.time())}")
    if not args.run:
        cases = sorted(p.name for p in (DATA_DIR / "cases").iterdir() if p.is_dir())
        train = [c for c in args.train.split(",") if c] or [c for c in cases if c != args.left_out]
        run.mkdir(parents=True)
        split = run.parent / f"{run.name}.split.json"
        split.write_text(json.dumps({"train": train, "val": [args.left_out]}))
        cmd = ["lungseg", "train", str(DATA_DIR / "cases"), "--out", str(run), "--split", str(split), "--init",
               args.init, "--lr", "2e-4", "--epochs", "8", "--steps-per-epoch", "50", "--patience", "0",
               "--max-minutes", str(args.minutes), "--select", "last", "--seed", "0", "--quiet"]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    log = list(csv.DictReader(open(run / "log.csv")))
    config = json.loads((run / "config.json").read_text())
    case = load_case(args.left_out)
    rows = []
    start = bundled_model_path() if config["config"].get("init", "bundled") == "bundled" else Path(config["config"]["init"])
    start_name = "bundled" if start == bundled_model_path() else "start"
    for name, path in ((start_name, start), ("fine-tuned", run / "best.keras")):
        model = load_model(path)
        labels = labels_from_probabilities(*probabilities(case.ct, case.spacing, model))
        postprocess(labels, ct=case.ct, spacing=case.spacing)
        for value, side in ((1, "right"), (2, "left")):
            p, t = labels == value, case.truth == value
            hd, _ = hd95_and_assd(p, t, case.spacing)
            vp, vt = p.sum() * case.voxel_ml, t.sum() * case.voxel_ml
            rows.append({"model": name, "lung": side, "dice": round(dice(p, t), 4), "hd95_mm": round(hd, 1),
                         "volume_error_pct": round(100 * (vp - vt) / vt, 2)})
            print(rows[-1], flush=True)
    cfg = config["config"]
    steps = len(log) * cfg["steps_per_epoch"]
    lines = [f"# Fine-tuning (`lungseg train --init {cfg.get('init') or 'bundled'}`)", "",
             f"`python benchmarks/finetune_demo.py {' '.join(sys.argv[1:])}`", "",
             f"Started from {'the bundled model' if start_name == 'bundled' else '`' + str(start) + '`'}; "
             f"fine-tuned on {', '.join(config['split']['train'])}; left out: {args.left_out}. "
             f"{len(log)} epoch(s) x {cfg['steps_per_epoch']} steps of {cfg['batch_size']} slices = {steps} steps, "
             f"learning rate {cfg['learning_rate']:g} (cosine), **{float(log[-1]['minutes']):.1f} minutes** on this "
             "machine's 2 shared CPU cores (other jobs running). Model-grid validation Dice of the left-out case after "
             "each epoch: " + ", ".join(f"{float(r['val_dice_right']):.4f} / {float(r['val_dice_left']):.4f}" for r in log)
             + " (right / left).", "",
             "Left-out case through the full pipeline (default post-processing), against its reference labels:", "",
             "| model | lung | Dice | HD95 (mm) | volume error |", "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['lung']} | {r['dice']:.4f} | {r['hd95_mm']} | {r['volume_error_pct']:+.2f} % |" for r in rows]
    if start_name == "bundled":
        lines += ["", "The bundled model already saw all three cases (the left-out one included): this demonstrates "
                  "the mechanism and its cost, not what fine-tuning gains on a new site.", ""]
    out = Path(__file__).resolve().parent / "results" / f"{args.name}.md"
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
