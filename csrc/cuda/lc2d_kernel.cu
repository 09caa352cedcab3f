// Locally connected 2D (untied convolution): CUDA kernels of the bioplaus::lc2d_* ops (contract in
// lc2d.h).
//
// Each pass is a set of small GEMMs, one per output position (forward, weight gradient) or per input
// pixel (input gradient). Three algorithms compute them (docs/algorithms.md; lc2d_selection.h picks one
// per call): "fused", the hand-written register-tiled FFMA step of tile_fma.cuh (256 threads, a 64 x 64
// result tile per block, narrowed to 16, 32 or 48 on the channel side where that idles fewer lanes, the
// reduction staged 16 steps at a time); "fused_tc", the same kernels on tensor cores (tile_wmma.cuh); and
// "library", batched cuBLAS GEMMs over gathered chunks (below the fused kernels).
// The fused kernels materialise nothing in global memory (implicit im2col: patch elements are gathered
// from x while staging, zero outside the image), and no kernel uses atomics: every output element is
// written once by one thread after a reduction in a fixed order, so results are bit-identical run to run.
//
// Accumulation is in at::opmath_type<scalar_t>: float for float32/float16/bfloat16, double for
// float64. Indexing: offsets within one sample of an activation ([C, H, W]) and within one
// position's weight block ([C_out, K]) are 32-bit, as are all per-axis values (make_dims checks that
// they fit); the sample and position bases, n * sample and p * block, are 64-bit, so whole tensors
// may pass 2^31 elements.
#include "lc2d.h"
#include "lc2d_selection.h"

#include "common/checks.h"
#include "cuda/launch.cuh"
#include "cuda/tile_fma.cuh"
#include "cuda/tile_wmma.cuh"

#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/baddbmm.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <climits>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

namespace bioplaus {
namespace {

using namespace cuda_tile;

// The geometry in the 32-bit form the kernels use (see make_dims).
struct Lc2dDims {
  int N, C_in, H, W;
  int C_out, H_out, W_out;
  int kH, kW, sH, sW, pT, pL, dH, dW;
  int P;         // H_out * W_out output positions, p = i * W_out + j
  int HW;        // H * W input pixels
  int K;         // C_in * kH * kW, patch length; k = (c * kH + r) * kW + s
  int x_sample;  // C_in * H * W, elements of one sample of x (and of grad_x)
  int y_sample;  // C_out * P, elements of one sample of y (and of grad_y)
  int w_block;   // C_out * K, elements of one position's weight block weight[i, j]
};

// Patch element k = (c * kH + r) * kW + s of position (i, j): whether its pixel
// (i * sH - pT + r * dH, j * sW - pL + s * dW) lies inside the image, and then its offset within one sample
// of x (0 otherwise).
struct PatchPixel {
  bool in;
  int off;
};

__device__ __forceinline__ PatchPixel patch_pixel(const Lc2dDims& d, int i, int j, int k) {
  const int kHW = d.kH * d.kW;
  const int c = k / kHW;
  const int rs = k - c * kHW;
  const int r = rs / d.kW;
  const int s = rs - r * d.kW;
  const int ih = i * d.sH - d.pT + r * d.dH;
  const int iw = j * d.sW - d.pL + s * d.dW;
  const bool in = ih >= 0 && ih < d.H && iw >= 0 && iw < d.W;
  return {in, in ? c * d.HW + ih * d.W + iw : 0};
}

// Four consecutive elements as one vector load (16 bytes of float, 8 of a 16-bit type, 32 of double): the
// forward kernels stage weight rows this way where K is a multiple of 4 and the weight tensor's data is
// aligned to the vector (vector_weights() on the host), so that every row and 4-step of a row is too.
template <typename scalar_t>
struct alignas(4 * sizeof(scalar_t)) Vec4 {
  scalar_t v[4];
};

template <typename scalar_t>
__device__ __forceinline__ Vec4<scalar_t> load_vec4(const scalar_t* p) {
#if defined(BIOPLAUS_CUDA_EMULATION)
  // The hardware faults on a misaligned vector access (cudaErrorMisalignedAddress); so does the emulation.
  if (reinterpret_cast<uintptr_t>(p) % sizeof(Vec4<scalar_t>) != 0) {
    cuda_emu::fault("a " + std::to_string(sizeof(Vec4<scalar_t>)) + "-byte vector load from a misaligned address");
    return {};
  }
#endif
  return *reinterpret_cast<const Vec4<scalar_t>*>(p);
}

// The kernel taps that can cover input coordinate a = ih + pT along one axis (or iw + pL): i * stride +
// r * dil = a with 0 <= i < out and 0 <= r < k holds only for r in [lo, hi] (those with a - r * dil
// divisible by stride cover it):
//   i <= out - 1  <=>  r * dil >= a - (out - 1) * stride,      i >= 0  <=>  r * dil <= a.
struct TapRange {
  int lo, hi;
};

__device__ __forceinline__ TapRange covering_taps(int a, int out, int stride, int dil, int k) {
  const int span = a - (out - 1) * stride;
  return {span > 0 ? (span - 1) / dil + 1 : 0, min(k - 1, a / dil)};
}

// The input-gradient kernels' pixel groups: GH x GW input pixels each, groups_w groups along a row of the
// image (input_groups() picks them on the host).
struct PixelGroups {
  int GH, GW, groups_w;
};

// The positions along one axis that cover some coordinate of [a_first, a_last] (a = ih + pT): the i with
// i * stride + r * dil = a for some a of the range and 0 <= r < k lie in
//   [ceil((a_first - (k - 1) * dil) / stride), floor(a_last / stride)], clipped to [0, out - 1]
// (at dilation > 1, some i inside cover nothing: the kernel's terms for them are zero).
__device__ __forceinline__ TapRange covering_positions(int a_first, int a_last, int out, int stride, int dil, int k) {
  const int lo = a_first - (k - 1) * dil;
  return {lo > 0 ? (lo + stride - 1) / stride : 0, min(out - 1, a_last / stride)};
}

// The tap r by which position i covers coordinate a along one axis (i * stride + r * dil = a, 0 <= r < k),
// or -1 where it does not cover a; a < 0 (a column with no pixel) gives -1 too.
__device__ __forceinline__ int covering_tap(int a, int i, int stride, int dil, int k) {
  const int t = a - i * stride;
  if (a < 0 || t < 0 || t % dil != 0) return -1;
  const int r = t / dil;
  return r < k ? r : -1;
}

// The part of the input-gradient GEMM that block (group, u-tile) computes: its group's first pixel
// (ih0, iw0), its first column u0, and the positions covering some pixel of the group, per axis.
struct GroupTile {
  int ih0, iw0, u0;
  TapRange rows, cols;
};

__device__ __forceinline__ GroupTile group_tile(const Lc2dDims& d, const PixelGroups& pg, int group, int u0) {
  const int gh = group / pg.groups_w;
  const int ih0 = gh * pg.GH;
  const int iw0 = (group - gh * pg.groups_w) * pg.GW;
  const int ih_last = min(ih0 + pg.GH, d.H) - 1;  // edge groups end at the image's edge
  const int iw_last = min(iw0 + pg.GW, d.W) - 1;
  return {ih0, iw0, u0, covering_positions(ih0 + d.pT, ih_last + d.pT, d.H_out, d.sH, d.dH, d.kH),
          covering_positions(iw0 + d.pL, iw_last + d.pL, d.W_out, d.sW, d.dW, d.kW)};
}

// Column u = (c * GH + py) * GW + px of a group: the offset c * H * W + ih * W + iw of its pixel
// (ih0 + py, iw0 + px) within one sample of x, or -1 where u < 0, u >= C_in * GH * GW, or the pixel lies
// past the image's edge.
__device__ __forceinline__ int column_offset(const Lc2dDims& d, const PixelGroups& pg, const GroupTile& gt, int u) {
  const int area = pg.GH * pg.GW;
  if (u < 0 || u >= d.C_in * area) return -1;
  const int c = u / area;
  const int rem = u - c * area;
  const int py = rem / pg.GW;
  const int ih = gt.ih0 + py;
  const int iw = gt.iw0 + rem - py * pg.GW;
  return ih < d.H && iw < d.W ? c * d.HW + ih * d.W + iw : -1;
}

// A staging column's pixel: its padded coordinates ah = ih + pT, aw = iw + pL (ah = -1 where the column has
// no pixel: covering_tap then finds no tap), and c_off = c * kH * kW, the offset of (c, r = 0, s = 0) within a
// row of a position's weight block.
struct GroupColumn {
  int ah, aw, c_off;
};

__device__ __forceinline__ GroupColumn group_column(const Lc2dDims& d, const PixelGroups& pg, const GroupTile& gt,
                                                    int u) {
  const int off = column_offset(d, pg, gt, u);
  if (off < 0) return {-1, 0, 0};
  const int c = off / d.HW;
  const int pix = off - c * d.HW;
  const int ih = pix / d.W;
  return {ih + d.pT, pix - ih * d.W + d.pL, c * d.kH * d.kW};
}

// The offset (c * kH + r) * kW + s, within a row of position (i, j)'s weight block, of column gc's channel
// at the taps (r, s) by which (i, j) covers gc's pixel; -1 where (i, j) does not cover it (or gc has none).
__device__ __forceinline__ int covering_offset(const Lc2dDims& d, const GroupColumn& gc, int i, int j) {
  const int r = covering_tap(gc.ah, i, d.sH, d.dH, d.kH);
  const int s = covering_tap(r >= 0 ? gc.aw : -1, j, d.sW, d.dW, d.kW);  // r < 0 gives s < 0
  return s >= 0 ? gc.c_off + r * d.kW + s : -1;
}

// Element e of the feedback matrix B of the spec `f` (common/feedback.h) from weight[e], in scalar_t as a stored
// B holds it: "weight" (a stored B included) or "sign". The generating modes never reach the fused kernels:
// the host materialises their B first (fused_backward_input).
template <typename scalar_t>
__device__ __forceinline__ scalar_t feedback_at(const FeedbackSpec& f, const scalar_t* __restrict__ weight, int64_t e) {
  const scalar_t w = f.reads_weight() ? weight[e] : scalar_t(0);
  return combine_feedback<scalar_t, at::opmath_type<scalar_t>>(f, scalar_t(0), w);
}

// The output channels an input-gradient launch reduces over, and where it reads B: `count` channels
// o_lo + t, t < count, whose dY[n, o_lo + t] the launch reads from grad_y + o_lo * P (the host offsets the
// pointer), and B_p[o_lo + t, k] from b[p * b_block + t * K + k] (64-bit). Over weight itself (or a whole
// stored B): o_lo = 0, count = C_out, b_block = C_out * K; over a chunk of a materialised B: b_block = count * K.
struct ChannelRange {
  int count, b_block;
};

// What an input-gradient kernel writes: grad_x in scalar_t, or, resuming (kResume), a partial sum in the
// accumulation type that the launch reads back as its starting value, so that launches over consecutive
// channel ranges add up to one reduction over all channels with a single rounding to scalar_t at the end.
template <typename scalar_t, bool kResume>
using input_out_t = std::conditional_t<kResume, at::opmath_type<scalar_t>, scalar_t>;

// Forward. Block (p, o-tile) computes Y_p[n, o] = bias[o, p] + sum_k X_p[n, k] * W_p[o, k] for
// o in [o0, o0 + TN), TN = 16 MB (MB = micro_tiles(C_out): 48 or 96 channels take 48-wide tiles), and every
// n, the batch in tiles of 64 rows; X_p[n, k] is the patch element x[n, c, i*sH - pT + r*dH, j*sW - pL + s*dW]
// (zero outside the image) and W_p = weight[i, j] as [C_out, K].
//   blockIdx.x = p = i * W_out + j (consecutive blocks are neighbouring positions: they share input
//   pixels in L2 and write neighbouring y elements), blockIdx.y = o-tile, o0 = TN * blockIdx.y.
//   Compute: thread (ty, tx) owns samples n0 + ty + 16a (a < 4) and channels o0 + tx + 16b (b < MB).
//   Staging: thread owns step kk = tid % 16 of the chunk and tile rows row = tid / 16 + 16m (16 = kStepRows),
//   m < 4 for X and m < MB for W:
//     Xs[kk][row] = X_p[n0 + row, k0 + kk],   Ws[kk][row] = W_p[o0 + row, k0 + kk].
//   Consecutive threads read consecutive k: contiguous weights and, within a kernel row, input
//   pixels dW apart. A thread's k is the same for its rows, so it decodes (c, r, s) once a chunk.
//   With vec_w (load_vec4), thread tid < 4 TN stages Ws[4v + u][row] = W_p[o0 + row, k0 + 4v + u], u < 4,
//   row = tid / 4, v = tid % 4, from one vector load instead.
template <typename scalar_t, int MB>
__global__ void __launch_bounds__(kThreads, kMinBlocks<scalar_t>)
    lc2d_forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ weight,
                        const scalar_t* __restrict__ bias, scalar_t* __restrict__ y, const Lc2dDims d,
                        const bool vec_w) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int TN = kSpread * MB;
  __shared__ acc_t Xs[kChunk][kLd];
  __shared__ acc_t Ws[kChunk][TN + 1];

