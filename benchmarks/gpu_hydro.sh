#!/usr/bin/env bash
# One longer MM-MAE training of the synthetic default on one GPU (bf16), for the README's GPU
# column. Everything it writes goes under $OUT:
#   $OUT/run/         the run folder (config, checkpoints, metrics.json, figures, CSV logs)
#   $OUT/train.log    the console output, ending with the test table
#   $OUT/summary.txt  the machine, the steps, the wall time and the test table again
#
#   OUT=/tmp/gpu bash benchmarks/gpu_hydro.sh                  # from the repository root
#   OUT=/tmp/x STEPS=200 bash benchmarks/gpu_hydro.sh trainer.accelerator=cpu   # overrides last
#
# Budget: STEPS optimiser steps (default 2,000, a multiple of 100) of BATCH windows (default 16),
# lr 3e-3 (not scaled with the batch), 8 loader processes, validation about 8 times; the cosine
# schedule spans STEPS. On the lent H200 the loop trained ~0.15 s per step at batch 16 (the
# model's own step is 0.06 s: loading and host work are the rest), so the default is ~5 min of
# training plus ~1.5 min of start, validation and test. trainer.max_time (MAX_TIME, default
# 8 min) is a safety stop: training stopped by it has not finished its schedule.
# Needs a Python with a CUDA build of torch and this project importable (PYTHON=..., default
# python). The synthetic source is generated and prepared on first use (under $OUT/cache).
set -euo pipefail
cd "$(dirname "$0")/.."  # the repository root
OUT=${OUT:?set OUT to the folder the results go to}
PYTHON=${PYTHON:-python}
STEPS=${STEPS:-2000}
BATCH=${BATCH:-16}
MAX_TIME=${MAX_TIME:-00:00:08:00}
if [ $((STEPS % 100)) -ne 0 ] || [ "$STEPS" -lt 100 ]; then
  echo "STEPS=$STEPS: expected a multiple of 100 (epochs of 100 steps)" >&2; exit 2
fi
mkdir -p "$OUT"
export WANDB_MODE=offline MPLCONFIGDIR="$OUT/.matplotlib"
start=$(date +%s)
{
  echo "started $(date -u +%FT%TZ) on $(hostname)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} | tee "$OUT/summary.txt"
EVERY=$(( STEPS / 100 / 8 > 0 ? STEPS / 100 / 8 : 1 ))
echo "training: $STEPS steps of $BATCH windows, validation every $EVERY epochs of 100 steps," \
  "stopped earlier by trainer.max_time=$MAX_TIME" | tee -a "$OUT/summary.txt"
"$PYTHON" train.py experiment=hydro trainer=gpu "trainer.max_time=$MAX_TIME" \
  "trainer.max_epochs=$(( STEPS / 100 ))" trainer.limit_train_batches=100 "trainer.check_val_every_n_epoch=$EVERY" \
  "data.batch_size=$BATCH" data.num_workers=8 model.optim.lr=3e-3 model.optim.base_batch_size=null \
  callbacks.progress_bar=null "data.cache_dir=$OUT/cache" "hydra.run.dir=$OUT/run" "$@" \
  2>&1 | tee "$OUT/train.log"
end=$(date +%s)
{
  echo "wall time $((end - start)) s"
  "$PYTHON" - "$OUT/run" <<'EOF'
import json, pathlib, sys
run = pathlib.Path(sys.argv[1])
m = json.loads((run / "metrics.json").read_text())
t = json.loads((run / "timings.json").read_text())
steps = sum(r.get("steps", 0) for r in t["records"] if r["phase"] == "train")  # every epoch's
print(f"checkpoint tested: {m['checkpoint']}; {steps} training batches run")
print("phases (wall s): " + ", ".join(f"{r['phase']} {r['wall']:.0f}" for r in t["records"]))
for row, v in m["test"].items():
    cells = "  ".join(f"{k} {v[k]:.4f}" for k in ("rmse", "mae", "nse_median", "kge_median") if k in v)
    print(f"{row:<45s} {cells}")
EOF
} | tee -a "$OUT/summary.txt"
