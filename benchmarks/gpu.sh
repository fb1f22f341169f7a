#!/usr/bin/env bash
# Everything issue 23 measures on a GPU, in one call of at most ~9 minutes (docs/benchmarks.md, "GPU: the compile
# backend"). On the GPU machine (torch, triton, transformers, numba, pytest-xdist installed; no network):
#
#     bash benchmarks/gpu.sh                 # logs under $OUT/gpu (or $TMPDIR/maskprobe-gpu), a summary printed last
#     bash benchmarks/gpu.sh --cpu-smoke     # the same steps at toy sizes on the CPU, no install, no full suite
#
# Steps, each with its own time box (the remaining budget is shared; a step that runs out is reported, not fatal):
#   1. install the checkout into this Python without network (pip --no-deps --no-index --no-build-isolation -e .)
#   2. the CUDA tests (pytest -m cuda) and the compile backend's tests
#   3. benchmarks/train_step.py on cuda: the compile backend vs the torch backend, FNN and transformer, K=1,4 (and vmap),
#      the gate passes' bandwidth vs a device copy (JSON in the log folder)
#   4. benchmarks/paper_run.py: a short paper-size add/mul run (base network on the GPU, add mask, both backends)
#   5. benchmarks/together.py: 10 paper-size masks alone vs train --together
#   6. benchmarks/memory_check.py: --dry-run's estimate vs the measured CUDA peak (FNN, GPT-2 6x768; K 1/4, Adam fp32/bf16)
#   7. the whole suite with -n 8, in what time is left
set -u
BUDGET=${GPU_SH_BUDGET:-530}   # seconds for everything
SMOKE=0
[ "${1:-}" = "--cpu-smoke" ] && SMOKE=1
LOG=${OUT:+$OUT/gpu}
LOG=${LOG:-${TMPDIR:-/tmp}/maskprobe-gpu}
mkdir -p "$LOG"
PY=${PYTHON:-python3}
START=$SECONDS
declare -a SUMMARY

left() { echo $((BUDGET - (SECONDS - START))); }

step() {  # step NAME MAX_SECONDS COMMAND...: run with a time box of min(MAX, what is left), log to $LOG/NAME.log
  local name=$1 max=$2
  shift 2
  local box
  box=$(left)
  [ "$box" -gt "$max" ] && box=$max
  if [ "$box" -lt 15 ]; then
    SUMMARY+=("$name: skipped (no time left)")
    return
  fi
  local t0=$SECONDS
  timeout "$box" "$@" >"$LOG/$name.log" 2>&1
  local rc=$?
  local took=$((SECONDS - t0))
  if [ $rc -eq 124 ]; then
    SUMMARY+=("$name: TIMED OUT after ${took} s (box ${box} s); see $LOG/$name.log")
  else
    SUMMARY+=("$name: exit $rc in ${took} s")
  fi
}

if [ $SMOKE -eq 1 ]; then
  DEV=cpu
  BENCH=(--devices cpu --models fnn --samples 2 --rounds 1 --no-floor)
  PAPER=(--device cpu --hidden 64,64 --base-steps 30 --steps 10 --warmup 2 --samples 2)
  TOGETHER=(--device cpu --hidden 64,64 --masks 3 --steps 10 --base-steps 30)
  TESTS=(tests/test_fused_gate.py tests/test_fitting_device.py)
else
  DEV=cuda
  BENCH=(--devices cuda --models fnn,transformer --samples 1,4 --rounds 9 --vmap)
  PAPER=(--device cuda --base-steps 2000 --steps 1000)
  TOGETHER=(--device cuda --hidden 2000,2000,2000,2000 --masks 10 --steps 300 --base-steps 2000)
  TESTS=(-m cuda tests)
  step install 120 "$PY" -m pip install --no-deps --no-index --no-build-isolation -e .
  "$PY" -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" >"$LOG/machine.log" 2>&1
  nvidia-smi >>"$LOG/machine.log" 2>&1
fi

step tests-cuda 120 "$PY" -m pytest -q -p no:cacheprovider "${TESTS[@]}"
step train-step 170 "$PY" benchmarks/train_step.py "${BENCH[@]}" --backend compile,torch --json "$LOG/train_step.json"
step paper-run 100 "$PY" benchmarks/paper_run.py "${PAPER[@]}" --backends compile,torch
step together 120 "$PY" benchmarks/together.py "${TOGETHER[@]}"
if [ $SMOKE -eq 0 ]; then
  step memory 90 "$PY" benchmarks/memory_check.py --device cuda --gpt2
  step suite 400 "$PY" -m pytest -q -n 8 -p no:cacheprovider
fi

echo
echo "=== benchmarks/gpu.sh summary ($DEV, $((SECONDS - START)) s, logs in $LOG) ==="
cat "$LOG/machine.log" 2>/dev/null | head -1
for line in "${SUMMARY[@]}"; do echo "  $line"; done
echo "--- tests (CUDA-marked and compile backend):"
tail -n 3 "$LOG/tests-cuda.log" 2>/dev/null | sed 's/^/  /'
echo "--- train_step (median ms and ratio to plain Adam; gate passes' fraction of a device copy):"
grep -E "^\[|^  (plain|mask|floor|vmap|copy|gate|adam)" "$LOG/train-step.log" 2>/dev/null | sed 's/^/  /'
echo "--- paper-size add/mul:"
grep -E '^\{' "$LOG/paper-run.log" 2>/dev/null | sed 's/^/  /'
echo "--- masks alone vs together:"
grep -E '^\{' "$LOG/together.log" 2>/dev/null | sed 's/^/  /'
[ $SMOKE -eq 0 ] && { echo "--- --dry-run vs the measured peak:"; grep -E '^\|' "$LOG/memory.log" 2>/dev/null | sed 's/^/  /'; }
[ $SMOKE -eq 0 ] && { echo "--- whole suite (-n 8):"; tail -n 2 "$LOG/suite.log" 2>/dev/null | sed 's/^/  /'; }
exit 0
