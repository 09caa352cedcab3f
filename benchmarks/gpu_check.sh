#!/usr/bin/env bash
# GPU check (DESIGN.md section 8): on a machine with an NVIDIA GPU, from the repository root,
#   bash benchmarks/gpu_check.sh [OUTDIR]
# builds the extension in place for that GPU, runs the whole test suite (CUDA cases included), a
# compute-sanitizer memcheck and racecheck pass over a small subset (where compute-sanitizer exists), the
# LC benchmark on CUDA in float32 (all shapes, batch 128) and bfloat16, the Linear feedback-mode and the
# feedback-rule benchmarks on CUDA, and the pytest-benchmark CUDA cases;
# writes JSON results and a log to OUTDIR and prints a stage summary and the short tables last.
#
# OUTDIR: the argument, else $OUT if set, else benchmarks/results/gpu-<date>. At most 8 files are written
# there (gpu_check.log, stages.txt, lc2d-cuda-float32.json, lc2d-cuda-bfloat16.json, linear-cuda-float32.json,
# feedback-cuda.json, pytest-benchmark-cuda.json, lc2d-cuda-float32.png when matplotlib is present), no
# subfolders.
#
# Needs only python3 with torch (a CUDA build), pytest, pytest-benchmark, ninja and nvcc; no network.
# Time: every stage has a limit and the whole run is kept under GPU_CHECK_BUDGET_S (default 450 s, for the
# 8-minute target on an H100; the summary and tables follow in a few seconds); later essential stages (the benchmarks) get their time reserved first.
# Environment: TORCH_CUDA_ARCH_LIST (default 9.0), MAX_JOBS (default 16), PYTHON (default python3),
# GPU_CHECK_BUDGET_S, BIOPLAUS_GIT_REV / BIOPLAUS_GIT_DIRTY (recorded in the JSON where .git is absent).
# Exit status: 0 when every stage that ran passed, 1 otherwise (the tables are printed either way).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUTDIR="${1:-${OUT:-benchmarks/results/gpu-$(date +%Y%m%d-%H%M%S)}}"
mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"
LOG="$OUTDIR/gpu_check.log"
PY="${PYTHON:-python3}"
BUDGET="${GPU_CHECK_BUDGET_S:-450}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MAX_JOBS="${MAX_JOBS:-16}"
export PYTHONUNBUFFERED=1

STAGES=()
FAILED=0

# run_stage NAME CAP_S RESERVE_S CMD...: runs CMD with a time limit of min(CAP_S, what is left of the budget
# after RESERVE_S for the stages still to come); skipped when under 20 s would be left.
run_stage() {
  local name=$1 cap=$2 reserve=$3
  shift 3
  local left=$((BUDGET - SECONDS - reserve))
  local limit=$((cap < left ? cap : left))
  if ((limit < 20)); then
    echo "=== [$name] SKIPPED: ${left}s left of the ${BUDGET}s budget after reserving ${reserve}s"
    STAGES+=("$(printf '%-24s %-12s %5ss' "$name" "skipped" 0)")
    return 0
  fi
  echo
  echo "=== [$name] (limit ${limit}s) $*"
  local t0=$SECONDS rc=0
  if command -v timeout >/dev/null; then
    timeout --kill-after=15 "$limit" "$@" || rc=$?
  else
    "$@" || rc=$?
  fi
  local dt=$((SECONDS - t0)) status="ok"
  if ((rc == 124 || rc == 137)); then status="TIMEOUT"; elif ((rc != 0)); then status="FAILED rc=$rc"; fi
  ((rc == 0)) || FAILED=1
  echo "=== [$name] $status in ${dt}s"
  STAGES+=("$(printf '%-24s %-12s %5ss' "$name" "$status" "$dt")")
  return 0
}

print_summary() {
  echo
  echo "=== stages (wall time; budget ${BUDGET}s, total ${SECONDS}s)"
  printf '%s\n' "${STAGES[@]}" | tee "$OUTDIR/stages.txt"
}