  const int p = static_cast<int>(blockIdx.x);
  const int i = p / d.W_out;
  const int j = p - i * d.W_out;
  const int o0 = static_cast<int>(blockIdx.y) * TN;
  const int tid = static_cast<int>(threadIdx.x);
  const int tx = tid % kSpread, ty = tid / kSpread;
  const int kk = tid % kChunk, row0 = tid / kChunk;  // row0 < kStepRows

  const scalar_t* Wp = weight + static_cast<int64_t>(p) * d.w_block;

  for (int n0 = 0; n0 < d.N; n0 += kTile) {
    acc_t acc[kMicro][MB] = {};
    for (int k0 = 0; k0 < d.K; k0 += kChunk) {
      const int k = k0 + kk;
      // k is a real patch index whose pixel lies inside the image, at px.off within one sample of x
      const PatchPixel px = k < d.K ? patch_pixel(d, i, j, k) : PatchPixel{false, 0};
#pragma unroll
      for (int m = 0; m < kMicro; ++m) {
        const int row = row0 + kStepRows * m;
        const int n = n0 + row;
        Xs[kk][row] = (px.in && n < d.N) ? static_cast<acc_t>(x[static_cast<int64_t>(n) * d.x_sample + px.off])
                                         : acc_t(0);
      }
      if (vec_w) {
        if (tid < 4 * TN) {
          const int row = tid / 4, k4 = 4 * (tid % 4);
          const int o = o0 + row;
          // K is a multiple of 4: a 4-step starting inside the patch lies inside it
          const Vec4<scalar_t> w = (k0 + k4 < d.K && o < d.C_out) ? load_vec4(Wp + o * d.K + k0 + k4) : Vec4<scalar_t>{};
#pragma unroll
          for (int u = 0; u < 4; ++u) Ws[k4 + u][row] = static_cast<acc_t>(w.v[u]);
        }
      } else {
#pragma unroll
        for (int m = 0; m < MB; ++m) {
          const int row = row0 + kStepRows * m;
          const int o = o0 + row;
          Ws[kk][row] = (k < d.K && o < d.C_out) ? static_cast<acc_t>(Wp[o * d.K + k]) : acc_t(0);
        }
      }
      __syncthreads();
      tile_fma(acc, Xs, Ws, ty, tx);
      __syncthreads();  // the next chunk overwrites Xs / Ws
    }
    for_owned<kMicro, MB>(ty, tx, [&](int row, int col, int a, int b) {
      const int n = n0 + row;
      const int o = o0 + col;
      if (n < d.N && o < d.C_out) {
        const int plane = o * d.P + p;  // (o, i, j) within one sample of y, and within bias
        acc_t v = acc[a][b];
        if (bias != nullptr) v += static_cast<acc_t>(bias[plane]);
        y[static_cast<int64_t>(n) * d.y_sample + plane] = static_cast<scalar_t>(v);
      }
    });
  }
}

// Weight gradient. Block (p, k-tile, o-tile) computes dW_p[o, k] = sum_n dY_p[n, o] * X_p[n, k] for
// o in [o0, o0 + TA), TA = 16 MA (MA = micro_tiles(C_out)), k in [k0, k0 + 64), reducing over the whole batch
// inside the block (16 samples per chunk), then writes each weight element once. dY_p[n, o] = grad_y[n, o, i, j].
//   blockIdx.x = p, blockIdx.y = k-tile (k0 = 64 * blockIdx.y), blockIdx.z = o-tile (o0 = TA * blockIdx.z).
//   Compute: thread (ty, tx) owns channels o0 + ty + 16a (a < MA) and patch indices k0 + tx + 16b (b < 4)
//   (consecutive tx write consecutive k of grad_weight).
//   Staging: thread owns tile column col = tid % 64 and chunk steps q = tid / 64 + 4m, m < 4
//   (4 = kColRows):
//     Gs[q][col] = dY_p[n0 + q, o0 + col] (col < TA),   Xs[q][col] = X_p[n0 + q, k0 + col].
//   A thread's k and o never change, so its (c, r, s) decode and bounds test happen once.
//   The k-tile-0 blocks also write grad_bias[o, p] = sum_n grad_y[n, o, p]: thread tid < TA sums column
//   tid of each staged Gs in batch order (a fixed order: deterministic).
template <typename scalar_t, int MA>
__global__ void __launch_bounds__(kThreads, kMinBlocks<scalar_t>)
    lc2d_backward_weight_kernel(const scalar_t* __restrict__ grad_y, const scalar_t* __restrict__ x,
                                scalar_t* __restrict__ grad_weight, scalar_t* __restrict__ grad_bias,
                                const Lc2dDims d) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int TA = kSpread * MA;
  __shared__ acc_t Gs[kChunk][TA + 1];
  __shared__ acc_t Xs[kChunk][kLd];

  const int p = static_cast<int>(blockIdx.x);
  const int i = p / d.W_out;
  const int j = p - i * d.W_out;
  const int k0 = static_cast<int>(blockIdx.y) * kTile;
  const int o0 = static_cast<int>(blockIdx.z) * TA;
  const bool sums_bias = blockIdx.y == 0;
  const int tid = static_cast<int>(threadIdx.x);
  const int tx = tid % kSpread, ty = tid / kSpread;
  const int col = tid % kTile, q0 = tid / kTile;

  // This thread's staging column: patch index k (its pixel and whether it is in the image) and channel o.
  const int k = k0 + col;
  const PatchPixel px = k < d.K ? patch_pixel(d, i, j, k) : PatchPixel{false, 0};
  const bool stages_g = col < TA;
  const int o = o0 + col;
  const bool o_in = stages_g && o < d.C_out;
  const int gy_off = o_in ? o * d.P + p : 0;  // (o, i, j) within one sample of grad_y

  acc_t acc[MA][kMicro] = {};
  acc_t bias_sum = 0;
  for (int n0 = 0; n0 < d.N; n0 += kChunk) {
#pragma unroll
    for (int m = 0; m < kMicro; ++m) {
      const int q = q0 + kColRows * m;
      const int n = n0 + q;
      if (stages_g) {
        Gs[q][col] = (o_in && n < d.N) ? static_cast<acc_t>(grad_y[static_cast<int64_t>(n) * d.y_sample + gy_off])
                                       : acc_t(0);
      }
      Xs[q][col] = (px.in && n < d.N) ? static_cast<acc_t>(x[static_cast<int64_t>(n) * d.x_sample + px.off])
                                      : acc_t(0);
    }
    __syncthreads();
    tile_fma(acc, Gs, Xs, ty, tx);
    if (sums_bias && tid < TA) {
#pragma unroll
      for (int q = 0; q < kChunk; ++q) bias_sum += Gs[q][tid];
    }
    __syncthreads();  // the next chunk overwrites Gs / Xs
  }

  scalar_t* dWp = grad_weight + static_cast<int64_t>(p) * d.w_block;  // dW_p as [C_out, K]
  for_owned<MA, kMicro>(ty, tx, [&](int row, int col_, int a, int b) {
    const int oa = o0 + row, kb = k0 + col_;
    if (oa < d.C_out && kb < d.K) dWp[oa * d.K + kb] = static_cast<scalar_t>(acc[a][b]);
  });
  if (sums_bias && tid < TA && o0 + tid < d.C_out) {
    grad_bias[(o0 + tid) * d.P + p] = static_cast<scalar_t>(bias_sum);
  }
}

