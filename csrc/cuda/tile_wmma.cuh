// The tensor-core GEMM step of the fused_tc kernels (lc2d_kernel.cu): WMMA with float accumulation,
// m16n16k16 on float16/bfloat16 inputs and m16n16k8 TF32 on float32 inputs.
//   * 256 threads = 8 warps; a 64 x 64 result tile per block, warp w owning the 16 x 16 sub-tiles
//     (rows 16 * (w % 4), columns 16 * (2 * (w / 4) + t)), t < 2;
//   * the reduction staged 16 steps at a time: A as [64 rows][16 steps] (row-major) and B as
//     [64 columns][16 steps] (B's column-major form), each row kLd = 24 elements long (48 or 96 bytes, a
//     multiple of 16 as ldm must be), so every 16-row sub-tile, and the second K = 8 half of a float row,
//     starts a multiple of 32 bytes after the first;
//   * the result leaves through shared memory as float [64][kCld] for the epilogue, which owns elements
//     the way tile_fma.cuh's threads do (row ty + 16a, column tx + 16b); a kernel that resumes from
//     partial sums enters them the same way (load).
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

// The mma shape and operand types of a staged scalar_t: 16-bit types multiply as they are (m16n16k16);
// float multiplies as TF32 (m16n16k8: the fragment's elements rounded to TF32 after the load, as
// cuBLAS does when torch allows TF32).
template <typename scalar_t>
struct Mma;
#if defined(BIOPLAUS_CUDA_EMULATION)
template <>
struct Mma<c10::Half> {
  static constexpr int K = 16;
  using elem = c10::Half;  // the fragment's element type
  using ptr = c10::Half;   // what load_matrix_sync reads
};
template <>
struct Mma<c10::BFloat16> {
  static constexpr int K = 16;
  using elem = c10::BFloat16;
  using ptr = c10::BFloat16;
};
#else
template <>
struct Mma<c10::Half> {
  static constexpr int K = 16;
  using elem = __half;
  using ptr = __half;
};
template <>
struct Mma<c10::BFloat16> {
  static constexpr int K = 16;
  using elem = __nv_bfloat16;
  using ptr = __nv_bfloat16;
};
#endif
template <>
struct Mma<float> {
  static constexpr int K = 8;
  using elem = nvcuda::wmma::precision::tf32;
  using ptr = float;
};

template <typename scalar_t>
using Acc = nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, Mma<scalar_t>::K, float>;

// Rounds a TF32 fragment's elements (a no-op for the 16-bit types).
template <typename Frag>
__device__ __forceinline__ void to_tf32(Frag& f, float) {
#pragma unroll
  for (int e = 0; e < f.num_elements; ++e) f.x[e] = nvcuda::wmma::__float_to_tf32(f.x[e]);
}
template <typename Frag, typename scalar_t>
__device__ __forceinline__ void to_tf32(Frag&, scalar_t) {}

// c[t] += A[rows of warp w] * B[columns 2 * (w / 4) + t] over the 16 staged steps (one mma of K = 16, or
// two of K = 8 for TF32).
template <typename scalar_t>
__device__ __forceinline__ void mma_step(Acc<scalar_t> (&c)[2], const scalar_t (&A)[64][kLd],
                                         const scalar_t (&B)[64][kLd], int warp) {
  using namespace nvcuda;
  using M = Mma<scalar_t>;
#pragma unroll
  for (int k = 0; k < kStep; k += M::K) {
    wmma::fragment<wmma::matrix_a, 16, 16, M::K, typename M::elem, wmma::row_major> a;
    wmma::load_matrix_sync(a, reinterpret_cast<const typename M::ptr*>(&A[16 * (warp % 4)][k]), kLd);
    to_tf32(a, scalar_t());
#pragma unroll
    for (int t = 0; t < 2; ++t) {
      wmma::fragment<wmma::matrix_b, 16, 16, M::K, typename M::elem, wmma::col_major> b;
      wmma::load_matrix_sync(b, reinterpret_cast<const typename M::ptr*>(&B[16 * (2 * (warp / 4) + t)][k]), kLd);
      to_tf32(b, scalar_t());
      wmma::mma_sync(c[t], a, b, c[t]);
    }
  }
}

template <typename Frag>
__device__ __forceinline__ void zero(Frag (&c)[2]) {
#pragma unroll
  for (int t = 0; t < 2; ++t) nvcuda::wmma::fill_fragment(c[t], 0.0f);
}

// C[rows][columns] of warp w's sub-tiles = c (row-major, kCld floats a row).
template <typename Frag>
__device__ __forceinline__ void store(float (&C)[64][kCld], const Frag (&c)[2], int warp) {
#pragma unroll
  for (int t = 0; t < 2; ++t) {
    nvcuda::wmma::store_matrix_sync(&C[16 * (warp % 4)][16 * (2 * (warp / 4) + t)], c[t], kCld,
                                    nvcuda::wmma::mem_row_major);
  }
}

// c = C[rows][columns] of warp w's sub-tiles (store's inverse), to resume from sums stored before.
template <typename Frag>
__device__ __forceinline__ void load(Frag (&c)[2], const float (&C)[64][kCld], int warp) {
#pragma unroll
  for (int t = 0; t < 2; ++t) {
    nvcuda::wmma::load_matrix_sync(c[t], &C[16 * (warp % 4)][16 * (2 * (warp / 4) + t)], kCld,
                                   nvcuda::wmma::mem_row_major);
  }
}

}  // namespace cuda_wmma
}  // namespace bioplaus
