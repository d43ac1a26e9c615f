#!/usr/bin/env bash
# One longer MM-MAE training of the synthetic default on one GPU (bf16), bounded by
# trainer.max_time, for the README's GPU column. Everything it writes goes under $OUT:
#   $OUT/run/         the run folder (config, checkpoints, metrics.json, figures, CSV logs)
#   $OUT/train.log    the console output, ending with the test table
#   $OUT/summary.txt  the machine, the wall time and the test table again
#
#   OUT=/tmp/gpu bash benchmarks/gpu_hydro.sh            # from the repository root
#   OUT=/tmp/x bash benchmarks/gpu_hydro.sh trainer=default debug=fast   # extra overrides last
#
# Needs a Python with a CUDA build of torch and this project installed (PYTHON=..., default
# python). The synthetic source is generated and prepared on first use (under $OUT/cache).
# Budget: at most MAX_TIME of training (default 3 min 30 s) + start, validation and test, so the
# whole script stays within 5 minutes of wall time on an H100/H200.
set -euo pipefail
cd "$(dirname "$0")/.."  # the repository root
OUT=${OUT:?set OUT to the folder the results go to}
PYTHON=${PYTHON:-python}
MAX_TIME=${MAX_TIME:-00:00:03:30}
mkdir -p "$OUT"
export WANDB_MODE=offline MPLCONFIGDIR="$OUT/.matplotlib"
start=$(date +%s)
{
  echo "started $(date -u +%FT%TZ) on $(hostname)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} | tee "$OUT/summary.txt"
# 64 windows per step (lr scales with it), 40 epochs x 100 steps at most, 8 loader processes;
# trainer.max_time ends training earlier if the GPU is slower than that.
"$PYTHON" train.py experiment=hydro trainer=gpu "trainer.max_time=$MAX_TIME" \
  trainer.max_epochs=40 trainer.limit_train_batches=100 data.batch_size=64 data.num_workers=8 \
  callbacks.progress_bar=null "data.cache_dir=$OUT/cache" "hydra.run.dir=$OUT/run" "$@" \
  2>&1 | tee "$OUT/train.log"
end=$(date +%s)
{
  echo "wall time $((end - start)) s (training bounded by trainer.max_time=$MAX_TIME)"
  "$PYTHON" - "$OUT/run" <<'EOF'
import csv, json, pathlib, sys
run = pathlib.Path(sys.argv[1])
m = json.loads((run / "metrics.json").read_text())
logged = [r for f in run.glob("csv/**/metrics.csv") for r in csv.DictReader(f.open())]
steps = max((int(r["step"]) for r in logged if r.get("train/loss_step")), default=-1) + 1
print(f"checkpoint tested: {m['checkpoint']}; about {steps} optimiser steps trained")
for row, v in m["test"].items():
    cells = "  ".join(f"{k} {v[k]:.4f}" for k in ("rmse", "mae", "nse_median", "kge_median") if k in v)
    print(f"{row:<45s} {cells}")
EOF
} | tee -a "$OUT/summary.txt"
