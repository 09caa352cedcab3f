// The CPU execution layer's stand-in for the CUDA language and runtime (test-only; docs/emulation.md).
//
// A csrc/cuda/*.cu file compiles as host C++ after this header (tests/emulation/<op>_kernel.cpp includes
// the two in that order, with BIOPLAUS_CUDA_EMULATION defined):
//   * __global__, __device__, __host__, __launch_bounds__ vanish; __forceinline__ is inline;
//   * __shared__ is `static thread_local`: one copy per host worker thread, and a worker runs one block at
//     a time, so the threads of that block (and only they) share it;
//   * threadIdx is the running CUDA thread's index, blockIdx / blockDim / gridDim the running block's;
//   * __align__(n) is GCC's aligned attribute;
//   * __syncthreads() is a real barrier: the calling thread stops until every thread of its block reaches
//     it (see emulation.cpp for the schedule that makes a missing barrier give a wrong result);
//   * cuda_emu::launch() checks the launch configuration as the driver does and runs the grid (csrc/cuda/
//     launch.cuh's launch_kernel() calls it); multiprocessor_count() is the emulated device's SM count
//     (settable from the tests);
//   * the kernels register for the CPU dispatch key (CPU tensors stand in for device memory).
// Device intrinsics (__umulhi, __fmul_rn) are behind __CUDA_ARCH__ in the kernels' headers, which is not
// defined here, so their host forms run: the same values (exact integer and correctly rounded products).
#pragma once

#include <c10/core/Device.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static thread_local
#define __align__(n) __attribute__((aligned(n)))
// __restrict__ is a GCC and Clang keyword already.

#define BIOPLAUS_KERNEL_KEY CPU

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};

struct uint3 {
  unsigned x, y, z;
};

namespace cuda_emu {

// The running CUDA thread and block (valid inside a kernel body).
const uint3& thread_idx();
const uint3& block_idx();
const dim3& block_dim();
const dim3& grid_dim();
void syncthreads();

// Runs body() once per CUDA thread of every block of the grid; throws c10::Error on a configuration the
// driver would refuse (cudaErrorInvalidConfiguration) or on a barrier that not every thread reaches.
void launch(dim3 grid, dim3 block, size_t smem_bytes, const std::function<void()>& body);

// Stands in for c10::cuda::CUDAGuard: there is one emulated device.
struct DeviceGuard {
  explicit DeviceGuard(const c10::Device&) {}
};

// The emulated device.
int multiprocessor_count();

// A kernel body's report of a precondition the hardware would silently miscompute on (wmma_emu.h): the
// first one of a launch fails it once the grid has run.
void fault(const std::string& message);

}  // namespace cuda_emu

#define threadIdx (::cuda_emu::thread_idx())
#define blockIdx (::cuda_emu::block_idx())
#define blockDim (::cuda_emu::block_dim())
#define gridDim (::cuda_emu::grid_dim())

inline void __syncthreads() { ::cuda_emu::syncthreads(); }

// CUDA's integer min/max overloads, which device code calls unqualified.
inline int min(int a, int b) { return b < a ? b : a; }
inline int max(int a, int b) { return a < b ? b : a; }
inline int64_t min(int64_t a, int64_t b) { return b < a ? b : a; }
inline int64_t max(int64_t a, int64_t b) { return a < b ? b : a; }