// Input gradient, as a gather over pixel groups. For an input pixel (ih, iw),
//   dX[n, c, ih, iw] = sum over covering (i, r), (j, s) of sum_o dY[n, o, i, j] * Bt[i, j, o, c, r, s],
// where (i, r) covers ih when i * sH + r * dH = ih + pT with 0 <= i < H_out and 0 <= r < kH (same for (j, s)
// and iw with pL), and Bt_p = Bt[i, j] is the feedback matrix of position p = i * W_out + j (below).
// Block (group, u-tile) computes this for the GH x GW pixels (ih0 + py, iw0 + px) of one pixel group and
// all C_in channels as one GEMM: rows n (every n, in batch tiles of 64), columns u = (c * GH + py) * GW + px,
// u in [u0, u0 + TB), TB = 16 MB (MB = micro_tiles(C_in * GH * GW)), and a reduction over (i, j, o) for
// the positions (i, j) that cover any pixel of the group (covering_positions, per axis) and every o,
// 16 channels per chunk; the term of column u is zero where (i, j) does not cover u's pixel. A group of one
// pixel reduces over exactly its covering positions (no zero terms at dilation 1). Larger groups serve
// few input channels with large kernels or strides, where one pixel's C_in columns would idle most lanes
// of the 16-wide tile: ImageNet L1 (3 channels, k9 s4) takes 4 x 4 groups, 48 columns, at the price of
// the zero terms of positions that cover only part of the group (input_groups() on the host picks the
// group). Every weight element is staged by the one group that holds its pixel, once per batch tile.
//   blockIdx.x = group = gh * groups_w + gw (ih0 = gh * GH, iw0 = gw * GW; groups run along rows, so
//   consecutive blocks share covering positions in L2), blockIdx.y = u-tile (u0 = TB * blockIdx.y).
//   Compute: thread (ty, tx) owns samples n0 + ty + 16a (a < 4) and columns u0 + tx + 16b (b < MB).
//   Staging: thread owns tile column col = tid % 64 and chunk steps q = tid / 64 + 4m, m < 4
//   (4 = kColRows):
//     Gs[q][col] = dY[n0 + col, o_lo + o0 + q, i, j],   Ws[q][col] = Bt_p[o_lo + o0 + q, u0 + col] (col < TB),
//   o0 + q < count (ChannelRange), where Bt_p[o_lo + t, u] = B_p[o_lo + t, (c * kH + r) * kW + s] (at
//   b[p * b_block + t * K + ...], 64-bit) for u's channel c and the taps (r, s) by which (i, j) covers u's
//   pixel, and 0 where it does not cover it, or u lies past C_in * GH * GW or its pixel past the image's
//   edge. A thread's staging sample, column and pixel are fixed within a batch tile, and its taps within a
//   position.
//   The reduction runs over the launch's channels only; resuming (kResume), each batch tile starts from the
//   partial sums in grad_x (input_out_t) instead of zero.
// B is "weight" mode's weight (or a stored B) or "sign" mode's transform of it, formed on load (feedback_at);
// the generating modes' B is materialised by the host first (fused_backward_input).
// Register budget: kMinBlocks, and 3 blocks per SM (<= 80 registers) for a resuming float accumulator, whose
// partial-sum loads spill at 64.
template <typename scalar_t, bool kResume>
constexpr int kInputMinBlocks = kResume && sizeof(at::opmath_type<scalar_t>) == 4 ? 3 : kMinBlocks<scalar_t>;

template <typename scalar_t, bool kResume, int MB>
__global__ void __launch_bounds__(kThreads, (kInputMinBlocks<scalar_t, kResume>))
    lc2d_backward_input_kernel(const scalar_t* __restrict__ grad_y, const scalar_t* __restrict__ b,
                               input_out_t<scalar_t, kResume>* __restrict__ grad_x, const Lc2dDims d,
                               const PixelGroups pg, const FeedbackSpec f, const ChannelRange ch) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int TB = kSpread * MB;
  __shared__ acc_t Gs[kChunk][kLd];
  __shared__ acc_t Ws[kChunk][TB + 1];

  const GroupTile gt = group_tile(d, pg, static_cast<int>(blockIdx.x), static_cast<int>(blockIdx.y) * TB);
  const int tid = static_cast<int>(threadIdx.x);
  const int tx = tid % kSpread, ty = tid / kSpread;
  const int col = tid % kTile, q0 = tid / kTile;
  const GroupColumn gc = group_column(d, pg, gt, col < TB ? gt.u0 + col : -1);

  for (int n0 = 0; n0 < d.N; n0 += kTile) {
    const int n = n0 + col;  // this thread's staging sample
    const bool n_in = n < d.N;
    const scalar_t* gy_n = grad_y + (n_in ? static_cast<int64_t>(n) * d.y_sample : 0);  // dY[n, o_lo]
    acc_t acc[kMicro][MB] = {};
    if constexpr (kResume) {  // the group's origin recomputed, as in the epilogue
      const GroupTile origin = group_tile(d, pg, static_cast<int>(blockIdx.x), static_cast<int>(blockIdx.y) * TB);
      for_owned<kMicro, MB>(ty, tx, [&](int row, int col_, int a, int b_) {
        const int na = n0 + row;
        const int off = column_offset(d, pg, origin, origin.u0 + col_);
        if (na < d.N && off >= 0) acc[a][b_] = grad_x[static_cast<int64_t>(na) * d.x_sample + off];
      });
    }
    for (int i = gt.rows.lo; i <= gt.rows.hi; ++i) {
      for (int j = gt.cols.lo; j <= gt.cols.hi; ++j) {
        const int tap = covering_offset(d, gc, i, j);
        const int p = i * d.W_out + j;
        // Bt_p[o_lo + t, u] = b[e_pc + t * K], e_pc = the index of (p, t = 0, c, r, s).
        const int64_t e_pc = static_cast<int64_t>(p) * ch.b_block + tap;  // read only where tap >= 0
        for (int o0 = 0; o0 < ch.count; o0 += kChunk) {
#pragma unroll
          for (int m = 0; m < kMicro; ++m) {
            const int q = q0 + kColRows * m;
            const int o = o0 + q;
            const bool o_in = o < ch.count;
            Gs[q][col] = (n_in && o_in) ? static_cast<acc_t>(gy_n[o * d.P + p]) : acc_t(0);
            const acc_t bv = (tap >= 0 && o_in)
                                 ? static_cast<acc_t>(feedback_at(f, b, e_pc + static_cast<int64_t>(o) * d.K))
                                 : acc_t(0);
            if (col < TB) Ws[q][col] = bv;
          }
          __syncthreads();
          tile_fma(acc, Gs, Ws, ty, tx);
          __syncthreads();  // the next chunk overwrites Gs / Ws
        }
      }
    }
    // Pixels no window covers (stride larger than the dilated kernel) get their zeros here too. The group's
    // origin is recomputed from blockIdx rather than held in registers through the reduction.
    const GroupTile origin = group_tile(d, pg, static_cast<int>(blockIdx.x), static_cast<int>(blockIdx.y) * TB);
    for_owned<kMicro, MB>(ty, tx, [&](int row, int col_, int a, int b_) {
      const int na = n0 + row;
      const int off = column_offset(d, pg, origin, origin.u0 + col_);
      if (na < d.N && off >= 0) {
        grad_x[static_cast<int64_t>(na) * d.x_sample + off] = static_cast<input_out_t<scalar_t, kResume>>(acc[a][b_]);
      }
    });
  }
}

// ------------------------------------------------------------------------------------------------
// The fused_tc algorithm (float16 / bfloat16, and float32 as TF32 where torch allows TF32 matmuls): the
// kernels above with the FFMA tile replaced by tensor cores (tile_wmma.cuh, float accumulation). The operands
// are staged in their own type (16-bit products are exact in the mma; float operands are rounded to TF32 in
// the fragments), and the result leaves through shared memory for the same epilogue.

