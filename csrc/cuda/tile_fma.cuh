// The register-tiled FFMA GEMM step shared by the hand-written CUDA kernels (lc2d_kernel.cu,
// linear_kernel.cu):
//   * 256 threads = a 16 x 16 grid, tx = tid % 16, ty = tid / 16;
//   * a 64 x 64 tile of the GEMM result per block (or 16 MA x 16 MB, MA, MB <= 4, for narrow operands);
//     thread (ty, tx) owns the elements (row ty + 16a, column tx + 16b), a < MA, b < MB. The stride-16
//     spread makes every shared-memory read of a warp either a broadcast (rows: 2 distinct words) or 16
//     consecutive words (columns);
//   * the reduction staged through shared memory 16 steps at a time as A[16][64] and B[16][64],
//     converted to the accumulation type on the way in: acc[a][b] += A[k][row] * B[k][col].
#pragma once

#include <ATen/OpMathType.h>

#include <cstdint>
#include <type_traits>

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

// acc[a][b] += A[k][ty + 16a] * B[k][tx + 16b] over the kChunk staged reduction steps, for a < MA and b < MB:
// a result tile of 16 MA rows x 16 MB columns (64 x 64 at MA = MB = 4; narrower tiles serve operands of
// fewer than 64 rows or columns without idle lanes). LA, LB are the staged rows' lengths (>= 16 MA, 16 MB).
template <typename acc_t, int MA, int MB, int LA, int LB>
__device__ __forceinline__ void tile_fma(acc_t (&acc)[MA][MB], const acc_t (&A)[kChunk][LA],
                                         const acc_t (&B)[kChunk][LB], int ty, int tx) {
  static_assert(kSpread * MA <= LA && kSpread * MB <= LB, "staged rows must hold the tile");
#pragma unroll
  for (int k = 0; k < kChunk; ++k) {
    acc_t a[MA], b[MB];
#pragma unroll
    for (int u = 0; u < MA; ++u) a[u] = A[k][ty + kSpread * u];
#pragma unroll
    for (int v = 0; v < MB; ++v) b[v] = B[k][tx + kSpread * v];
#pragma unroll
    for (int u = 0; u < MA; ++u) {
#pragma unroll
      for (int v = 0; v < MB; ++v) acc[u][v] += a[u] * b[v];
    }
  }
}

// Calls f(row, col, a, b) for the MA x MB result elements thread (ty, tx) owns:
// row = ty + 16a, col = tx + 16b within the block's tile, acc[a][b] their accumulators.
template <int MA = kMicro, int MB = kMicro, typename F>
__device__ __forceinline__ void for_owned(int ty, int tx, F&& f) {
#pragma unroll
  for (int a = 0; a < MA; ++a) {
#pragma unroll
    for (int b = 0; b < MB; ++b) f(ty + kSpread * a, tx + kSpread * b, a, b);
  }
}

// The micro-tile count (16 rows or columns each, at most kMicro) of a kernel's narrow operand of `extent`
// rows: the widest tile that keeps at least 7/8 of its lanes busy over the tiles `extent` needs (48 and 96
// channels take 48-wide tiles, 32 a 32-wide one), else the one that leaves the fewest lanes idle.
inline int micro_tiles(int64_t extent) {
  int best = kMicro;
  int64_t best_idle = -1;
  for (int m = kMicro; m >= 1; --m) {
    const int64_t width = int64_t{kSpread} * m;
    const int64_t padded = (extent + width - 1) / width * width;
    const int64_t idle = padded - extent;
    if (8 * idle <= padded) return m;
    if (best_idle < 0 || idle < best_idle) {
      best = m;
      best_idle = idle;
    }
  }
  return best;
}

// f(std::integral_constant<int, m>) for the runtime micro-tile count m in [1, kMicro]: the kernels take it
// as a template parameter.
template <typename F>
inline void with_micro_tiles(int m, F&& f) {
  switch (m) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    default: f(std::integral_constant<int, 4>{}); break;
  }
}

}  // namespace cuda_tile
}  // namespace bioplaus
