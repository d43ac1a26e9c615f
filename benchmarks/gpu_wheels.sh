#!/usr/bin/env bash
# Wheels for benchmarks/gpu.sh of what the GPU machine's image lacks (it has torch, Lightning,
# torchmetrics, xarray, matplotlib, but not Hydra): hydra-core, omegaconf and antlr4 at this
# venv's versions, all pure Python, into .whl/ (kept out of git). Run it where PyPI is reachable,
# then carry .whl with the GPU call; gpu.sh installs them from there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: -d .whl \
  "hydra-core==$(version hydra-core)" "omegaconf==$(version omegaconf)"
"$PY" -m pip wheel -q --no-deps -w .whl "antlr4-python3-runtime==$(version antlr4-python3-runtime)"
EXCLUDE="$(git rev-parse --git-common-dir)/info/exclude"
grep -qx '/.whl/' "$EXCLUDE" 2>/dev/null || echo '/.whl/' >> "$EXCLUDE"
ls -l .whl