// Forward. Block (p, o-tile), grid and staging ownership as lc2d_forward_kernel:
//   As[row][kk] = X_p[n0 + row, k0 + kk] (A = X_p, rows n),  Bs[row][kk] = W_p[o0 + row, k0 + kk] (B = W_p^T,
//   columns o), kk = tid % 16, row = tid / 16 + 16m; Cs[n - n0][o - o0] = the block's sums. With vec_w,
//   thread tid stages Bs[row][4v + u], u < 4, row = tid / 4, v = tid % 4, from one vector load.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    lc2d_forward_tc_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ weight,
                           const scalar_t* __restrict__ bias, scalar_t* __restrict__ y, const Lc2dDims d,
                           const bool vec_w) {
  namespace wm = cuda_wmma;
  __shared__ __align__(32) scalar_t As[kTile][wm::kLd];
  __shared__ __align__(32) scalar_t Bs[kTile][wm::kLd];
  __shared__ __align__(32) float Cs[kTile][wm::kCld];

  const int p = static_cast<int>(blockIdx.x);
  const int i = p / d.W_out;
  const int j = p - i * d.W_out;
  const int o0 = static_cast<int>(blockIdx.y) * kTile;
  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / 32;
  const int tx = tid % kSpread, ty = tid / kSpread;
  const int kk = tid % kChunk, row0 = tid / kChunk;
  const scalar_t* Wp = weight + static_cast<int64_t>(p) * d.w_block;

  for (int n0 = 0; n0 < d.N; n0 += kTile) {
    wm::Acc<scalar_t> c[2];
    wm::zero(c);
    for (int k0 = 0; k0 < d.K; k0 += kChunk) {
      const int k = k0 + kk;
      const PatchPixel px = k < d.K ? patch_pixel(d, i, j, k) : PatchPixel{false, 0};
#pragma unroll
      for (int m = 0; m < kMicro; ++m) {
        const int row = row0 + kStepRows * m;
        const int n = n0 + row;
        As[row][kk] = (px.in && n < d.N) ? x[static_cast<int64_t>(n) * d.x_sample + px.off] : scalar_t(0);
        if (!vec_w) {
          const int o = o0 + row;
          Bs[row][kk] = (k < d.K && o < d.C_out) ? Wp[o * d.K + k] : scalar_t(0);
        }
      }
      if (vec_w) {
        const int row = tid / 4, k4 = 4 * (tid % 4);
        const int o = o0 + row;
        const Vec4<scalar_t> w = (k0 + k4 < d.K && o < d.C_out) ? load_vec4(Wp + o * d.K + k0 + k4) : Vec4<scalar_t>{};
#pragma unroll
        for (int u = 0; u < 4; ++u) Bs[row][k4 + u] = w.v[u];
      }
      __syncthreads();
      wm::mma_step(c, As, Bs, warp);
      __syncthreads();  // the next chunk overwrites As / Bs
    }
    wm::store(Cs, c, warp);
    __syncthreads();
    for_owned(ty, tx, [&](int row, int col, int, int) {
      const int n = n0 + row, o = o0 + col;
      if (n < d.N && o < d.C_out) {
        const int plane = o * d.P + p;
        float v = Cs[row][col];
        if (bias != nullptr) v += static_cast<float>(bias[plane]);
        y[static_cast<int64_t>(n) * d.y_sample + plane] = static_cast<scalar_t>(v);
      }
    });
    __syncthreads();  // the next batch tile overwrites Cs
  }
}

// Weight gradient. Block (p, k-tile, o-tile), grid and staging ownership as lc2d_backward_weight_kernel:
//   As[col][q] = dY_p[n0 + q, o0 + col] (A = dY_p^T, rows o),  Bs[col][q] = X_p[n0 + q, k0 + col] (B = X_p,
//   columns k), col = tid % 64, q = tid / 64 + 4m; Cs[o - o0][k - k0] = the block's sums. The k-tile-0
//   blocks also sum grad_bias from As in batch order, in float.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    lc2d_backward_weight_tc_kernel(const scalar_t* __restrict__ grad_y, const scalar_t* __restrict__ x,
                                   scalar_t* __restrict__ grad_weight, scalar_t* __restrict__ grad_bias,
                                   const Lc2dDims d) {
  namespace wm = cuda_wmma;
  __shared__ __align__(32) scalar_t As[kTile][wm::kLd];
  __shared__ __align__(32) scalar_t Bs[kTile][wm::kLd];
  __shared__ __align__(32) float Cs[kTile][wm::kCld];

  const int p = static_cast<int>(blockIdx.x);
  const int i = p / d.W_out;
  const int j = p - i * d.W_out;
  const int k0 = static_cast<int>(blockIdx.y) * kTile;
  const int o0 = static_cast<int>(blockIdx.z) * kTile;
  const bool sums_bias = blockIdx.y == 0;
  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / 32;
  const int tx = tid % kSpread, ty = tid / kSpread;
  const int col = tid % kTile, q0 = tid / kTile;

  const int k = k0 + col;
  const PatchPixel px = k < d.K ? patch_pixel(d, i, j, k) : PatchPixel{false, 0};
  const int o = o0 + col;
  const bool o_in = o < d.C_out;
  const int gy_off = o_in ? o * d.P + p : 0;

  wm::Acc<scalar_t> c[2];
  wm::zero(c);
  float bias_sum = 0;
  for (int n0 = 0; n0 < d.N; n0 += kChunk) {
#pragma unroll
    for (int m = 0; m < kMicro; ++m) {
      const int q = q0 + kColRows * m;
      const int n = n0 + q;
      As[col][q] = (o_in && n < d.N) ? grad_y[static_cast<int64_t>(n) * d.y_sample + gy_off] : scalar_t(0);
      Bs[col][q] = (px.in && n < d.N) ? x[static_cast<int64_t>(n) * d.x_sample + px.off] : scalar_t(0);
    }
    __syncthreads();
    wm::mma_step(c, As, Bs, warp);
    if (sums_bias && tid < kTile) {
#pragma unroll
      for (int q = 0; q < kChunk; ++q) bias_sum += static_cast<float>(As[tid][q]);
    }
    __syncthreads();  // the next chunk overwrites As / Bs
  }
  wm::store(Cs, c, warp);
  __syncthreads();
  scalar_t* dWp = grad_weight + static_cast<int64_t>(p) * d.w_block;
  for_owned(ty, tx, [&](int row, int col_, int, int) {
    const int oa = o0 + row, kb = k0 + col_;
    if (oa < d.C_out && kb < d.K) dWp[oa * d.K + kb] = static_cast<scalar_t>(Cs[row][col_]);
  });
  if (sums_bias && tid < kTile && o0 + tid < d.C_out) {
    grad_bias[(o0 + tid) * d.P + p] = static_cast<scalar_t>(bias_sum);
  }
}

// Input gradient. Block (group, u-tile), grid and staging ownership as lc2d_backward_input_kernel with
// 64-wide u-tiles (input_groups picks the group for that width), over the launch's channels (ChannelRange):
//   As[col][q] = dY[n0 + col, o_lo + o0 + q, i, j] (A = dY_p, rows n),
//   Bs[col][q] = Bt_p[o_lo + o0 + q, u0 + col] (B = Bt_p, columns u),
//   col = tid % 64, q = tid / 64 + 4m; Cs[n - n0][u - u0] = the block's sums. The staged B
//   element is the one the FFMA kernel stages, in scalar_t. Resuming (kResume), each batch tile's accumulators
//   start from the partial sums in grad_x (float), staged through Cs.
// Register budget: 3 blocks per SM (<= 80 registers); at 64 the fragments, the group's ranges and the staging
// indices spill.
template <typename scalar_t, bool kResume>
__global__ void __launch_bounds__(kThreads, 3)
    lc2d_backward_input_tc_kernel(const scalar_t* __restrict__ grad_y, const scalar_t* __restrict__ b,
                                  input_out_t<scalar_t, kResume>* __restrict__ grad_x, const Lc2dDims d,
                                  const PixelGroups pg, const FeedbackSpec f, const ChannelRange ch) {
  namespace wm = cuda_wmma;
  __shared__ __align__(32) scalar_t As[kTile][wm::kLd];
  __shared__ __align__(32) scalar_t Bs[kTile][wm::kLd];
  __shared__ __align__(32) float Cs[kTile][wm::kCld];

  const GroupTile gt = group_tile(d, pg, static_cast<int>(blockIdx.x), static_cast<int>(blockIdx.y) * kTile);
  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / 32;
  const int tx = tid % kSpread, ty = tid / kSpread;
  const int col = tid % kTile, q0 = tid / kTile;
  const GroupColumn gc = group_column(d, pg, gt, gt.u0 + col);

  for (int n0 = 0; n0 < d.N; n0 += kTile) {
    const int n = n0 + col;  // this thread's staging sample
    const bool n_in = n < d.N;
    const scalar_t* gy_n = grad_y + (n_in ? static_cast<int64_t>(n) * d.y_sample : 0);  // dY[n, o_lo]
    wm::Acc<scalar_t> c[2];
    if constexpr (kResume) {  // the group's origin recomputed, as in the epilogue
      const GroupTile origin = group_tile(d, pg, static_cast<int>(blockIdx.x), static_cast<int>(blockIdx.y) * kTile);
      for_owned(ty, tx, [&](int row, int col_, int, int) {
        const int na = n0 + row;
        const int off = column_offset(d, pg, origin, origin.u0 + col_);
        Cs[row][col_] = na < d.N && off >= 0 ? static_cast<float>(grad_x[static_cast<int64_t>(na) * d.x_sample + off])
                                             : 0.0f;
      });
      __syncthreads();
      wm::load(c, Cs, warp);  // a warp reads back only the sub-tiles it stores at the end
    } else {
      wm::zero(c);
    }
    for (int i = gt.rows.lo; i <= gt.rows.hi; ++i) {
      for (int j = gt.cols.lo; j <= gt.cols.hi; ++j) {
        const int tap = covering_offset(d, gc, i, j);
        const int p = i * d.W_out + j;
        const int64_t e_pc = static_cast<int64_t>(p) * ch.b_block + tap;  // read only where tap >= 0
        for (int o0 = 0; o0 < ch.count; o0 += kChunk) {
#pragma unroll
          for (int m = 0; m < kMicro; ++m) {
            const int q = q0 + kColRows * m;
            const int o = o0 + q;
            const bool o_in = o < ch.count;
            As[col][q] = (n_in && o_in) ? gy_n[o * d.P + p] : scalar_t(0);
            Bs[col][q] = (tap >= 0 && o_in) ? feedback_at(f, b, e_pc + static_cast<int64_t>(o) * d.K)
                                            : scalar_t(0);
          }
          __syncthreads();
          wm::mma_step(c, As, Bs, warp);
          __syncthreads();  // the next chunk overwrites As / Bs
        }
      }
    }
    wm::store(Cs, c, warp);
    __syncthreads();
    const GroupTile origin = group_tile(d, pg, static_cast<int>(blockIdx.x), static_cast<int>(blockIdx.y) * kTile);
    for_owned(ty, tx, [&](int row, int col_, int, int) {
      const int na = n0 + row;
      const int off = column_offset(d, pg, origin, origin.u0 + col_);
      if (na < d.N && off >= 0) {
        grad_x[static_cast<int64_t>(na) * d.x_sample + off] =
            static_cast<input_out_t<scalar_t, kResume>>(Cs[row][col_]);
      }
    });
    __syncthreads();  // the next batch tile overwrites Cs
  }
}

