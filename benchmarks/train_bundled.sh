#!/usr/bin/env bash
# How the bundled model (Resources/Models/lungseg_unet_3class.keras) and its leave-one-patient-out
# (LOPO) check were trained: CPU only (2 shared cores), TensorFlow 2.21.
#
#   benchmarks/train_bundled.sh final   # all cases -> $RUNS/bundled (about 29 min)
#   benchmarks/train_bundled.sh lopo    # one fold per case, shorter (about 9 min each)
#
# LUNGSEG_DATA_DIR defaults to ../shared/data (next to the repository clone); RUNS to /tmp/lungseg_runs.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${LUNGSEG_DATA_DIR:-../shared/data}/cases"
RUNS="${RUNS:-/tmp/lungseg_runs}"
LUNGSEG="${LUNGSEG:-lungseg}"
RECIPE=(--classes 3 --loss ce_dice --base-filters 8 --depth 4 --batch-size 8 --steps-per-epoch 50 --seed 0
        --cache-dir "$RUNS/cache" --quiet)
export TF_CPP_MIN_LOG_LEVEL=2

case "${1:-final}" in
  final)
    # All cases, no validation: the cosine schedule runs over 32 x 50 steps, capped at 29 minutes.
    $LUNGSEG train "$DATA" --out "$RUNS/bundled" "${RECIPE[@]}" --epochs 32 --patience 0 --max-minutes 29
    ;;
  lopo)
    for dir in "$DATA"/*/; do
      case_id="$(basename "$dir")"
      $LUNGSEG train "$DATA" --out "$RUNS/lopo-$case_id" --val "$case_id" "${RECIPE[@]}" \
        --epochs 10 --patience 0 --max-minutes 8.5
    done
    ;;
  *) echo "usage: $0 final|lopo" >&2; exit 2 ;;
esac
