#!/usr/bin/env bash
# The GPU measurements of issue 19 in one command (4 to 7 minutes on one GPU, 16 cores):
#
#   OUT=<folder> bash benchmarks/gpu.sh             on a machine with one CUDA GPU
#   GPU_DRY=1 OUT=<folder> bash benchmarks/gpu.sh   tiny CPU versions of the same parts (a check)
#
# Parts, each under its own time limit with its own log; a failing part does not stop the others:
#   bench  `make bench`'s GPU rows: SD-MAE training throughput (Lightning vs plain torch, fp32),
#          SD-MAE scoring, MM-MAE encoder step (bf16 autocast), MFU of the MM-MAE step against a
#          bf16 GEMM timed in the same run, hydro loader vs step            -> bench.json, bench.log
#   mfu    the MFU row again at a GPU-sized batch (32; the suite's 4 is sized for a CPU)
#                                                                   -> mfu_batch.json (log: bench.log)
#   hydro  python train.py experiment=hydro trainer=gpu, bounded by trainer.max_time
#                                               -> hydro.log, hydro_metrics.json, hydro_timings.json
# summary.txt: the machine (nvidia-smi, python, torch, CUDA), each part's exit status and seconds.
# Python: $PYTHON, else .venv/bin/python when it runs, else python3. Packages the machine lacks
# (hydra-core, omegaconf, antlr4) are installed from wheels in .whl/ when that folder exists
# (`bash benchmarks/gpu_wheels.sh` fills it where PyPI is reachable).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to the folder for the results}
mkdir -p "$OUT"
DRY=${GPU_DRY:-0}
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
export PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=passive
export MPLCONFIGDIR=${MPLCONFIGDIR:-/tmp/maelab-mpl} WANDB_MODE=offline

if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ] && .venv/bin/python -c "import torch" 2>/dev/null; then PY=.venv/bin/python
else PY=python3; fi
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/maelab-site .whl/*.whl >> "$SUMMARY" 2>&1 && export PYTHONPATH=/tmp/maelab-site
fi
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"

{
  echo "benchmarks/gpu.sh at $(date -u +%FT%TZ), dry run: $DRY, python: $PY"
  git rev-parse HEAD 2>/dev/null || true
  nvidia-smi 2>/dev/null || echo "nvidia-smi: not available"
  "$PY" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__,
'| CUDA', torch.version.cuda, '| GPU', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
'| CPU threads', torch.get_num_threads())" 2>&1
  "$PY" -c "import hydra, omegaconf, lightning, torchmetrics, maelab; print('imports: ok')" 2>&1 | tail -1
} >> "$SUMMARY"

part() {  # part <name> <seconds> <command...>: run, keep its exit status and time in the summary
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@"
  local rc=$?
  echo "part $name: exit $rc, $((SECONDS - t0)) s (limit $limit s)" >> "$SUMMARY"
}

if [ "$DRY" = 1 ]; then
  BENCH=(--quick --threads 1)
  MFU_KW="d_model=32, depth=1, heads=2, batch_size=2, repeats=2, gemm_n=256"
  HYDRO=(experiment=hydro debug=fast ++trainer.max_time=00:00:02:00 model.net.d_model=32
         model.net.depth=1 model.net.decoder_depth=1 data.synthetic.end=2000-12-31
         data.splits.train.end=2000-08-31 data.splits.val.start=2000-09-01
         data.splits.val.end=2000-10-31 data.splits.test.start=2000-11-01
         data.splits.test.end=2000-12-31 data.seq_len=30 data.num_workers=0)
else
  BENCH=(--threads 0)
  MFU_KW="batch_size=32"
  HYDRO=(experiment=hydro trainer=gpu ++trainer.max_time=00:00:01:00 data.num_workers=8)
fi

part bench 180 "$PY" -m benchmarks "${BENCH[@]}" --out "$OUT/bench.json" \
  --only sdmae_throughput,sdmae_inference,mmmae_encoder,mfu,hydro_step > "$OUT/bench.log" 2>&1

part mfu 45 "$PY" -c "import json, sys; from benchmarks.mfu import run, format_table
r = run($MFU_KW); print(format_table(r)); json.dump(r, open(sys.argv[1], 'w'), indent=1)" \
  "$OUT/mfu_batch.json" >> "$OUT/bench.log" 2>&1

RUN_DIR=$(mktemp -d)/hydro
part hydro 200 "$PY" train.py "${HYDRO[@]}" hydra.run.dir="$RUN_DIR" callbacks.progress_bar=null \
  > "$OUT/hydro.log" 2>&1
for f in metrics timings; do
  [ -f "$RUN_DIR/$f.json" ] && cp "$RUN_DIR/$f.json" "$OUT/hydro_$f.json"
done
echo "files: $(cd "$OUT" && ls | tr '\n' ' ')" >> "$SUMMARY"
cat "$SUMMARY"
