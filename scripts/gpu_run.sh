#!/usr/bin/env bash
# One-call runner for the lent GPU machine (see benchmarks/README.md, "GPU").
#
#   bash scripts/gpu_run.sh            # on the device machine, from the repository root
#
# Stages (each under `timeout`, each runs even if an earlier one failed, all inside a global
# budget of GPU_RUN_BUDGET seconds, default 370):
#   1. build the extension from source in place (python3 setup.py build_ext --inplace, MAX_JOBS=16,
#      TORCH_CUDA_ARCH_LIST=9.0 unless set: H100/H200)
#   2. pytest tests -m gpu
#   3. GPU benchmarks: benchmarks/run.py --device cuda (bf16 channels_last model cases incl. the
#      issue's H100 targets, all-ones, batch 1, peak memory; op bandwidth vs a device-to-device copy)
#   4. compute-sanitizer --tool memcheck on scripts/sanitize_ops.py (every op fwd+bwd, engine)
#   5. scripts/host_overhead.py --device cuda (per-block launch + host cost of each strategy)
#   6. scripts/exception_probe.py: do C++ exceptions thrown in extension ops raise (issue: they ended
#      the process on torch 2.11 here)?
#   7. pytest benchmarks/test_models_bench.py -m gpu (pytest-benchmark JSON), with the time left
#      (the op suite's GPU cases: pytest benchmarks -m gpu, a few minutes more)
# Files written to $OUT (7 at most): build.txt, tests.txt (pytest + sanitizer), bench.txt,
# <machine>.json/.md/.png (benchmarks/run.py), pytest-benchmark-gpu.json. The last lines printed are
# a stage table and the results summary. Copy <machine>.{json,md,png} into benchmarks/results/.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/blockdrop-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/python:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} BLOCKDROP_FORCE_CUDA=1
export MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=17179869184
PY=${PYTHON:-python3}
BUDGET=${GPU_RUN_BUDGET:-370}
START=$(date +%s)
STATUS=""

left() { echo $(( BUDGET - ($(date +%s) - START) )); }
# stage NAME MAX_SECONDS RESERVE LOGFILE CMD...: run CMD with timeout min(MAX, left - RESERVE)
stage() {
  local name=$1 max=$2 reserve=$3 log=$4; shift 4
  local t=$(( $(left) - reserve )); (( t > max )) && t=$max
  if (( t < 10 )); then STATUS+="$(printf '%-12s skipped (budget)\n' "$name")"$'\n'; echo "== $name: skipped (budget)" >> "$log"; return; fi
  local s=$(date +%s)
  echo "== $name (timeout ${t}s): $*" >> "$log"
  timeout -k 10 "$t" "$@" >> "$log" 2>&1
  local rc=$?
  local note=""; (( rc == 124 || rc == 137 )) && note=" (timed out)"
  STATUS+="$(printf '%-12s rc=%-3s %4ss%s' "$name" "$rc" "$(( $(date +%s) - s ))" "$note")"$'\n'
  echo "== $name: rc=$rc$note" >> "$log"
}

{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv,noheader
  $PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
} 2>&1 | tee "$OUT/build.txt"

stage build 240 150 "$OUT/build.txt" $PY setup.py build_ext --inplace
$PY -c "import blockdrop_ext, json; print('build_info', json.dumps(blockdrop_ext.build_info()))" 2>&1 | tee -a "$OUT/build.txt"
MACHINE=$($PY -c "import sys; sys.path.insert(0, 'benchmarks'); import env; print(env.default_machine('cuda'))" 2>/dev/null || echo gpu)

stage tests 110 140 "$OUT/tests.txt" $PY -m pytest tests -m gpu -q -p no:cacheprovider
stage bench 180 40 "$OUT/bench.txt" $PY benchmarks/run.py --device cuda --machine "$MACHINE" --op-reps 10 --out "$OUT"
stage sanitizer 90 5 "$OUT/tests.txt" compute-sanitizer --tool memcheck --error-exitcode 3 $PY scripts/sanitize_ops.py
stage overhead 30 5 "$OUT/bench.txt" $PY scripts/host_overhead.py --device cuda --rounds 100
stage exceptions 60 5 "$OUT/tests.txt" $PY scripts/exception_probe.py
BLOCKDROP_BENCH_ROUNDS=5 stage pytest-bench 120 5 "$OUT/bench.txt" $PY -m pytest benchmarks/test_models_bench.py -m gpu -q -p no:cacheprovider \
  --benchmark-json "$OUT/pytest-benchmark-gpu.json" --benchmark-columns=median,iqr,rounds

echo
echo "== log tails"
grep -E "passed|failed|error" "$OUT/tests.txt" | tail -6
grep -E "ERROR SUMMARY|sanitize_ops" "$OUT/tests.txt" | tail -3
grep -E "^toolchain|raised|DIED|NO EXCEPTION|exit [0-9]" "$OUT/tests.txt" | tail -10
grep -E "^FAILED" "$OUT/bench.txt" | head -5
echo
echo "== stages (machine $MACHINE, $(( $(date +%s) - START ))s total)"
printf '%s' "$STATUS"
echo
if [ -f "$OUT/$MACHINE.json" ]; then
  $PY benchmarks/run.py --render "$OUT/$MACHINE.json" --out "$OUT" 2>&1 | tail -45
else
  echo "no results file $OUT/$MACHINE.json"; tail -20 "$OUT/bench.txt"
fi
