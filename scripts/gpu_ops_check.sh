#!/usr/bin/env bash
# First GPU pass (ops only): build from source, CUDA tests of the ops, compute-sanitizer, bandwidth.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/blockdrop-out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/python:$PWD MAX_JOBS=16 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
start=$(date +%s)
python3 setup.py build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - start )) s"
python3 -c "import blockdrop_ext, torch; print(torch.__version__, blockdrop_ext.build_info())"
timeout 200 python3 -m pytest tests/test_ops.py tests/test_engine.py -q -m gpu -p no:cacheprovider > "$OUT/pytest_gpu.log" 2>&1; echo "pytest gpu rc=$?"; grep -E "passed|failed|FAILED|Error" "$OUT/pytest_gpu.log" | tail -15
timeout 150 compute-sanitizer --tool memcheck --error-exitcode 3 python3 scripts/gpu_ops_check.py --sanitize > "$OUT/sanitizer.log" 2>&1; echo "sanitizer rc=$?"; tail -4 "$OUT/sanitizer.log"
timeout 120 python3 scripts/gpu_ops_check.py --bandwidth 2>&1 | tee "$OUT/bandwidth.md"
