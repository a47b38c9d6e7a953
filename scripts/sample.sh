#!/usr/bin/env bash
# Installs LungSeg into ./.venv and segments the bundled sample chest CT:
# writes out/sample_lungs.seg.nrrd (open it in 3D Slicer) and out/sample_overview.png (open it anywhere).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e .
export TF_CPP_MIN_LOG_LEVEL=2
mkdir -p out
exec .venv/bin/lungseg segment Resources/SampleData/ACRIN-FLT-Breast-001_chest.nrrd out/sample_lungs.seg.nrrd \
  --overview out/sample_overview.png --overwrite "$@"
