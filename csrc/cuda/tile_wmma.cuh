// The tensor-core GEMM step of the fused_tc kernels (lc2d_kernel.cu): WMMA m16n16k16 on 16-bit inputs with
// float accumulation.
//   * 256 threads = 8 warps; a 64 x 64 result tile per block, warp w owning the 16 x 16 sub-tiles
//     (rows 16 * (w % 4), columns 16 * (2 * (w / 4) + t)), t < 2;
//   * the reduction staged 16 steps at a time: A as [64 rows][16 steps] (row-major) and B as
//     [64 columns][16 steps] (B's column-major form), each row kLd elements long: 48 bytes, a multiple of
//     16 as ldm must be, so every 16-row sub-tile starts 768 bytes (a multiple of 32) after the last;
//   * the result leaves through shared memory as float [64][kCld] for the epilogue, which owns elements
//     the way tile_fma.cuh's threads do (row ty + 16a, column tx + 16b).
// The CPU execution layer supplies nvcuda::wmma itself (tests/emulation/wmma_emu.h).
#pragma once

#if defined(BIOPLAUS_CUDA_EMULATION)
#include "wmma_emu.h"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#endif

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

namespace bioplaus {
namespace cuda_wmma {

constexpr int kWarps = 8;
constexpr int kStep = 16;         // reduction steps per staged chunk: one mma's K
constexpr int kLd = kStep + 8;    // staged operand row length (elements)
constexpr int kCld = 64 + 4;      // result row length (floats): 272 bytes, a multiple of 16

// The wmma element type with the bits of a 16-bit scalar_t.
template <typename scalar_t>
struct Element;
#if defined(BIOPLAUS_CUDA_EMULATION)
template <>
struct Element<c10::Half> {
  using type = c10::Half;
};
template <>
struct Element<c10::BFloat16> {
  using type = c10::BFloat16;
};
#else
template <>
struct Element<c10::Half> {
  using type = __half;
};
template <>
struct Element<c10::BFloat16> {
  using type = __nv_bfloat16;
};
#endif

using Acc = nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float>;

// c[t] += A[rows of warp w] * B[columns 2 * (w / 4) + t] over the 16 staged steps.
template <typename scalar_t>
__device__ __forceinline__ void mma_step(Acc (&c)[2], const scalar_t (&A)[64][kLd], const scalar_t (&B)[64][kLd],
                                         int warp) {
  using namespace nvcuda;
  using elem_t = typename Element<scalar_t>::type;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, elem_t, wmma::row_major> a;
  wmma::load_matrix_sync(a, reinterpret_cast<const elem_t*>(&A[16 * (warp % 4)][0]), kLd);
#pragma unroll
  for (int t = 0; t < 2; ++t) {
    wmma::fragment<wmma::matrix_b, 16, 16, 16, elem_t, wmma::col_major> b;
    wmma::load_matrix_sync(b, reinterpret_cast<const elem_t*>(&B[16 * (2 * (warp / 4) + t)][0]), kLd);
    wmma::mma_sync(c[t], a, b, c[t]);
  }
}

__device__ __forceinline__ void zero(Acc (&c)[2]) {
#pragma unroll
  for (int t = 0; t < 2; ++t) nvcuda::wmma::fill_fragment(c[t], 0.0f);
}

// C[rows][columns] of warp w's sub-tiles = c (row-major, kCld floats a row).
__device__ __forceinline__ void store(float (&C)[64][kCld], const Acc (&c)[2], int warp) {
#pragma unroll
  for (int t = 0; t < 2; ++t) {
    nvcuda::wmma::store_matrix_sync(&C[16 * (warp % 4)][16 * (2 * (warp / 4) + t)], c[t], kCld,
                                    nvcuda::wmma::mem_row_major);
  }
}

}  // namespace cuda_wmma
}  // namespace bioplaus
