#!/usr/bin/env bash
# Installs LungSeg with its test dependencies into a virtual environment and runs the test suite.
#   PYTHON: the interpreter to build it from (default python3; 3.9 works: the slicer-core tests then skip,
#           there is no slicer-core wheel for 3.9)
#   VENV:   where the environment lives (default ./.venv)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -e ".[test]"
export TF_CPP_MIN_LOG_LEVEL=2
exec "$VENV/bin/python" -m pytest "$@"
