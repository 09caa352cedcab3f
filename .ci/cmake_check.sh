#!/usr/bin/env bash
# CMake (libtorch) build check: configure, build and run the C++ tests with ctest.
#   .ci/cmake_check.sh [BUILD_DIR]        (default: a fresh mktemp -d folder, removed on exit)
# The CUDA kernels are compiled too whenever torch is a CUDA build and nvcc is found (no GPU needed:
# CMAKE_CUDA_ARCHITECTURES defaults to 80;90), so CI proves they build under CMake as well as under
# setup.py. BIOPLAUS_FORCE_CPU=1 skips them, PYTHON picks the interpreter whose torch is used, MAX_JOBS
# caps the build parallelism.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# A fixed default folder would be reused by the next run; if that run comes from another checkout,
# CMake refuses the cache ("does not match the source used to generate cache"). So the default is a
# fresh folder; a folder given explicitly is kept (for incremental local builds).
if [[ $# -ge 1 ]]; then
  BUILD="$1"
else
  BUILD="$(mktemp -d -t bioplaus-cmake.XXXXXX)"
  trap 'rm -rf "$BUILD"' EXIT
fi
PYTHON="${PYTHON:-python3}"

read -r TORCH_CMAKE TORCH_CUDA < <("$PYTHON" -c \
  'import torch; print(torch.utils.cmake_prefix_path, torch.version.cuda or "none")')

# The nvcc on PATH may be a wrapper script; CMakeLists.txt asks nvcc for its real toolkit root, and
# honours CUDA_HOME / CUDA_PATH / CUDAToolkit_ROOT when set.
nvcc="${CUDA_HOME:+$CUDA_HOME/bin/nvcc}"
[[ -x "$nvcc" ]] || nvcc="$(command -v nvcc || true)"
with_cuda=OFF
if [[ "${BIOPLAUS_FORCE_CPU:-0}" != 1 && "$TORCH_CUDA" != none && -n "$nvcc" ]]; then
  with_cuda=ON
fi

generator=(-G Ninja)
if ! command -v ninja >/dev/null; then  # pip's ninja package, when its script is not on PATH
  generator+=(-DCMAKE_MAKE_PROGRAM="$("$PYTHON" -c 'import ninja, os; print(os.path.join(ninja.BIN_DIR, "ninja"))')")
fi

echo "cmake_check: torch CUDA $TORCH_CUDA, nvcc ${nvcc:-none}, BIOPLAUS_WITH_CUDA=$with_cuda, build dir $BUILD"
start=$SECONDS
cmake -S "$ROOT" -B "$BUILD" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$TORCH_CMAKE" -DBIOPLAUS_WITH_CUDA="$with_cuda"
configured=$SECONDS
cmake --build "$BUILD" --parallel "${MAX_JOBS:-$(nproc)}"
built=$SECONDS
ctest --test-dir "$BUILD" --output-on-failure
echo "cmake_check: OK (configure $((configured - start)) s, build $((built - configured)) s," \
     "test $((SECONDS - built)) s, CUDA kernels $with_cuda)"
