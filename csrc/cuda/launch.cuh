// How the CUDA launchers reach the device: the device guard, the kernel launch, the device's properties and
// the dispatch key the kernels register under. Every csrc/cuda/*.cu file launches through these and nothing
// else, so the same file also compiles as host C++ for the test-only CPU execution layer
// (tests/emulation/, docs/emulation.md), which defines BIOPLAUS_CUDA_EMULATION and supplies the same names:
// there the launch runs the kernel's blocks on host threads, with the grid and block computed by the very
// launcher code below them.
//
//   DeviceGuard guard(tensor.device());                      the tensor's device is current in this scope
//   launch_kernel(kernel, grid, block, smem_bytes, args...);  on torch's current CUDA stream, launch error checked
//   multiprocessor_count(device)                             the SM count (grid sizing, split-K)
//   device_synchronize()                                     waits for the current stream (timing)
//   TORCH_LIBRARY_IMPL(bioplaus, BIOPLAUS_KERNEL_KEY, m)     CUDA here, CPU in the execution layer
#pragma once

#include <c10/core/Device.h>

#include <cstddef>

#if defined(BIOPLAUS_CUDA_EMULATION)
#include "cuda_emu.h"  // tests/emulation/: the CUDA language and runtime on host threads
#else
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cuda_runtime.h>

#define BIOPLAUS_KERNEL_KEY CUDA
#endif

namespace bioplaus {

// The parameter types of a launch are the kernel's own (no deduction from the arguments), so arguments
// convert exactly as in a direct call.
template <typename T>
struct launch_arg {
  using type = T;
};

#if defined(BIOPLAUS_CUDA_EMULATION)
using DeviceGuard = ::cuda_emu::DeviceGuard;

template <typename... Params>
inline void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem_bytes,
                          typename launch_arg<Params>::type... args) {
  ::cuda_emu::launch(grid, block, smem_bytes, [&] { kernel(args...); });
}

inline int multiprocessor_count(int) { return ::cuda_emu::multiprocessor_count(); }

inline void device_synchronize() {}  // launches return when the grid has run
#else
using DeviceGuard = c10::cuda::CUDAGuard;

template <typename... Params>
inline void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem_bytes,
                          typename launch_arg<Params>::type... args) {
  kernel<<<grid, block, smem_bytes, c10::cuda::getCurrentCUDAStream()>>>(args...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

inline int multiprocessor_count(int device) {
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return sms;
}

// Waits for the work queued on torch's current CUDA stream (the autotuner's timer).
inline void device_synchronize() { c10::cuda::getCurrentCUDAStream().synchronize(); }
#endif

}  // namespace bioplaus

#include <algorithm>
#include <cstdint>

namespace bioplaus {

// Blocks for a grid-stride loop over `work` items of `threads` each: one item per thread while that fits,
// and at most the blocks the device keeps resident at once (2048 threads per SM), so that larger inputs
// loop instead of queueing waves of blocks.
inline unsigned grid_stride_blocks(int64_t work, int threads, int device) {
  const int64_t wanted = (work + threads - 1) / threads;
  const int64_t resident = int64_t{multiprocessor_count(device)} * (2048 / threads);
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(wanted, resident)));
}

}  // namespace bioplaus