// ------------------------------------------------------------------------------------------------
// Host side.

// The kernels keep per-axis values, window coordinates and offsets within one sample or one
// position's weight block in 32-bit ints; check that all of them fit, with a tile of headroom so that
// loop counters stepping past an extent (n0 += 64, o0 += 16, ...) cannot overflow. `reach` bounds the
// largest coordinate sums the kernels form, i * sH + r * dH and ih + pT.
constexpr int64_t kIndexLimit = INT_MAX - kTile;

Lc2dDims make_dims(const Lc2dGeometry& g, const char* op) {
  const int64_t reach_h = std::max((g.H_out - 1) * g.sH + (g.kH - 1) * g.dH, g.H + g.pT);
  const int64_t reach_w = std::max((g.W_out - 1) * g.sW + (g.kW - 1) * g.dW, g.W + g.pL);
  const int64_t x_sample = g.C_in * g.H * g.W;
  const int64_t y_sample = g.C_out * g.positions();
  const int64_t w_block = g.C_out * g.patch();
  for (int64_t v : {g.N, g.sH, g.sW, g.pT, g.pL, g.dH, g.dW, reach_h, reach_w, x_sample, y_sample, w_block}) {
    BIOPLAUS_CHECK(v <= kIndexLimit, op, ": a size, padded extent, per-sample or per-position element count is ", v,
                   ", beyond the 32-bit indexing of the CUDA kernels (limit ", kIndexLimit, ")");
  }
  // Every other value is bounded by one checked above: H, W, H * W, C_in <= x_sample; H_out, W_out, P,
  // C_out <= y_sample; kH, kW, K <= w_block.
  Lc2dDims d;
  d.N = static_cast<int>(g.N);
  d.C_in = static_cast<int>(g.C_in);
  d.H = static_cast<int>(g.H);
  d.W = static_cast<int>(g.W);
  d.C_out = static_cast<int>(g.C_out);
  d.H_out = static_cast<int>(g.H_out);
  d.W_out = static_cast<int>(g.W_out);
  d.kH = static_cast<int>(g.kH);
  d.kW = static_cast<int>(g.kW);
  d.sH = static_cast<int>(g.sH);
  d.sW = static_cast<int>(g.sW);
  d.pT = static_cast<int>(g.pT);
  d.pL = static_cast<int>(g.pL);
  d.dH = static_cast<int>(g.dH);
  d.dW = static_cast<int>(g.dW);
  d.P = static_cast<int>(g.positions());
  d.HW = static_cast<int>(g.H * g.W);
  d.K = static_cast<int>(g.patch());
  d.x_sample = static_cast<int>(x_sample);
  d.y_sample = static_cast<int>(y_sample);
  d.w_block = static_cast<int>(w_block);
  return d;
}

// Number of `width`-wide tiles over `extent`, for grid dimensions y / z (at most 65535 blocks).
unsigned tiles_yz(int64_t extent, int64_t width, const char* op, const char* what) {
  const int64_t t = (extent + width - 1) / width;
  BIOPLAUS_CHECK(t <= 65535, op, ": ", what, " = ", extent, " needs ", t, " tiles of ", width,
                 ", more than the 65535 blocks a CUDA grid dimension allows");
  return static_cast<unsigned>(t);
}

// The input-gradient kernel's reduction length along one axis, summed over its groups of G coordinates:
// the count of positions covering some coordinate of each group (covering_positions). The model below
// counts the groups of the first kModelExtent coordinates only: the count repeats with the stride.
constexpr int64_t kModelExtent = 4096;

int64_t covering_positions_total(int64_t extent, int64_t G, int64_t out, int64_t stride, int64_t dil, int64_t k,
                                 int64_t pad) {
  int64_t total = 0;
  for (int64_t a0 = 0; a0 < std::min(extent, kModelExtent); a0 += G) {
    const int64_t first = a0 + pad - (k - 1) * dil;
    const int64_t lo = first > 0 ? (first + stride - 1) / stride : 0;
    const int64_t hi = std::min(out - 1, (std::min(a0 + G, extent) - 1 + pad) / stride);
    total += std::max<int64_t>(0, hi - lo + 1);
  }
  return total;
}

// The input-gradient kernel's pixel group: the GH x GW (1 to 8 each) of least modelled time
//   u_tiles * (1 + MB) * covering_positions_total(H axis) * covering_positions_total(W axis),
// MB = micro_tiles(C_in * GH * GW) (kMicro, 64-wide tiles, on tensor cores): one reduction chunk of a
// (group, u-tile) block costs its staging (about one micro-tile's FMAs) plus MB micro-tiles of FMAs, and runs
// once per C_out chunk and batch tile, which every group has alike. Ties go to the smaller group. One pixel
// wins from 32 input channels up; few channels with strides or large kernels take larger groups (4 x 4 at
// ImageNet L1, 3 channels k9 s4, and at the stem, 3 channels k7 s2: about a quarter of one pixel's modelled
// time).
PixelGroups input_groups(const Lc2dGeometry& g, bool tensor_cores) {
  constexpr int kMaxGroup = 8;
  int best_h = 1, best_w = 1;
  double best = -1;
  for (int gh = 1; gh <= kMaxGroup; ++gh) {
    const double rows = static_cast<double>(covering_positions_total(g.H, gh, g.H_out, g.sH, g.dH, g.kH, g.pT));
    for (int gw = 1; gw <= kMaxGroup; ++gw) {
      const int64_t columns = g.C_in * gh * gw;
      const int mb = tensor_cores ? kMicro : micro_tiles(columns);
      const int64_t width = int64_t{kSpread} * mb;
      const double cost = static_cast<double>((columns + width - 1) / width * (1 + mb)) * rows *
                          static_cast<double>(covering_positions_total(g.W, gw, g.W_out, g.sW, g.dW, g.kW, g.pL));
      if (best < 0 || cost < best) {
        best = cost;
        best_h = gh;
        best_w = gw;
      }
    }
  }
  return {best_h, best_w, static_cast<int>((g.W + best_w - 1) / best_w)};
}

// ------------------------------------------------------------------------------------------------
// The library algorithm: the same GEMMs as batched cuBLAS calls through ATen (at::bmm / at::baddbmm, tensor
// cores where torch's settings allow), over chunks of np consecutive positions p0 .. p0 + np - 1 whose
// operands the kernels below gather into a workspace within lc2d_workspace_limit() bytes:
//   forward      Y_q[N x C_out]  = X_q[N x K] * W_q^T[K x C_out] (+ bias, as baddbmm's input)
//   weight grad  dW_q[C_out x K] = dY_q^T[C_out x N] * X_q[N x K]    (written straight into grad_weight)
//   input grad   dX_q[N x K]     = dY_q[N x C_out] * B_q[C_out x K], then folded into grad_x
// with X_q = cols[q] (lc2d_gather_patches_kernel), dY_q = grad_y[:, :, p0 + q] (a strided copy), B_q =
// weight[p0 + q] as [C_out, K] or its feedback transform (lc2d_fill_feedback_kernel). Chunks run
// in order on the stream, and the fold adds each chunk's contribution to a pixel in that order: results
// are bit-identical run to run. They differ from the fused kernels' in the last bits (another summation
// order; cuBLAS picks its own reduction split).

// A zeroed sum buffer for grad_x in the accumulation type (at::opmath_type): grad_x itself where that is its
// dtype (float32, float64), else a float tensor of its size that the caller copies into grad_x at the end
// (16-bit results rounded once).
at::Tensor zeroed_accumulator(at::Tensor& grad_x) {
  const at::ScalarType acc = at::toOpMathType(grad_x.scalar_type());
  return acc == grad_x.scalar_type() ? grad_x.zero_() : at::zeros(grad_x.sizes(), grad_x.options().dtype(acc));
}

