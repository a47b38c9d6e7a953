#!/usr/bin/env bash
# How the bundled model (Resources/Models/lungseg_unet_3class.npz) and its leave-one-patient-out
# (LOPO) check were trained and measured: CPU only (2 shared cores), TensorFlow 2.21.
#
#   benchmarks/train_bundled.sh final     # all cases -> $RUNS/bundled ($EPOCHS x 50 steps)
#   benchmarks/train_bundled.sh install   # $RUNS/bundled/best.weights.npz -> Resources/Models + card
#   benchmarks/train_bundled.sh lopo [CASE...]  # one fold per case, the final recipe and its full schedule
#                                               # (model choice as in final), scored on the left-out case
#   benchmarks/train_bundled.sh lopo-summary   # $LOPO_OUT/summary.{csv,json}
#
# LUNGSEG_DATA_DIR defaults to ../shared/data (next to the repository clone); RUNS to /tmp/lungseg_runs.
# The recipe's schedule and input: EPOCHS (of 50 steps; default 16: the bundled model's schedule, trained with
# `final`; its card names the commit), CONTEXT_MM (default 0: one slice; > 0 adds the CT that far below/above
# as channels), AUGMENTATION (default bundled; extended: the later candidate), POSITION_CHANNEL (default 1;
# 0: `--no-position-channel`, the network of the models before stop 14) and SEED (default 0). Recipe
# comparisons run the folds into another LOPO_OUT (default benchmarks/results/lopo), e.g. EPOCHS=64
# LOPO_OUT=.../lopo_e64.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${LUNGSEG_DATA_DIR:-../shared/data}/cases"
RUNS="${RUNS:-/tmp/lungseg_runs}"
LUNGSEG="${LUNGSEG:-lungseg}"
PYTHON="${PYTHON:-python}"
EPOCHS="${EPOCHS:-16}"
CONTEXT_MM="${CONTEXT_MM:-0}"
AUGMENTATION="${AUGMENTATION:-bundled}"
POSITION_CHANNEL="${POSITION_CHANNEL:-1}"
SEED="${SEED:-0}"
LOPO_OUT="${LOPO_OUT:-benchmarks/results/lopo}"
RECIPE=(--classes 3 --loss ce_dice --base-filters 8 --depth 4 --batch-size 8 --steps-per-epoch 50 --seed "$SEED"
        --epochs "$EPOCHS" --context-mm "$CONTEXT_MM" --augmentation "$AUGMENTATION" --cache-dir "$RUNS/cache" --quiet)
if [ "$POSITION_CHANNEL" = 0 ]; then RECIPE+=(--no-position-channel); fi
export TF_CPP_MIN_LOG_LEVEL=2

case "${1:-final}" in
  final)
    # All cases, no validation: the cosine schedule over EPOCHS x 50 steps, run to the end (no time cap,
    # the same schedule as each LOPO fold; 16 epochs take ~12 minutes on 2 idle cores).
    # The commit whose code trains it goes into the card at install (a modified checkout is refused: the card
    # must name code anyone can check out).
    if [ -n "$(git status --porcelain -- LungSegLib)" ]; then
      echo "LungSegLib has uncommitted changes: commit them first, the card names the training commit" >&2; exit 2
    fi
    commit=$(git rev-parse HEAD)
    $LUNGSEG train "$DATA" --out "$RUNS/bundled" "${RECIPE[@]}" --patience 0 --max-minutes 0
    echo "$commit" > "$RUNS/bundled/code_commit"
    ;;
  install)
    # The run's exported weights (best.weights.npz: named arrays, loadable by every supported Keras) become
    # the bundled model; its card gets the data licences (see the data README).
    cp "$RUNS/bundled/best.weights.npz" Resources/Models/lungseg_unet_3class.npz
    $PYTHON - "$RUNS/bundled/best.weights.json" "$(cat "$RUNS/bundled/code_commit")" "$EPOCHS" <<'PY'
import json, sys
from LungSegLib.core.model import BUNDLED_MODEL, models_dir, write_card
card = json.load(open(sys.argv[1]))
commit, epochs = sys.argv[2], sys.argv[3]
card["name"] = "lungseg_unet_3class"
card["training"]["code_commit"] = commit
card["training"]["command"] = f"git checkout {commit[:7]} && EPOCHS={epochs} benchmarks/train_bundled.sh final"
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
    # The same EPOCHS x 50 steps as `final` and no time cap, so a busy machine cannot shorten a fold. The
    # left-out case is not in the run at all (a split file with no validation set: nothing is chosen on
    # it, and no per-epoch validation pass doubles the time); it is scored once, at the end. Folds can
    # run in separate sessions: name the cases to run, default all.
    mkdir -p "$LOPO_OUT"
    shift
    cases=("$@")
    if [ ${#cases[@]} -eq 0 ]; then
      for dir in "$DATA"/*/; do cases+=("$(basename "$dir")"); done
    fi
    for case_id in "${cases[@]}"; do
      rm -rf "$RUNS/lopo-$case_id"
      mkdir -p "$RUNS"
      $PYTHON - "$DATA" "$case_id" > "$RUNS/split-$case_id.json" <<'PY'
import json, sys
from pathlib import Path
data, left_out = Path(sys.argv[1]), sys.argv[2]
train = sorted(d.name for d in data.iterdir() if d.is_dir() and d.name != left_out)
print(json.dumps({"train": train, "val": []}))
PY
      $LUNGSEG train "$DATA" --out "$RUNS/lopo-$case_id" --split "$RUNS/split-$case_id.json" "${RECIPE[@]}" \
        --patience 0 --max-minutes 0
      cp "$RUNS/lopo-$case_id/log.csv" "$LOPO_OUT/$case_id.log.csv"
      cp "$RUNS/lopo-$case_id/config.json" "$LOPO_OUT/$case_id.config.json"
      # full inference pipeline (post-processing on) on the left-out case's own grid
      $LUNGSEG evaluate "$RUNS/lopo-$case_id/best.keras" "$DATA" --cases "$case_id" \
        --out "$LOPO_OUT/$case_id" --overwrite --quiet
    done
    ;;
  lopo-summary)
    # One table over the folds (from the committed per-fold files, so folds run in different sessions
    # count): the left-out case's Dice etc. and how long its fold trained.
    $PYTHON - "$LOPO_OUT" <<'PY'
import csv, json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = []
for config_file in sorted(out.glob("*.config.json")):
    case = config_file.name[:-len(".config.json")]
    log = list(csv.DictReader(open(out / f"{case}.log.csv")))
    cfg = json.load(open(config_file))["config"]
    for r in csv.DictReader(open(out / case / "evaluation.csv")):
        rows.append({"left_out_case": case, "lung": r["lung"], "dice": round(float(r["dice"]), 4),
                     "hd95_mm": round(float(r["hd95_mm"]), 1), "assd_mm": round(float(r["assd_mm"]), 2),
                     "volume_error_pct": round(float(r["volume_error_pct"]), 1),
                     "train_epochs": len(log), "train_steps": len(log) * cfg["steps_per_epoch"],
                     "batch_size": cfg["batch_size"], "train_minutes": round(float(log[-1]["minutes"]), 1),
                     "model": "epoch with the lowest training loss, as in final"})
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
