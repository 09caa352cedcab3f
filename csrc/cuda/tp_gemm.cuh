// The GEMM of the Linear inverse layers of target propagation, with a fused epilogue (CUDA only):
//
//   acc_s[m, i] = sum_k A_s[m, k] * V[i, k],   s < kInputs (1 or 2), m < M, i < Nc, k < K
//
// A_s [M, K] and V [Nc, K] row-major contiguous (A = the activations above, V = the inverse weight
// [D_in, D_out], so acc = y V^T). With kInputs = 2 (t_above and h_above of a difference target) each V
// tile staged in shared memory serves both inputs: one pass over V for both applications of g. The
// epilogue functor receives (m, i, acc_0, acc_1) once per output element, in registers.
//
// Shape: 256 threads = a 16 x 16 grid (tx = tid % 16, ty = tid / 16); a 64 x 64 tile (rows m, columns i)
// per block, thread (ty, tx) owning rows ty + 16a and columns tx + 16b, a, b < 4; the reduction staged 16
// at a time as As[s][k][row] and Bs[k][col] (row length 65: the transposing stores hit distinct banks),
// converted to the accumulation type on the way in. Reads of As are broadcasts (2 rows per warp), reads of
// Bs 16 consecutive words; global loads read 16 consecutive k per row (coalesced). No atomics: every output
// element is reduced by one thread in a fixed order, so results are bit-identical run to run.
// Indexing: row and column offsets are 64-bit (m * K, i * K), so tensors may pass 2^31 elements.
#pragma once

#include "cuda/launch.cuh"

#include <ATen/OpMathType.h>

#include <stdint.h>

namespace bioplaus {
namespace tp {

constexpr int kGemmThreads = 256;
constexpr int kGemmTile = 64;
constexpr int kGemmStep = 16;

template <typename scalar_t, int kInputs, typename Epilogue>
__global__ void __launch_bounds__(kGemmThreads)
    inverse_gemm_kernel(const scalar_t* __restrict__ a0, const scalar_t* __restrict__ a1,
                        const scalar_t* __restrict__ v, int64_t M, int64_t Nc, int64_t K, Epilogue epilogue) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t As[kInputs][kGemmStep][kGemmTile + 1];
  __shared__ acc_t Bs[kGemmStep][kGemmTile + 1];
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kGemmTile;
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * kGemmTile;
  const scalar_t* a[2] = {a0, a1};
  acc_t acc[kInputs][4][4];
#pragma unroll
  for (int s = 0; s < kInputs; ++s)
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[s][r][c] = acc_t(0);

  for (int64_t k0 = 0; k0 < K; k0 += kGemmStep) {
    // Stage: element q of this thread is (row = idx / 16, kk = idx % 16), idx = tid + 256 q.
#pragma unroll
    for (int q = 0; q < (kGemmTile * kGemmStep) / kGemmThreads; ++q) {
      const int idx = tid + kGemmThreads * q, row = idx / kGemmStep, kk = idx % kGemmStep;
      const int64_t k = k0 + kk;
      const int64_t m = m0 + row, i = i0 + row;
#pragma unroll
      for (int s = 0; s < kInputs; ++s) {
        As[s][kk][row] = (m < M && k < K) ? static_cast<acc_t>(a[s][m * K + k]) : acc_t(0);
      }
      Bs[kk][row] = (i < Nc && k < K) ? static_cast<acc_t>(v[i * K + k]) : acc_t(0);
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kGemmStep; ++kk) {
      acc_t b[4];
#pragma unroll
      for (int c = 0; c < 4; ++c) b[c] = Bs[kk][tx + 16 * c];
#pragma unroll
      for (int s = 0; s < kInputs; ++s)
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const acc_t av = As[s][kk][ty + 16 * r];
#pragma unroll
          for (int c = 0; c < 4; ++c) acc[s][r][c] += av * b[c];
        }
    }
    __syncthreads();
  }
#pragma unroll
  for (int r = 0; r < 4; ++r)
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int64_t m = m0 + ty + 16 * r, i = i0 + tx + 16 * c;
      if (m < M && i < Nc) epilogue(m, i, acc[0][r][c], acc[kInputs - 1][r][c]);
    }
}

// Launches the kernel for M x Nc outputs; M = 0 or Nc = 0 launches nothing.
template <typename scalar_t, int kInputs, typename Epilogue>
void launch_inverse_gemm(const scalar_t* a0, const scalar_t* a1, const scalar_t* v, int64_t M, int64_t Nc,
                         int64_t K, Epilogue epilogue) {
  if (M == 0 || Nc == 0) return;
  const dim3 grid(static_cast<unsigned>((Nc + kGemmTile - 1) / kGemmTile),
                  static_cast<unsigned>((M + kGemmTile - 1) / kGemmTile));
  launch_kernel(inverse_gemm_kernel<scalar_t, kInputs, Epilogue>, grid, kGemmThreads, 0, a0, a1, v, M, Nc, K,
                epilogue);
}

}  // namespace tp
}  // namespace bioplaus