// Positions per chunk: as many as `per_position` workspace elements each allow within the budget
// (lc2d_workspace_limit(); at least one position).
int64_t library_chunk(const Lc2dGeometry& g, int64_t per_position, int64_t elem_size) {
  return std::clamp<int64_t>(lc2d_workspace_limit() / (per_position * elem_size), 1, g.positions());
}

// cols[q][n][k] = x[n, c, i*sH - pT + r*dH, j*sW - pL + s*dW] for q < np, position p0 + q = i * W_out + j,
// k = (c * kH + r) * kW + s; zero in the padding. One thread per element (grid-stride, 64-bit e), k fastest:
// consecutive threads write consecutive elements.
template <typename scalar_t>
__global__ void lc2d_gather_patches_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ cols,
                                           const Lc2dDims d, int p0, int np) {
  const int64_t total = static_cast<int64_t>(np) * d.N * d.K;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride) {
    const int k = static_cast<int>(e % d.K);
    const int64_t qn = e / d.K;
    const int n = static_cast<int>(qn % d.N);
    const int p = p0 + static_cast<int>(qn / d.N);
    const int i = p / d.W_out;
    const PatchPixel px = patch_pixel(d, i, p - i * d.W_out, k);
    cols[e] = px.in ? x[static_cast<int64_t>(n) * d.x_sample + px.off] : scalar_t(0);
  }
}

// gx[n, c, ih, iw] += sum over the covering (i, r), (j, s) whose position p = i * W_out + j lies in
// [p0, p0 + np) of dcols[p - p0][n][(c * kH + r) * kW + s], for the input rows ih0 .. ih0 + rows - 1 that
// the chunk's windows reach (covering_taps gives the ranges). A gather: one thread per
// pixel element, each written by one thread, terms in a fixed (r, s) order; acc_t is float for the
// 16-bit types, whose gx is then a float buffer, so chunks add in float.
template <typename scalar_t, typename acc_t>
__global__ void lc2d_fold_patches_kernel(const scalar_t* __restrict__ dcols, acc_t* __restrict__ gx,
                                         const Lc2dDims d, int p0, int np, int ih0, int rows) {
  const int64_t total = static_cast<int64_t>(d.N) * d.C_in * rows * d.W;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride) {
    const int iw = static_cast<int>(e % d.W);
    int64_t t = e / d.W;
    const int ih = ih0 + static_cast<int>(t % rows);
    t /= rows;
    const int c = static_cast<int>(t % d.C_in);
    const int n = static_cast<int>(t / d.C_in);
    const int ah = ih + d.pT;
    const int aw = iw + d.pL;
    const TapRange rr = covering_taps(ah, d.H_out, d.sH, d.dH, d.kH);
    const TapRange sr = covering_taps(aw, d.W_out, d.sW, d.dW, d.kW);
    acc_t acc = 0;
    for (int r = rr.lo; r <= rr.hi; ++r) {
      const int th = ah - r * d.dH;
      if (th % d.sH != 0) continue;
      const int i = th / d.sH;
      for (int s = sr.lo; s <= sr.hi; ++s) {
        const int tw = aw - s * d.dW;
        if (tw % d.sW != 0) continue;
        const int q = i * d.W_out + tw / d.sW - p0;
        if (q < 0 || q >= np) continue;
        acc += static_cast<acc_t>(dcols[(static_cast<int64_t>(q) * d.N + n) * d.K + (c * d.kH + r) * d.kW + s]);
      }
    }
    gx[static_cast<int64_t>(n) * d.x_sample + c * d.HW + ih * d.W + iw] += acc;
  }
}

// Rows of the feedback matrix B (common/feedback.h), gathered densely: out[t * len + u] = B[e0 + t * stride + u]
// for t < rows, u < len (one range: rows = 1), weight read at the same index. The generating modes make one
// Philox call per counter block and share it over the block's elements in the row (uniform: 8 elements 16
// apart, philox::uniform_slot; normal: 4 consecutive), so a thread owns one (row, block), out of
// blocks_per_row() candidates a row. "weight" and "sign" (the library algorithm's copy) take one range, and
// a thread owns one element. Same values as feedback_element, bit for bit.
struct FeedbackRows {
  int64_t e0, stride, len, rows;
};

// The counter blocks a thread of lc2d_fill_feedback_kernel may own per row: enough for any alignment of the row.
__host__ __device__ inline int64_t blocks_per_row(const FeedbackRows& r, philox::Distribution dist) {
  return dist == philox::Distribution::kUniform ? (r.len / philox::kGroupElems + 2) * philox::kGroupBlocks
                                                : r.len / 4 + 2;
}

template <typename scalar_t>
__global__ void lc2d_fill_feedback_kernel(const scalar_t* __restrict__ weight, scalar_t* __restrict__ out,
                                          const FeedbackRows fr, const FeedbackSpec f) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (!f.generates()) {  // one range (fill_feedback checks): a copy of weight, or its sign
    for (int64_t t = first; t < fr.len; t += stride) {
      out[t] = combine_feedback<scalar_t, acc_t>(f, scalar_t(0), weight[fr.e0 + t]);
    }
    return;
  }
  const int64_t per_row = blocks_per_row(fr, f.distribution);
  for (int64_t t = first; t < fr.rows * per_row; t += stride) {
    const int64_t row = t / per_row;
    const int64_t tb = t - row * per_row;
    const int64_t e_lo = fr.e0 + row * fr.stride, e_hi = e_lo + fr.len;  // the row: [e_lo, e_hi)
    auto put = [&](int64_t e, float sample) {
      if (e < e_lo || e >= e_hi) return;
      const scalar_t r = static_cast<scalar_t>(philox::mul_rn(f.scale, sample));
      const scalar_t w = f.reads_weight() ? weight[e] : scalar_t(0);
      out[row * fr.len + (e - e_lo)] = combine_feedback<scalar_t, acc_t>(f, r, w);
    };
    if (f.distribution == philox::Distribution::kUniform) {
      // Blocks 16 g .. 16 g + 15 of every group g from the row's first on.
      const uint64_t b = static_cast<uint64_t>(e_lo / philox::kGroupElems * philox::kGroupBlocks + tb);
      const int64_t base = static_cast<int64_t>(b / philox::kGroupBlocks) * philox::kGroupElems +
                           static_cast<int64_t>(b % philox::kGroupBlocks);
      if (base >= e_hi || base + 16 * 7 < e_lo) continue;  // none of the block's elements lies in the row
      const philox::Words v = philox::block_words(f.key, b, f.step);
#pragma unroll
      for (int s = 0; s < 8; ++s) put(base + 16 * s, philox::uniform_half(v.w[s >> 1], s & 1));
    } else {
      const uint64_t b = static_cast<uint64_t>(e_lo / 4 + tb);
      if (static_cast<int64_t>(b) * 4 >= e_hi) continue;
      const philox::Words v = philox::block_words(f.key, b, f.step);
#pragma unroll
      for (int jj = 0; jj < 4; ++jj) put(static_cast<int64_t>(b) * 4 + jj, philox::normal_sample(v, jj));
    }
  }
}

constexpr int kLibraryThreads = 256;

// out = the rows `fr` of the feedback matrix of `f` (lc2d_fill_feedback_kernel), on the current stream; wc is
// weight (undefined where `f` does not read it).
void fill_feedback(const at::Tensor& wc, at::Tensor& out, const FeedbackRows& fr, const FeedbackSpec& f) {
  TORCH_INTERNAL_ASSERT(f.generates() || fr.rows == 1, "lc2d: rows of a non-generated B are copied as one range");
  const int64_t work = fr.rows * (f.generates() ? blocks_per_row(fr, f.distribution) : fr.len);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "lc2d_fill_feedback", [&] {
    launch_kernel(lc2d_fill_feedback_kernel<scalar_t>, grid_stride_blocks(work, kLibraryThreads, out.get_device()),
                  kLibraryThreads, 0, f.reads_weight() ? wc.const_data_ptr<scalar_t>() : nullptr,
                  out.mutable_data_ptr<scalar_t>(), fr, f);
  });
}

template <typename scalar_t>
void gather_patches(const at::Tensor& xc, at::Tensor& cols, const Lc2dDims& d, int64_t p0, int64_t np, int device) {
  const unsigned grid = grid_stride_blocks(np * d.N * d.K, kLibraryThreads, device);
  launch_kernel(lc2d_gather_patches_kernel<scalar_t>, grid, kLibraryThreads, 0, xc.const_data_ptr<scalar_t>(),
                cols.mutable_data_ptr<scalar_t>(), d, static_cast<int>(p0), static_cast<int>(np));
}

// grad_y[:, :, p0 .. p0 + np) as [np, N, C_out] in `buf`.
at::Tensor positions_major(const at::Tensor& gyc, const Lc2dGeometry& g, int64_t p0, int64_t np, at::Tensor buf) {
  buf.copy_(gyc.view({g.N, g.C_out, g.positions()}).narrow(2, p0, np).permute({2, 0, 1}));
  return buf;
}

