#!/usr/bin/env bash
# GPU check (DESIGN.md section 8): on a machine with an NVIDIA GPU, from the repository root,
#   bash benchmarks/gpu_check.sh [OUTDIR]
# builds the extension in place for that GPU, runs the CUDA tests, the LC benchmark's sweep (all 13 shapes x
# every algorithm, forced, beside the default selection and unfold+bmm, batch 128) in float32, bfloat16 and
# TF32-allowed float32, the default selection table those runs make, the feedback-rule benchmark (each rule's
# layer step against bp, LC included), compute-sanitizer's memcheck and racecheck over a subset that reaches
# every CUDA kernel (where compute-sanitizer exists), the Linear feedback-mode benchmark, and, with
# GPU_CHECK_CPU_TESTS=1, the CPU tests under this machine's torch (CI runs them otherwise); prints a stage
# summary, the failed tests and the tables last.
#
# OUTDIR: the argument, else $OUT if set, else benchmarks/results/gpu-<date>. At most 11 files are written
# there (gpu_check.log, stages.txt, lc2d-cuda-{float32,bfloat16,tf32}.json, lc2d-selection-table.txt,
# feedback-cuda.json, linear-cuda-float32.json, and feedback-cuda.png and lc2d-cuda-{float32,bfloat16}.png
# when matplotlib is present), no subfolders. To adopt the measured table:
#   python benchmarks/lc2d_selection_table.py OUTDIR/lc2d-cuda-*.json   (then rebuild)
#
# Needs only python3 with torch (a CUDA build), pytest, pytest-benchmark, ninja and nvcc (pytest-xdist
# used when present); no network.
# Time: every stage has a limit and the whole run is kept under GPU_CHECK_BUDGET_S (default 450 s); the
# stages run in order of need, and a stage is skipped when the budget left after the time reserved for
# later stages is under 20 s.
# Environment: TORCH_CUDA_ARCH_LIST (default 9.0), MAX_JOBS (default 16), PYTHON (default python3),
# GPU_CHECK_BUDGET_S, GPU_CHECK_SKIP (comma-separated stage names to leave out, e.g.
# bench-lc2d-float32,bench-lc2d-bfloat16), BIOPLAUS_GIT_REV / BIOPLAUS_GIT_DIRTY (recorded in the JSON where .git is absent).
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
  if [[ ",${GPU_CHECK_SKIP:-}," == *",$name,"* ]]; then
    echo "=== [$name] SKIPPED: named in GPU_CHECK_SKIP"
    STAGES+=("$(printf '%-24s %-12s %5ss' "$name" "skipped" 0)")
    return 0
  fi
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

  # --- tests: the CUDA cases (and, last and optional, the CPU cases), spread over processes (pytest-xdist,
  # when present) with few threads each, so that the cores are not oversubscribed --------------------------
  local xdist_cuda=() xdist_cpu=()
  if "$PY" -c 'import xdist' 2>/dev/null; then
    xdist_cuda=(-n 4)
    xdist_cpu=(-n 8)
  fi
  run_stage tests-cuda 150 200 env OMP_NUM_THREADS=4 "$PY" -m pytest tests -m cuda -q -rfE --tb=short \
    --maxfail=60 -p no:cacheprovider "${xdist_cuda[@]}"

  # --- the LC sweep: every shape x algorithm x {fp32, bf16, tf32}, and the table it makes --------------------
  local dt
  for dt in float32 bfloat16 tf32; do
    local flags=(--dtype "$dt") plot=(--plot "$OUTDIR/lc2d-cuda-$dt.png")
    [[ $dt == tf32 ]] && flags=(--dtype float32 --tf32) && plot=()
    run_stage "bench-lc2d-$dt" 90 60 "$PY" benchmarks/bench_lc2d.py --device cuda "${flags[@]}" --shapes all \
      --batch 128 --algorithm all --json "$OUTDIR/lc2d-cuda-$dt.json" "${plot[@]}"
  done
  local sweep=()
  for dt in float32 bfloat16 tf32; do [[ -f "$OUTDIR/lc2d-cuda-$dt.json" ]] && sweep+=("$OUTDIR/lc2d-cuda-$dt.json"); done
  if ((${#sweep[@]})); then
    run_stage selection-table 20 0 bash -c '"$0" benchmarks/lc2d_selection_table.py --print "$@" > "'"$OUTDIR"'/lc2d-selection-table.txt"' \
      "$PY" "${sweep[@]}"
  fi

  run_stage bench-feedback 100 45 "$PY" benchmarks/bench_feedback.py --device cuda \
    --json "$OUTDIR/feedback-cuda.json" --plot "$OUTDIR/feedback-cuda.png"

  local cs=""
  if command -v compute-sanitizer >/dev/null; then
    cs="$(command -v compute-sanitizer)"
  elif [[ -x /usr/local/cuda/bin/compute-sanitizer ]]; then
    cs=/usr/local/cuda/bin/compute-sanitizer
  fi
  if [[ -n "$cs" ]]; then
    local subset=(-m pytest tests/test_lc2d.py tests/test_linear.py tests/test_feedback_source.py tests/test_philox.py
      tests/test_difference_target.py tests/test_inverse_loss.py -q -x -p no:cacheprovider -m cuda
      -k "gradient_ops_called_directly or (feedback_input_gradient and n1c5o1) or (on_the_fly and (37 or 600)) or (cuda_matches_cpu and (dtype0 or 1000_seed42)) or (matches_reference and case0) or (linear_matches_reference and shape0 and dtype0)")
    # No caching allocator under memcheck, so that an access past a tensor's end is not inside a cached block.
    run_stage memcheck 60 60 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
      "$cs" --tool memcheck --error-exitcode 9 --print-limit 20 "$PY" "${subset[@]}"
    # Shared-memory races (the tiled kernels' staging between __syncthreads): the same subset.
    run_stage racecheck 45 60 "$cs" --tool racecheck --error-exitcode 9 --print-limit 20 "$PY" "${subset[@]}"
  else
    echo "compute-sanitizer not found: memory checks skipped"
    STAGES+=("$(printf '%-24s %-12s %5ss' "sanitizer" "not found" 0)")
  fi

  run_stage bench-linear 45 0 "$PY" benchmarks/bench_linear.py --device cuda --dtype float32 \
    --json "$OUTDIR/linear-cuda-float32.json"
  if [[ "${GPU_CHECK_CPU_TESTS:-0}" == 1 ]]; then
    run_stage tests-cpu 150 0 env OMP_NUM_THREADS=2 "$PY" -m pytest tests -m "not cuda and not emulation" -q -rfE \
      --tb=short --maxfail=60 -p no:cacheprovider "${xdist_cpu[@]}"
  fi

  print_summary
  echo
  echo "=== failed or errored tests (CUDA, then CPU)"
  grep -hE "^(FAILED|ERROR) " "$LOG" | cut -c1-220 | head -n 40 || true
  # The short tables, last.
  local f
  for f in "$OUTDIR/lc2d-cuda-float32.json" "$OUTDIR/lc2d-cuda-bfloat16.json" "$OUTDIR/feedback-cuda.json"; do
    echo
    if [[ -f "$f" ]]; then
      case "$f" in
        *lc2d*) "$PY" benchmarks/bench_lc2d.py --table-from "$f" | tail -n 32 || FAILED=1 ;;
        *) "$PY" benchmarks/bench_feedback.py --table-from "$f" || FAILED=1 ;;
      esac
    else
      echo "(no $(basename "$f"): that benchmark stage did not finish)"
    fi
  done
  return "$FAILED"
}

rc=0
main "$@" 2>&1 | tee "$LOG" || rc=$?
exit "$rc"
