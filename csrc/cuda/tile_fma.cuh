// The register-tiled FFMA GEMM step shared by the hand-written CUDA kernels (lc2d_kernel.cu,
// linear_kernel.cu):
//   * 256 threads = a 16 x 16 grid, tx = tid % 16, ty = tid / 16;
//   * a 64 x 64 tile of the GEMM result per block; thread (ty, tx) owns the 4 x 4 elements
//     (row ty + 16a, column tx + 16b), a, b in [0, 4). The stride-16 spread makes every shared-memory
//     read of a warp either a broadcast (rows: 2 distinct words) or 16 consecutive words (columns);
//   * the reduction staged through shared memory 16 steps at a time as A[16][64] and B[16][64],
//     converted to the accumulation type on the way in: acc[a][b] += A[k][row] * B[k][col].
#pragma once

#include <ATen/OpMathType.h>

namespace bioplaus {
namespace cuda_tile {

constexpr int kThreads = 256;  // per block, seen as a 16 x 16 grid when computing
constexpr int kTile = 64;      // rows and columns of a block's result tile
constexpr int kMicro = 4;      // a thread's result is kMicro x kMicro elements, 16 apart
constexpr int kSpread = 16;    // = kTile / kMicro: the thread grid's side and the spread of a thread's elements
constexpr int kChunk = 16;     // reduction steps staged in shared memory at a time
constexpr int kLd = kTile + 1;  // shared row length; the pad spreads column-wise staging stores over banks
// Staging covers a [kChunk][kTile] operand in kMicro block-wide passes, a thread owning either one
// reduction step (one of kChunk) and every kStepRows-th tile row, or one tile column (one of kTile)
// and every kColRows-th reduction step.
constexpr int kStepRows = kThreads / kChunk;
constexpr int kColRows = kThreads / kTile;
static_assert(kSpread * kSpread == kThreads && kSpread * kMicro == kTile, "compute grid must cover the tile");
static_assert(kStepRows * kMicro == kTile && kColRows * kMicro == kChunk, "staging must cover the operand");

// Blocks per SM the register allocation must allow: 4 (<= 64 registers a thread) with a float
// accumulator, 2 (<= 128) with a double one, whose 4 x 4 tile and operands take twice the registers.
// Stating it fixes the budget instead of leaving it to ptxas's occupancy heuristics, which can pick a
// register cap low enough to spill (docs/performance.md section 2.4).
template <typename scalar_t>
constexpr int kMinBlocks = sizeof(at::opmath_type<scalar_t>) == 8 ? 2 : 4;

// acc[a][b] += A[k][ty + 16a] * B[k][tx + 16b] over the kChunk staged reduction steps.
template <typename acc_t>
__device__ __forceinline__ void tile_fma(acc_t (&acc)[kMicro][kMicro], const acc_t (&A)[kChunk][kLd],
                                         const acc_t (&B)[kChunk][kLd], int ty, int tx) {
#pragma unroll
  for (int k = 0; k < kChunk; ++k) {
    acc_t a[kMicro], b[kMicro];
#pragma unroll
    for (int u = 0; u < kMicro; ++u) {
      a[u] = A[k][ty + kSpread * u];
      b[u] = B[k][tx + kSpread * u];
    }
#pragma unroll
    for (int u = 0; u < kMicro; ++u) {
#pragma unroll
      for (int v = 0; v < kMicro; ++v) acc[u][v] += a[u] * b[v];
    }
  }
}

// Calls f(row, col, a, b) for the kMicro x kMicro result elements thread (ty, tx) owns:
// row = ty + 16a, col = tx + 16b within the block's tile, acc[a][b] their accumulators.
template <typename F>
__device__ __forceinline__ void for_owned(int ty, int tx, F&& f) {
#pragma unroll
  for (int a = 0; a < kMicro; ++a) {
#pragma unroll
    for (int b = 0; b < kMicro; ++b) f(ty + kSpread * a, tx + kSpread * b, a, b);
  }
}

}  // namespace cuda_tile
}  // namespace bioplaus
