#!/usr/bin/env bash
# The CUDA kernels' cases of the CPU execution layer (pytest -m emulation: every kernel, every path) under
# AddressSanitizer and UndefinedBehaviorSanitizer. The layer is rebuilt with both (BIOPLAUS_EMU_SANITIZE=1,
# build/bioplaus_emu_sanitize/) and the runtimes are preloaded into Python, so that the emulated kernels' reads
# and writes of tensor memory (allocated by torch through the intercepted malloc) are bounds-checked, and any
# undefined behaviour (signed overflow in an index, a bad shift) aborts the run. pytest captures at the sys level
# only, so that a sanitizer report written to file descriptor 2 reaches the log.
set -euo pipefail
cd "$(dirname "$0")/.."
asan="$(g++ -print-file-name=libasan.so)"
ubsan="$(g++ -print-file-name=libubsan.so)"
[[ -f "$asan" && -f "$ubsan" ]] || { echo "sanitize: libasan/libubsan not found next to g++" >&2; exit 1; }
export BIOPLAUS_EMU_SANITIZE=1
# Python and torch are not instrumented: their leaks at exit are not ours, and their allocations are checked
# only for bounds (no leak report); UBSan stops at the first report.
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:detect_stack_use_after_return=0"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
# Arguments are pytest's (test files, -k, -x); with none, every emulation case under tests/.
[[ $# -gt 0 ]] || set -- tests
LD_PRELOAD="$asan $ubsan" python3 -m pytest -m emulation -q -p no:cacheprovider --capture=sys "$@"