at::Tensor library_forward(const at::Tensor& xc, const at::Tensor& wc, const at::Tensor& bc, at::Tensor y,
                           const Lc2dGeometry& g, const Lc2dDims& d) {
  const int64_t P = g.positions(), K = g.patch();
  const int64_t np_max = library_chunk(g, g.N * (K + g.C_out), xc.element_size());
  at::Tensor cols_ws = at::empty({np_max * g.N * K}, xc.options());
  at::Tensor out_ws = at::empty({np_max * g.N * g.C_out}, xc.options());
  const at::Tensor w3 = wc.view({P, g.C_out, K});
  const at::Tensor y3 = y.view({g.N, g.C_out, P});
  for (int64_t p0 = 0; p0 < P; p0 += np_max) {
    const int64_t np = std::min(np_max, P - p0);
    at::Tensor cols = cols_ws.narrow(0, 0, np * g.N * K).view({np, g.N, K});
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "lc2d_library_forward", [&] {
      gather_patches<scalar_t>(xc, cols, d, p0, np, xc.get_device());
    });
    at::Tensor out = out_ws.narrow(0, 0, np * g.N * g.C_out).view({np, g.N, g.C_out});
    const at::Tensor wt = w3.narrow(0, p0, np).transpose(1, 2);  // [np, K, C_out]
    if (bc.defined()) {
      const at::Tensor b = bc.view({g.C_out, P}).narrow(1, p0, np).t().unsqueeze(1);  // [np, 1, C_out]
      at::baddbmm_out(out, b.expand({np, g.N, g.C_out}), cols, wt);
    } else {
      at::bmm_out(out, cols, wt);
    }
    y3.narrow(2, p0, np).copy_(out.permute({1, 2, 0}));
  }
  return y;
}

void library_backward_weight(const at::Tensor& gyc, const at::Tensor& xc, at::Tensor& grad_weight,
                             at::Tensor& grad_bias, const Lc2dGeometry& g, const Lc2dDims& d) {
  const int64_t P = g.positions(), K = g.patch();
  const int64_t np_max = library_chunk(g, g.N * (K + g.C_out), xc.element_size());
  at::Tensor cols_ws = at::empty({np_max * g.N * K}, xc.options());
  at::Tensor dy_ws = at::empty({np_max * g.N * g.C_out}, xc.options());
  at::Tensor w3 = grad_weight.view({P, g.C_out, K});
  for (int64_t p0 = 0; p0 < P; p0 += np_max) {
    const int64_t np = std::min(np_max, P - p0);
    at::Tensor cols = cols_ws.narrow(0, 0, np * g.N * K).view({np, g.N, K});
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "lc2d_library_backward_weight", [&] {
      gather_patches<scalar_t>(xc, cols, d, p0, np, xc.get_device());
    });
    const at::Tensor dy = positions_major(gyc, g, p0, np, dy_ws.narrow(0, 0, np * g.N * g.C_out).view({np, g.N, g.C_out}));
    at::Tensor dw = w3.narrow(0, p0, np);  // contiguous: bmm writes grad_weight in place
    at::bmm_out(dw, dy.transpose(1, 2), cols);
  }
  at::sum_out(grad_bias, gyc, c10::IntArrayRef{0});
}

at::Tensor library_backward_input(const at::Tensor& gyc, const at::Tensor& wc, at::Tensor grad_x,
                                  const Lc2dGeometry& g, const Lc2dDims& d, const FeedbackSpec& f) {
  const int64_t P = g.positions(), K = g.patch();
  // B_q always goes through the workspace, a copy in "weight" mode: every mode then hands the GEMM the
  // same buffers, so a generated B gives the bits of "weight" mode on the materialised B.
  const int64_t np_max = library_chunk(g, g.N * (K + g.C_out) + g.C_out * K, gyc.element_size());
  at::Tensor dy_ws = at::empty({np_max * g.N * g.C_out}, gyc.options());
  at::Tensor dcols_ws = at::empty({np_max * g.N * K}, gyc.options());
  at::Tensor b_ws = at::empty({np_max * g.C_out * K}, gyc.options());
  // 16-bit results are folded in float and rounded once at the end.
  at::Tensor acc = zeroed_accumulator(grad_x);
  const int device = gyc.get_device();
  for (int64_t p0 = 0; p0 < P; p0 += np_max) {
    const int64_t np = std::min(np_max, P - p0);
    const at::Tensor dy = positions_major(gyc, g, p0, np, dy_ws.narrow(0, 0, np * g.N * g.C_out).view({np, g.N, g.C_out}));
    at::Tensor b = b_ws.narrow(0, 0, np * g.C_out * K).view({np, g.C_out, K});
    fill_feedback(wc, b, FeedbackRows{p0 * g.C_out * K, 0, np * g.C_out * K, 1}, f);
    at::Tensor dcols = dcols_ws.narrow(0, 0, np * g.N * K).view({np, g.N, K});
    at::bmm_out(dcols, dy, b);
    // Input rows the chunk's windows reach: from the first row of its first position's window to the
    // last row of its last position's window.
    const int64_t i_first = p0 / g.W_out, i_last = (p0 + np - 1) / g.W_out;
    const int64_t ih0 = std::max<int64_t>(0, i_first * g.sH - g.pT);
    const int64_t ih1 = std::min<int64_t>(g.H - 1, i_last * g.sH - g.pT + (g.kH - 1) * g.dH);
    if (ih1 < ih0) continue;  // the windows lie in the padding
    const int64_t rows = ih1 - ih0 + 1;
    const unsigned grid = grid_stride_blocks(g.N * g.C_in * rows * g.W, kLibraryThreads, device);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gyc.scalar_type(), "lc2d_library_fold", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      launch_kernel(lc2d_fold_patches_kernel<scalar_t, acc_t>, grid, kLibraryThreads, 0,
                    dcols.const_data_ptr<scalar_t>(), acc.mutable_data_ptr<acc_t>(), d, static_cast<int>(p0),
                    static_cast<int>(np), static_cast<int>(ih0), static_cast<int>(rows));
    });
  }
  if (!acc.is_same(grad_x)) grad_x.copy_(acc);
  return grad_x;
}

// The fused input gradients' feedback. "weight" and "sign" form B on load from weight, in one launch over every
// channel. The generating modes' B is materialised first by lc2d_fill_feedback_kernel (one Philox call per
// counter block, shared over the block's elements, as in the library algorithm and on the CPU) and read as a
// stored B: all of it where it fits the workspace limit, else in chunks of output channels for every position
// (multiples of 16, at least 16: every launch keeps the whole grid of pixel groups), each launch resuming from
// the partial sums of the chunks before it (input_out_t: in the accumulation type, rounded once at the end).
// `launch(resume, spec, b, channels, o_lo, out)` runs one kernel, resume a std::bool_constant.
template <typename scalar_t, typename Launch>
void fused_backward_input(const at::Tensor& wc, at::Tensor& grad_x, const Lc2dGeometry& g, const FeedbackSpec& f,
                          Launch&& launch) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t P = g.positions(), K = g.patch(), C_out = g.C_out;
  const ChannelRange every{static_cast<int>(C_out), static_cast<int>(C_out * K)};
  if (!f.generates()) {
    launch(std::false_type(), f, wc.const_data_ptr<scalar_t>(), every, 0, grad_x.mutable_data_ptr<scalar_t>());
    return;
  }
  FeedbackSpec stored = f;
  stored.mode = FeedbackMode::kWeight;
  const int64_t per_channel = P * K * static_cast<int64_t>(sizeof(scalar_t));
  const int64_t oc = std::min(C_out, std::max<int64_t>(kChunk, lc2d_workspace_limit() / per_channel / kChunk * kChunk));
  at::Tensor b = at::empty({P * oc * K}, grad_x.options());
  if (oc == C_out) {
    fill_feedback(wc, b, FeedbackRows{0, 0, P * C_out * K, 1}, f);
    launch(std::false_type(), stored, b.const_data_ptr<scalar_t>(), every, 0, grad_x.mutable_data_ptr<scalar_t>());
    return;
  }
  at::Tensor partial = zeroed_accumulator(grad_x);
  for (int64_t o_lo = 0; o_lo < C_out; o_lo += oc) {
    const int64_t o_hi = std::min(C_out, o_lo + oc);
    fill_feedback(wc, b, FeedbackRows{o_lo * K, C_out * K, (o_hi - o_lo) * K, P}, f);
    launch(std::true_type(), stored, b.const_data_ptr<scalar_t>(),
           ChannelRange{static_cast<int>(o_hi - o_lo), static_cast<int>((o_hi - o_lo) * K)}, o_lo,
           partial.mutable_data_ptr<acc_t>());
  }
  if (!partial.is_same(grad_x)) grad_x.copy_(partial);
}

