#!/usr/bin/env bash
# One longer MM-MAE training of the synthetic default on one GPU (bf16), sized to the time there
# is, for the README's GPU column. Everything it writes goes under $OUT:
#   $OUT/step.log     the probe: the default network's training step at this batch on this GPU
#   $OUT/run/         the run folder (config, checkpoints, metrics.json, figures, CSV logs)
#   $OUT/train.log    the console output, ending with the test table
#   $OUT/summary.txt  the machine, the steps chosen, the wall time and the test table again
#
#   OUT=/tmp/gpu bash benchmarks/gpu_hydro.sh            # from the repository root
#   OUT=/tmp/x TRAIN_S=60 bash benchmarks/gpu_hydro.sh trainer=default   # extra overrides last
#
# How it is sized: the probe times the model's step (benchmarks.mmmae_step, batch $BATCH); the
# run then gets as many optimiser steps as fit TRAIN_S seconds (default 380) at 1.3× that step
# (loading, logging, validation), in whole epochs of 100 steps, so its cosine learning-rate
# schedule ends when training does. trainer.max_time (TRAIN_S + 60 s) is only a safety stop.
# Settings: batch 16, lr 3e-3 (not scaled with the batch), 8 loader processes, validation about
# 8 times; everything else is experiment=hydro.
# Needs a Python with a CUDA build of torch and this project importable (PYTHON=..., default
# python). The synthetic source is generated and prepared on first use (under $OUT/cache).
set -euo pipefail
cd "$(dirname "$0")/.."  # the repository root
OUT=${OUT:?set OUT to the folder the results go to}
PYTHON=${PYTHON:-python}
TRAIN_S=${TRAIN_S:-380}
BATCH=${BATCH:-16}
mkdir -p "$OUT"
export WANDB_MODE=offline MPLCONFIGDIR="$OUT/.matplotlib"
start=$(date +%s)
{
  echo "started $(date -u +%FT%TZ) on $(hostname)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} | tee "$OUT/summary.txt"
# the probe: median training step (forward, backward, optimiser) of the default network
"$PYTHON" - "$BATCH" "$OUT/step.json" <<'EOF' 2>&1 | tee "$OUT/step.log"
import json, sys
import torch
from benchmarks.mmmae_step import NETWORKS, format_table, run
default = next(iter(NETWORKS))  # the default network only: the probe sizes its run
r = run(batch_size=int(sys.argv[1]), repeats=5, warmup=3, networks=[default],
        device="cuda" if torch.cuda.is_available() else "cpu")
print(format_table(r))
json.dump({"step_s": r["rows"][default]["step_s"], "settings": r["settings"]}, open(sys.argv[2], "w"))
EOF
read -r EPOCHS EVERY < <("$PYTHON" - "$OUT/step.json" "$TRAIN_S" <<'EOF'
import json, sys
step = json.load(open(sys.argv[1]))["step_s"]
epochs = max(2, min(60, int(float(sys.argv[2]) / (1.3 * step) / 100)))
print(epochs, max(1, epochs // 8))
EOF
)
MAX_TIME=$(printf "00:00:%02d:%02d" $(( (TRAIN_S + 60) / 60 )) $(( (TRAIN_S + 60) % 60 )))
echo "training: $EPOCHS epochs x 100 steps of $BATCH windows, validation every $EVERY epochs," \
  "safety stop trainer.max_time=$MAX_TIME" | tee -a "$OUT/summary.txt"
"$PYTHON" train.py experiment=hydro trainer=gpu "trainer.max_time=$MAX_TIME" \
  "trainer.max_epochs=$EPOCHS" trainer.limit_train_batches=100 "trainer.check_val_every_n_epoch=$EVERY" \
  "data.batch_size=$BATCH" data.num_workers=8 model.optim.lr=3e-3 model.optim.base_batch_size=null \
  callbacks.progress_bar=null "data.cache_dir=$OUT/cache" "hydra.run.dir=$OUT/run" "$@" \
  2>&1 | tee "$OUT/train.log"
end=$(date +%s)
{
  echo "wall time $((end - start)) s"
  "$PYTHON" - "$OUT/run" <<'EOF'
import csv, json, pathlib, sys
run = pathlib.Path(sys.argv[1])
m = json.loads((run / "metrics.json").read_text())
logged = [r for f in run.glob("csv/**/metrics.csv") for r in csv.DictReader(f.open())]
steps = max((int(r["step"]) for r in logged if r.get("train/loss_step")), default=-1) + 1
print(f"checkpoint tested: {m['checkpoint']}; about {steps} optimiser steps trained")
t = json.loads((run / "timings.json").read_text())
print("phases (wall s): " + ", ".join(f"{r['phase']} {r['wall']:.0f}" for r in t["records"]))
for row, v in m["test"].items():
    cells = "  ".join(f"{k} {v[k]:.4f}" for k in ("rmse", "mae", "nse_median", "kge_median") if k in v)
    print(f"{row:<45s} {cells}")
EOF
} | tee -a "$OUT/summary.txt"