main() {
  echo "gpu_check: $(date -Is) in $(pwd), results in $OUTDIR"
  echo "--- GPU"
  nvidia-smi -L || echo "nvidia-smi -L failed"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit \
    --format=csv || true
  echo "--- versions"
  "$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "| torch", torch.__version__, "| CUDA", torch.version.cuda, "| GPU visible:", torch.cuda.is_available())' || true
  command -v nvcc >/dev/null && nvcc --version | tail -n 2 || echo "nvcc not on PATH"
  "$PY" -m pytest --version 2>&1 | head -n 1 || true
  "$PY" -c 'import pytest_benchmark; print("pytest-benchmark", pytest_benchmark.__version__)' || true
  if ! git rev-parse HEAD 2>/dev/null; then
    echo "git: no revision here${BIOPLAUS_GIT_REV:+ (BIOPLAUS_GIT_REV=$BIOPLAUS_GIT_REV is recorded)}"
  fi
  echo "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS"

  # --- build, in place ------------------------------------------------------------------------------
  run_stage build 300 150 "$PY" -m pip install --no-build-isolation --no-deps -e .
  if ! "$PY" -c 'import bioplaus_kernels' 2>/dev/null; then
    echo "pip install -e failed to give an importable package; trying setup.py build_ext --inplace"
    run_stage build-inplace 300 150 "$PY" setup.py build_ext --inplace
    export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
  fi
  if ! "$PY" -c 'import torch, bioplaus_kernels as b; assert torch.cuda.is_available(), "no GPU visible"; assert b.with_cuda, "built without the CUDA kernels"; print("bioplaus_kernels", b.__version__, "with CUDA kernels; GPU", torch.cuda.get_device_name())'; then
    echo "the extension is not usable on this GPU: stopping"
    FAILED=1
    print_summary
    return 1
  fi

  # --- tests (all of them; the CUDA cases run here) -----------------------------------------------------
  run_stage tests 180 150 "$PY" -m pytest tests -q -x -rs -p no:cacheprovider

  # --- compute-sanitizer over a small subset --------------------------------------------------------------
  local cs=""
  if command -v compute-sanitizer >/dev/null; then
    cs="$(command -v compute-sanitizer)"
  elif [[ -x /usr/local/cuda/bin/compute-sanitizer ]]; then
    cs=/usr/local/cuda/bin/compute-sanitizer
  fi
  if [[ -n "$cs" ]]; then
    local subset=(-m pytest tests/test_lc2d.py -q -x -p no:cacheprovider -k "gradient_ops_called_directly and cuda")
    # No caching allocator under memcheck, so that an access past a tensor's end is not inside a cached block.
    run_stage memcheck 120 150 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
      "$cs" --tool memcheck --error-exitcode 9 --print-limit 20 "$PY" "${subset[@]}"
    run_stage racecheck 120 150 "$cs" --tool racecheck --error-exitcode 9 --print-limit 20 "$PY" "${subset[@]}"
  else
    echo "compute-sanitizer not found: memory checks skipped"
    STAGES+=("$(printf '%-24s %-12s %5ss' "sanitizer" "not found" 0)")
  fi

  # --- the benchmark: float32 (all shapes, batch 128), then bfloat16 ---------------------------------------
  run_stage bench-float32 150 150 "$PY" benchmarks/bench_lc2d.py --device cuda --dtype float32 --shapes all \
    --batch 128 --json "$OUTDIR/lc2d-cuda-float32.json" --plot "$OUTDIR/lc2d-cuda-float32.png"
  run_stage bench-bfloat16 120 130 "$PY" benchmarks/bench_lc2d.py --device cuda --dtype bfloat16 --shapes all \
    --batch 128 --json "$OUTDIR/lc2d-cuda-bfloat16.json"

  # --- feedback: linear_backward_input per mode, then each rule's layer step against bp -------------------
  run_stage bench-linear 60 70 "$PY" benchmarks/bench_linear.py --device cuda --dtype float32 \
    --json "$OUTDIR/linear-cuda-float32.json"
  run_stage bench-feedback 90 10 "$PY" benchmarks/bench_feedback.py --device cuda \
    --json "$OUTDIR/feedback-cuda.json"

  # --- the same cases through pytest-benchmark (fewer rounds) ----------------------------------------------
  run_stage pytest-benchmark 90 10 env BIOPLAUS_BENCH_ROUNDS=10 "$PY" -m pytest benchmarks/bench_lc2d.py -q \
    -m cuda -p no:cacheprovider --benchmark-json "$OUTDIR/pytest-benchmark-cuda.json" \
    --benchmark-columns=median,iqr,rounds --benchmark-sort=name

  print_summary
  # The short tables, last (float32 last of all).
  local f
  for f in "$OUTDIR/lc2d-cuda-bfloat16.json" "$OUTDIR/lc2d-cuda-float32.json"; do
    if [[ -f "$f" ]]; then
      echo
      "$PY" benchmarks/bench_lc2d.py --table-from "$f" || FAILED=1
    else
      echo
      echo "(no $(basename "$f"): that benchmark stage did not finish)"
    fi
  done
  return "$FAILED"
}

rc=0
main "$@" 2>&1 | tee "$LOG" || rc=$?
exit "$rc"