// Runs `fn` once on the current stream and returns its time in milliseconds (the autotuner's timer).
template <typename F>
double time_ms(F&& fn) {
  device_synchronize();
  const auto t0 = std::chrono::steady_clock::now();
  fn();
  device_synchronize();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// f(scalar_t()) for the dtypes the fused_tc kernels take.
template <typename F>
void dispatch_tensor_core(at::ScalarType dtype, F&& f) {
  switch (dtype) {
    case at::kFloat: return f(float());
    case at::kHalf: return f(c10::Half());
    case at::kBFloat16: return f(c10::BFloat16());
    default: BIOPLAUS_CHECK(false, "lc2d: the fused_tc algorithm takes float32, float16 or bfloat16, got ", dtype);
  }
}

// The algorithms of a pass for a dtype, in preference order: fused_tc serves float16 and bfloat16, and
// float32 while torch.backends.cuda.matmul.allow_tf32 is on.
std::vector<std::string> algorithms(at::ScalarType dtype) {
  const bool tc = dtype == at::kHalf || dtype == at::kBFloat16 ||
                  (dtype == at::kFloat && at::globalContext().allowTF32CuBLAS());
  if (tc) return {"fused", "library", "fused_tc"};
  return {"fused", "library"};
}

at::Tensor lc2d_forward_cuda(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                             c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation) {
  constexpr const char* op = "lc2d_forward";
  const Lc2dGeometry g = check_lc2d_forward_inputs(x, weight, bias, stride, padding, dilation);
  const DeviceGuard guard(x.device());
  at::Tensor y = at::empty({g.N, g.C_out, g.H_out, g.W_out}, x.options());
  if (g.N == 0) return y;  // no elements to write
  const Lc2dDims d = make_dims(g, op);
  const int mb = micro_tiles(g.C_out);  // the fused kernel's C_out tile: 16 mb channels
  const dim3 grid(static_cast<unsigned>(d.P), tiles_yz(g.C_out, kSpread * mb, op, "C_out"));
  const dim3 grid_tc(static_cast<unsigned>(d.P), tiles_yz(g.C_out, kTile, op, "C_out"));
  const at::Tensor xc = x.contiguous();
  const at::Tensor wc = weight.contiguous();
  const bool has_bias = bias.has_value() && bias->defined();
  const at::Tensor bc = has_bias ? bias->contiguous() : at::Tensor();
  // Weight rows staged with vector loads (load_vec4): K a multiple of 4, the data aligned to 4 elements.
  const bool vec_w = g.patch() % 4 == 0 &&
                     reinterpret_cast<uintptr_t>(wc.const_data_ptr()) % (4 * wc.element_size()) == 0;
  const auto run = [&](const std::string& algorithm) {
    if (algorithm == "library") return library_forward(xc, wc, bc, y, g, d);
    if (algorithm == "fused_tc") {
      dispatch_tensor_core(x.scalar_type(), [&](auto tag) {
        using scalar_t = decltype(tag);
        launch_kernel(lc2d_forward_tc_kernel<scalar_t>, grid_tc, kThreads, 0, xc.const_data_ptr<scalar_t>(),
                      wc.const_data_ptr<scalar_t>(), has_bias ? bc.const_data_ptr<scalar_t>() : nullptr,
                      y.mutable_data_ptr<scalar_t>(), d, vec_w);
      });
      return y;
    }
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "lc2d_forward_cuda", [&] {
      with_micro_tiles(mb, [&](auto m) {
        launch_kernel(lc2d_forward_kernel<scalar_t, decltype(m)::value>, grid, kThreads, 0,
                      xc.const_data_ptr<scalar_t>(), wc.const_data_ptr<scalar_t>(),
                      has_bias ? bc.const_data_ptr<scalar_t>() : nullptr, y.mutable_data_ptr<scalar_t>(), d, vec_w);
      });
    });
    return y;
  };
  return run(select_lc2d_algorithm(Lc2dPass::kForward, g, x.scalar_type(), x.device(),
                                   algorithms(x.scalar_type()),
                                   [&](const std::string& a) { return time_ms([&] { run(a); }); }));
}

at::Tensor lc2d_backward_input_cuda(const at::Tensor& grad_y, const at::Tensor& weight, c10::IntArrayRef input_size,
                                    c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                                    c10::string_view feedback, int64_t seed, int64_t stream, int64_t step,
                                    c10::string_view distribution, double scale) {
  constexpr const char* op = "lc2d_backward_input";
  const auto [g, f] = check_lc2d_backward_input_inputs(grad_y, weight, input_size, stride, padding, dilation,
                                                       feedback, seed, stream, step, distribution, scale);
  const DeviceGuard guard(grad_y.device());
  // The kernel writes every element (pixels no window covers included), so no zero fill.
  at::Tensor grad_x = at::empty({g.N, g.C_in, g.H, g.W}, grad_y.options());
  if (g.N == 0) return grad_x;
  const Lc2dDims d = make_dims(g, op);
  const at::Tensor gyc = grad_y.contiguous();
  // "random" never reads weight (it may be an expanded zero-stride tensor): no copy, a null pointer.
  const at::Tensor wc = f.reads_weight() ? weight.contiguous() : at::Tensor();
  // The fused kernels' grid: pixel groups x tiles of their C_in * GH * GW columns (16 mb wide, 64 on tensor cores).
  const auto grid = [&](const PixelGroups& pg, int width) {
    const int64_t groups = (g.H + pg.GH - 1) / pg.GH * pg.groups_w;
    return dim3(static_cast<unsigned>(groups), tiles_yz(g.C_in * pg.GH * pg.GW, width, op, "C_in * pixels per group"));
  };
  const auto run = [&](const std::string& algorithm) {
    if (algorithm == "library") return library_backward_input(gyc, wc, grad_x, g, d, f);
    if (algorithm == "fused_tc") {
      const PixelGroups pg = input_groups(g, true);
      dispatch_tensor_core(grad_y.scalar_type(), [&](auto tag) {
        using scalar_t = decltype(tag);
        fused_backward_input<scalar_t>(wc, grad_x, g, f, [&](auto resume, const FeedbackSpec& spec, const scalar_t* b,
                                                             const ChannelRange& ch, int64_t o_lo, auto* out) {
          launch_kernel(lc2d_backward_input_tc_kernel<scalar_t, decltype(resume)::value>, grid(pg, kTile), kThreads,
                        0, gyc.const_data_ptr<scalar_t>() + o_lo * g.positions(), b, out, d, pg, spec, ch);
        });
      });
      return grad_x;
    }
    const PixelGroups pg = input_groups(g, false);
    const int mb = micro_tiles(g.C_in * pg.GH * pg.GW);  // the column tile: 16 mb columns
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_y.scalar_type(), "lc2d_backward_input_cuda", [&] {
      with_micro_tiles(mb, [&](auto m) {
        constexpr int MB = decltype(m)::value;
        fused_backward_input<scalar_t>(wc, grad_x, g, f, [&](auto resume, const FeedbackSpec& spec, const scalar_t* b,
                                                             const ChannelRange& ch, int64_t o_lo, auto* out) {
          launch_kernel(lc2d_backward_input_kernel<scalar_t, decltype(resume)::value, MB>, grid(pg, kSpread * mb),
                        kThreads, 0, gyc.const_data_ptr<scalar_t>() + o_lo * g.positions(), b, out, d, pg, spec, ch);
        });
      });
    });
    return grad_x;
  };
  return run(select_lc2d_algorithm(Lc2dPass::kBackwardInput, g, grad_y.scalar_type(), grad_y.device(),
                                   algorithms(grad_y.scalar_type()),
                                   [&](const std::string& a) { return time_ms([&] { run(a); }); },
                                   f.generates() ? "generated feedback" : ""));
}

std::tuple<at::Tensor, at::Tensor> lc2d_backward_weight_cuda(const at::Tensor& grad_y, const at::Tensor& x,
                                                             c10::IntArrayRef kernel_size, c10::IntArrayRef stride,
                                                             c10::IntArrayRef padding, c10::IntArrayRef dilation) {
  constexpr const char* op = "lc2d_backward_weight";
  const Lc2dGeometry g = check_lc2d_backward_weight_inputs(grad_y, x, kernel_size, stride, padding, dilation);
  const DeviceGuard guard(x.device());
  const std::array<int64_t, 6> w_shape{g.H_out, g.W_out, g.C_out, g.C_in, g.kH, g.kW};
  const std::array<int64_t, 3> b_shape{g.C_out, g.H_out, g.W_out};
  if (g.N == 0) {  // an empty batch contributes nothing
    return {at::zeros(w_shape, x.options()), at::zeros(b_shape, x.options())};
  }
  // The kernel writes every element of both.
  at::Tensor grad_weight = at::empty(w_shape, x.options());
  at::Tensor grad_bias = at::empty(b_shape, x.options());
  const Lc2dDims d = make_dims(g, op);
  const int ma = micro_tiles(g.C_out);  // the fused kernel's C_out tile: 16 ma channels
  const dim3 grid(static_cast<unsigned>(d.P), tiles_yz(g.patch(), kTile, op, "C_in * kH * kW"),
                  tiles_yz(g.C_out, kSpread * ma, op, "C_out"));
  const dim3 grid_tc(static_cast<unsigned>(d.P), grid.y, tiles_yz(g.C_out, kTile, op, "C_out"));
  const at::Tensor gyc = grad_y.contiguous();
  const at::Tensor xc = x.contiguous();
  const auto run = [&](const std::string& algorithm) {
    if (algorithm == "library") return library_backward_weight(gyc, xc, grad_weight, grad_bias, g, d);
    if (algorithm == "fused_tc") {
      return dispatch_tensor_core(x.scalar_type(), [&](auto tag) {
        using scalar_t = decltype(tag);
        launch_kernel(lc2d_backward_weight_tc_kernel<scalar_t>, grid_tc, kThreads, 0, gyc.const_data_ptr<scalar_t>(),
                      xc.const_data_ptr<scalar_t>(), grad_weight.mutable_data_ptr<scalar_t>(),
                      grad_bias.mutable_data_ptr<scalar_t>(), d);
      });
    }
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "lc2d_backward_weight_cuda", [&] {
      with_micro_tiles(ma, [&](auto m) {
        launch_kernel(lc2d_backward_weight_kernel<scalar_t, decltype(m)::value>, grid, kThreads, 0,
                      gyc.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(),
                      grad_weight.mutable_data_ptr<scalar_t>(), grad_bias.mutable_data_ptr<scalar_t>(), d);
      });
    });
  };
  run(select_lc2d_algorithm(Lc2dPass::kBackwardWeight, g, x.scalar_type(), x.device(),
                            algorithms(x.scalar_type()),
                            [&](const std::string& a) { return time_ms([&] { run(a); }); }));
  return {grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(bioplaus, BIOPLAUS_KERNEL_KEY, m) {
  m.impl("lc2d_forward", &lc2d_forward_cuda);
  m.impl("lc2d_backward_input", &lc2d_backward_input_cuda);
  m.impl("lc2d_backward_weight", &lc2d_backward_weight_cuda);
}

}  // namespace bioplaus
