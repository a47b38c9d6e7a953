#!/usr/bin/env bash
# How the bundled model (Resources/Models/lungseg_unet_3class.npz) and its leave-one-patient-out
# (LOPO) check were trained and measured: CPU only (2 shared cores), TensorFlow 2.21.
#
#   benchmarks/train_bundled.sh final     # all cases -> $RUNS/bundled (64 x 50 steps, 52 min cap)
#   benchmarks/train_bundled.sh install   # $RUNS/bundled/best.weights.npz -> Resources/Models + card
#   benchmarks/train_bundled.sh lopo      # one shorter fold per case (last epoch kept), scored on the left-out case
#   benchmarks/train_bundled.sh lopo-summary   # benchmarks/results/lopo/summary.{csv,json}
#
# LUNGSEG_DATA_DIR defaults to ../shared/data (next to the repository clone); RUNS to /tmp/lungseg_runs.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${LUNGSEG_DATA_DIR:-../shared/data}/cases"
RUNS="${RUNS:-/tmp/lungseg_runs}"
LUNGSEG="${LUNGSEG:-lungseg}"
PYTHON="${PYTHON:-python}"
RECIPE=(--classes 3 --loss ce_dice --base-filters 8 --depth 4 --batch-size 8 --steps-per-epoch 50 --seed 0
        --cache-dir "$RUNS/cache" --quiet)
export TF_CPP_MIN_LOG_LEVEL=2

case "${1:-final}" in
  final)
    # All cases, no validation: the cosine schedule is planned over 64 x 50 steps, capped at 52 minutes.
    $LUNGSEG train "$DATA" --out "$RUNS/bundled" "${RECIPE[@]}" --epochs 64 --patience 0 --max-minutes 52
    ;;
  install)
    # The run's exported weights (best.weights.npz: named arrays, loadable by every supported Keras) become
    # the bundled model; its card gets the data licences (see the data README).
    cp "$RUNS/bundled/best.weights.npz" Resources/Models/lungseg_unet_3class.npz
    $PYTHON - "$RUNS/bundled/best.weights.json" <<'PY'
import json, sys
from LungSegLib.core.model import BUNDLED_MODEL, models_dir, write_card
card = json.load(open(sys.argv[1]))
card["name"] = "lungseg_unet_3class"
card["data"]["cases_dir"] = "shared/data/cases (3 clinical chest CTs with radiotherapy lung contours)"
card["data"]["sources"] = {
    "LUNG1-001, LUNG1-002": "NSCLC-Radiomics (TCIA), CC BY-NC 3.0; Aerts et al., Nat Commun 5:4006 (2014), "
                            "doi:10.7937/K9/TCIA.2015.PF0M9REI",
    "ACRIN-FLT-Breast-001": "ACRIN-FLT-Breast (ACRIN 6688, TCIA), CT CC BY 3.0, "
                            "doi:10.7937/K9/TCIA.2017.ol20zmxg; lung labels from a public tutorial repository"}
card["licence_note"] = ("Trained on non-commercial data (NSCLC-Radiomics, CC BY-NC 3.0): the weights are "
                        "for research / non-commercial use. See MODEL_CARD.md.")
card["model_card"] = "MODEL_CARD.md"
write_card(models_dir() / BUNDLED_MODEL, card)
PY
    ;;
  lopo)
    mkdir -p benchmarks/results/lopo
    for dir in "$DATA"/*/; do
      case_id="$(basename "$dir")"
      $LUNGSEG train "$DATA" --out "$RUNS/lopo-$case_id" --val "$case_id" "${RECIPE[@]}" \
        --epochs 7 --patience 0 --max-minutes 9 --select last
      cp "$RUNS/lopo-$case_id/log.csv" "benchmarks/results/lopo/$case_id.log.csv"
      # full inference pipeline (post-processing on) on the left-out case's own grid
      $LUNGSEG evaluate "$RUNS/lopo-$case_id/best.keras" "$DATA" --cases "$case_id" \
        --out "benchmarks/results/lopo/$case_id" --overwrite --quiet
    done
    ;;
  lopo-summary)
    # One table over the folds: the left-out case's Dice etc. and how long its fold trained.
    $PYTHON - "$RUNS" <<'PY'
import csv, json, sys
from pathlib import Path
runs, out = Path(sys.argv[1]), Path("benchmarks/results/lopo")
rows = []
for fold in sorted(runs.glob("lopo-*")):
    case = fold.name[len("lopo-"):]
    log = list(csv.DictReader(open(fold / "log.csv")))
    cfg = json.load(open(fold / "config.json"))["config"]
    for r in csv.DictReader(open(out / case / "evaluation.csv")):
        rows.append({"left_out_case": case, "lung": r["lung"], "dice": round(float(r["dice"]), 4),
                     "hd95_mm": round(float(r["hd95_mm"]), 1), "assd_mm": round(float(r["assd_mm"]), 2),
                     "volume_error_pct": round(float(r["volume_error_pct"]), 1),
                     "train_epochs": len(log), "train_steps": len(log) * cfg["steps_per_epoch"],
                     "batch_size": cfg["batch_size"], "train_minutes": round(float(log[-1]["minutes"]), 1),
                     "model": "last epoch"})
with open(out / "summary.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
json.dump(rows, open(out / "summary.json", "w"), indent=1)
for r in rows:
    print(r)
PY
    ;;
  *) echo "usage: $0 final|install|lopo|lopo-summary" >&2; exit 2 ;;
esac
