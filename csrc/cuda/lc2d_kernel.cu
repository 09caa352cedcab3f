// Locally connected 2D (untied convolution): CUDA kernels of the bioplaus::lc2d_* ops (contract in
// lc2d.h).
//
// Each pass is a set of small GEMMs, one per output position (forward, weight gradient) or per input
// pixel (input gradient), computed by the hand-written register-tiled FFMA step of tile_fma.cuh
// (256 threads, a 64 x 64 result tile per block, the reduction staged 16 steps at a time).
// Nothing is materialised in global memory (implicit im2col: patch elements are gathered from x while
// staging, zero outside the image) and there are no atomics: every output element is written once by
// one thread after a reduction in a fixed order, so results are bit-identical from run to run.
//
// Accumulation is in at::opmath_type<scalar_t>: float for float32/float16/bfloat16, double for
// float64. Indexing: offsets within one sample of an activation ([C, H, W]) and within one
// position's weight block ([C_out, K]) are 32-bit, as are all per-axis values (make_dims checks that
// they fit); the sample and position bases, n * sample and p * block, are 64-bit, so whole tensors
// may pass 2^31 elements.
#include "lc2d.h"

#include "common/checks.h"
#include "cuda/launch.cuh"
#include "cuda/tile_fma.cuh"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <climits>
#include <initializer_list>
#include <tuple>

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

// Forward. Block (p, o-tile) computes Y_p[n, o] = bias[o, p] + sum_k X_p[n, k] * W_p[o, k] for
// o in [o0, o0 + 64) and every n, the batch in tiles of 64 rows; X_p[n, k] is the patch element
// x[n, c, i*sH - pT + r*dH, j*sW - pL + s*dW] (zero outside the image) and W_p = weight[i, j] as
// [C_out, K].
//   blockIdx.x = p = i * W_out + j (consecutive blocks are neighbouring positions: they share input
//   pixels in L2 and write neighbouring y elements), blockIdx.y = o-tile, o0 = 64 * blockIdx.y.
//   Compute: thread (ty, tx) owns samples n0 + ty + 16a and channels o0 + tx + 16b.
//   Staging: thread owns step kk = tid % 16 of the chunk and tile rows row = tid / 16 + 16m, m < 4
//   (16 = kStepRows):
//     Xs[kk][row] = X_p[n0 + row, k0 + kk],   Ws[kk][row] = W_p[o0 + row, k0 + kk].
//   Consecutive threads read consecutive k: contiguous weights and, within a kernel row, input
//   pixels dW apart. A thread's k is the same for its 4 rows, so it decodes (c, r, s) once a chunk.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads, kMinBlocks<scalar_t>)
    lc2d_forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ weight,
                        const scalar_t* __restrict__ bias, scalar_t* __restrict__ y, const Lc2dDims d) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t Xs[kChunk][kLd];
  __shared__ acc_t Ws[kChunk][kLd];

  const int p = static_cast<int>(blockIdx.x);
  const int i = p / d.W_out;
  const int j = p - i * d.W_out;
  const int o0 = static_cast<int>(blockIdx.y) * kTile;
  const int tid = static_cast<int>(threadIdx.x);
  const int tx = tid % kSpread, ty = tid / kSpread;
  const int kk = tid % kChunk, row0 = tid / kChunk;  // row0 < kStepRows

  const int ih0 = i * d.sH - d.pT;  // window origin in input coordinates (negative inside the padding)
  const int iw0 = j * d.sW - d.pL;
  const int kHW = d.kH * d.kW;
  const scalar_t* Wp = weight + static_cast<int64_t>(p) * d.w_block;

  for (int n0 = 0; n0 < d.N; n0 += kTile) {
    acc_t acc[kMicro][kMicro] = {};
    for (int k0 = 0; k0 < d.K; k0 += kChunk) {
      const int k = k0 + kk;
      bool x_in = false;  // k is a real patch index whose pixel lies inside the image
      int x_off = 0;      // offset of that pixel within one sample of x
      if (k < d.K) {
        const int c = k / kHW;
        const int rs = k - c * kHW;
        const int r = rs / d.kW;
        const int s = rs - r * d.kW;
        const int ih = ih0 + r * d.dH;
        const int iw = iw0 + s * d.dW;
        x_in = ih >= 0 && ih < d.H && iw >= 0 && iw < d.W;
        if (x_in) x_off = c * d.HW + ih * d.W + iw;
      }
#pragma unroll
      for (int m = 0; m < kMicro; ++m) {
        const int row = row0 + kStepRows * m;
        const int n = n0 + row;
        const int o = o0 + row;
        Xs[kk][row] = (x_in && n < d.N) ? static_cast<acc_t>(x[static_cast<int64_t>(n) * d.x_sample + x_off])
                                        : acc_t(0);
        Ws[kk][row] = (k < d.K && o < d.C_out) ? static_cast<acc_t>(Wp[o * d.K + k]) : acc_t(0);
      }
      __syncthreads();
      tile_fma(acc, Xs, Ws, ty, tx);
      __syncthreads();  // the next chunk overwrites Xs / Ws
    }
#pragma unroll
    for (int a = 0; a < kMicro; ++a) {
      const int n = n0 + ty + kSpread * a;
#pragma unroll
      for (int b = 0; b < kMicro; ++b) {
        const int o = o0 + tx + kSpread * b;
        if (n < d.N && o < d.C_out) {
          const int plane = o * d.P + p;  // (o, i, j) within one sample of y, and within bias
          acc_t v = acc[a][b];
          if (bias != nullptr) v += static_cast<acc_t>(bias[plane]);
          y[static_cast<int64_t>(n) * d.y_sample + plane] = static_cast<scalar_t>(v);
        }
      }
    }
  }
}

// Weight gradient. Block (p, k-tile, o-tile) computes dW_p[o, k] = sum_n dY_p[n, o] * X_p[n, k] for
// o in [o0, o0 + 64), k in [k0, k0 + 64), reducing over the whole batch inside the block (16 samples
// per chunk), then writes each weight element once. dY_p[n, o] = grad_y[n, o, i, j].
//   blockIdx.x = p, blockIdx.y = k-tile (k0 = 64 * blockIdx.y), blockIdx.z = o-tile (o0 = 64 * blockIdx.z).
//   Compute: thread (ty, tx) owns channels o0 + ty + 16a and patch indices k0 + tx + 16b
//   (consecutive tx write consecutive k of grad_weight).
//   Staging: thread owns tile column col = tid % 64 and chunk steps q = tid / 64 + 4m, m < 4
//   (4 = kColRows):
//     Gs[q][col] = dY_p[n0 + q, o0 + col],   Xs[q][col] = X_p[n0 + q, k0 + col].
//   A thread's k and o never change, so its (c, r, s) decode and bounds test happen once.
//   The k-tile-0 blocks also write grad_bias[o, p] = sum_n grad_y[n, o, p]: thread tid < 64 sums column
//   tid of each staged Gs in batch order (a fixed order: deterministic).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads, kMinBlocks<scalar_t>)
    lc2d_backward_weight_kernel(const scalar_t* __restrict__ grad_y, const scalar_t* __restrict__ x,
                                scalar_t* __restrict__ grad_weight, scalar_t* __restrict__ grad_bias,
                                const Lc2dDims d) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t Gs[kChunk][kLd];
  __shared__ acc_t Xs[kChunk][kLd];

  const int p = static_cast<int>(blockIdx.x);
  const int i = p / d.W_out;
  const int j = p - i * d.W_out;
  const int k0 = static_cast<int>(blockIdx.y) * kTile;
  const int o0 = static_cast<int>(blockIdx.z) * kTile;
  const bool sums_bias = blockIdx.y == 0;
  const int tid = static_cast<int>(threadIdx.x);
  const int tx = tid % kSpread, ty = tid / kSpread;
  const int col = tid % kTile, q0 = tid / kTile;

  // This thread's staging column: patch index k (its pixel and whether it is in the image) and channel o.
  const int k = k0 + col;
  bool x_in = false;
  int x_off = 0;
  if (k < d.K) {
    const int kHW = d.kH * d.kW;
    const int c = k / kHW;
    const int rs = k - c * kHW;
    const int r = rs / d.kW;
    const int s = rs - r * d.kW;
    const int ih = i * d.sH - d.pT + r * d.dH;
    const int iw = j * d.sW - d.pL + s * d.dW;
    x_in = ih >= 0 && ih < d.H && iw >= 0 && iw < d.W;
    if (x_in) x_off = c * d.HW + ih * d.W + iw;
  }
  const int o = o0 + col;
  const bool o_in = o < d.C_out;
  const int gy_off = o_in ? o * d.P + p : 0;  // (o, i, j) within one sample of grad_y

  acc_t acc[kMicro][kMicro] = {};
  acc_t bias_sum = 0;
  for (int n0 = 0; n0 < d.N; n0 += kChunk) {
#pragma unroll
    for (int m = 0; m < kMicro; ++m) {
      const int q = q0 + kColRows * m;
      const int n = n0 + q;
      Gs[q][col] = (o_in && n < d.N) ? static_cast<acc_t>(grad_y[static_cast<int64_t>(n) * d.y_sample + gy_off])
                                     : acc_t(0);
      Xs[q][col] = (x_in && n < d.N) ? static_cast<acc_t>(x[static_cast<int64_t>(n) * d.x_sample + x_off])
                                     : acc_t(0);
    }
    __syncthreads();
    tile_fma(acc, Gs, Xs, ty, tx);
    if (sums_bias && tid < kTile) {
#pragma unroll
      for (int q = 0; q < kChunk; ++q) bias_sum += Gs[q][tid];
    }
    __syncthreads();  // the next chunk overwrites Gs / Xs
  }

  scalar_t* dWp = grad_weight + static_cast<int64_t>(p) * d.w_block;  // dW_p as [C_out, K]
#pragma unroll
  for (int a = 0; a < kMicro; ++a) {
    const int oa = o0 + ty + kSpread * a;
#pragma unroll
    for (int b = 0; b < kMicro; ++b) {
      const int kb = k0 + tx + kSpread * b;
      if (oa < d.C_out && kb < d.K) dWp[oa * d.K + kb] = static_cast<scalar_t>(acc[a][b]);
    }
  }
  if (sums_bias && tid < kTile && o0 + tid < d.C_out) {
    grad_bias[(o0 + tid) * d.P + p] = static_cast<scalar_t>(bias_sum);
  }
}

// Input gradient, as a gather. Block (pixel, c-tile) computes, for the input pixel (ih, iw),
//   dX[n, c, ih, iw] = sum over covering (i, r), (j, s) of sum_o dY[n, o, i, j] * Wt[i, j, o, c, r, s]
// for c in [c0, c0 + 64) and every n (batch tiles of 64), where (i, r) covers ih when
// i * sH + r * dH = ih + pT with 0 <= i < H_out and 0 <= r < kH (same for (j, s) and iw with pL).
// Each covering term is a GEMM dY_p[n, o] * Wt_p[o, c] (Wt_p = Wt[i, j, :, :, r, s]) reduced over o,
// 16 channels per chunk. Every weight element belongs to exactly one input pixel, so apart from the
// batch tiles it is read once.
//   blockIdx.x = ih * W + iw, blockIdx.y = c-tile (c0 = 64 * blockIdx.y).
//   Covering range: r runs over [r_lo, r_hi], the r that put i in [0, H_out) and r in [0, kH):
//     i * sH = ih + pT - r * dH in [0, (H_out - 1) * sH]  <=>  r in [ceil((ih + pT - (H_out - 1) * sH) / dH),
//     floor((ih + pT) / dH)]; of those, the r with (ih + pT - r * dH) divisible by sH cover ih.
//   Compute: thread (ty, tx) owns samples n0 + ty + 16a and input channels c0 + tx + 16b.
//   Staging: thread owns tile column col = tid % 64 and chunk steps q = tid / 64 + 4m, m < 4
//   (4 = kColRows):
//     Gs[q][col] = dY[n0 + col, o0 + q, i, j],   Ws[q][col] = Bt_p[o0 + q, c0 + col].
//   A thread's staging sample and channel are fixed within a batch tile, so are its row bases.
// Bt_p is the feedback matrix B of the spec `f` (common/feedback.h) at the same places as Wt_p: the
// staged element is B[e], e = p * C_out * K + o * K + (c * kH + r) * kW + s (64-bit), computed on load
// from weight[e] (weight, sign) and/or the generator (random, random_sign); B is never stored, and in
// "random" mode weight is not read (it may be null). kGenerates (f.generates()) compiles the generator in
// only where it is used: its registers would otherwise spill the other modes at 64 registers; the
// generating form gets a budget of 3 blocks per SM (<= 80 registers) with a float accumulator instead.
template <typename scalar_t, bool kGenerates>
constexpr int kInputMinBlocks = kGenerates && sizeof(at::opmath_type<scalar_t>) == 4 ? 3 : kMinBlocks<scalar_t>;

template <typename scalar_t, bool kGenerates>
__global__ void __launch_bounds__(kThreads, (kInputMinBlocks<scalar_t, kGenerates>))
    lc2d_backward_input_kernel(const scalar_t* __restrict__ grad_y, const scalar_t* __restrict__ weight,
                               scalar_t* __restrict__ grad_x, const Lc2dDims d, const FeedbackSpec f) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t Gs[kChunk][kLd];
  __shared__ acc_t Ws[kChunk][kLd];

  const int pix = static_cast<int>(blockIdx.x);
  const int ih = pix / d.W;
  const int iw = pix - ih * d.W;
  const int c0 = static_cast<int>(blockIdx.y) * kTile;
  const int tid = static_cast<int>(threadIdx.x);
  const int tx = tid % kSpread, ty = tid / kSpread;
  const int col = tid % kTile, q0 = tid / kTile;

  const int ah = ih + d.pT;  // = i * sH + r * dH for every covering (i, r)
  const int aw = iw + d.pL;
  const int span_h = ah - (d.H_out - 1) * d.sH;  // r * dH >= span_h keeps i <= H_out - 1
  const int span_w = aw - (d.W_out - 1) * d.sW;
  const int r_lo = span_h > 0 ? (span_h - 1) / d.dH + 1 : 0;
  const int s_lo = span_w > 0 ? (span_w - 1) / d.dW + 1 : 0;
  const int r_hi = min(d.kH - 1, ah / d.dH);  // r * dH <= ah keeps i >= 0
  const int s_hi = min(d.kW - 1, aw / d.dW);

  const int c = c0 + col;  // this thread's staging channel
  const bool c_in = c < d.C_in;
  const int c_off = c_in ? c * d.kH * d.kW : 0;  // (c, 0, 0) within a row of W_p

  for (int n0 = 0; n0 < d.N; n0 += kTile) {
    const int n = n0 + col;  // this thread's staging sample
    const bool n_in = n < d.N;
    const scalar_t* gy_n = grad_y + (n_in ? static_cast<int64_t>(n) * d.y_sample : 0);  // dY[n]
    acc_t acc[kMicro][kMicro] = {};
    for (int r = r_lo; r <= r_hi; ++r) {
      const int th = ah - r * d.dH;  // = i * sH
      if (th % d.sH != 0) continue;
      const int i = th / d.sH;
      for (int s = s_lo; s <= s_hi; ++s) {
        const int tw = aw - s * d.dW;  // = j * sW
        if (tw % d.sW != 0) continue;
        const int j = tw / d.sW;
        const int p = i * d.W_out + j;
        // Bt_p[o, c] = B[e_pc + o * K], e_pc = the flat index of (p, o = 0, c, r, s).
        const int64_t e_pc = static_cast<int64_t>(p) * d.w_block + c_off + r * d.kW + s;
        for (int o0 = 0; o0 < d.C_out; o0 += kChunk) {
#pragma unroll
          for (int m = 0; m < kMicro; ++m) {
            const int q = q0 + kColRows * m;
            const int o = o0 + q;
            const bool o_in = o < d.C_out;
            Gs[q][col] = (n_in && o_in) ? static_cast<acc_t>(gy_n[o * d.P + p]) : acc_t(0);
            acc_t b = acc_t(0);
            if (c_in && o_in) {
              const int64_t e = e_pc + static_cast<int64_t>(o) * d.K;
              const scalar_t w = f.reads_weight() ? weight[e] : scalar_t(0);
              b = static_cast<acc_t>(kGenerates ? feedback_element<scalar_t, acc_t>(f, static_cast<uint64_t>(e), w)
                                                : combine_feedback<scalar_t, acc_t>(f, scalar_t(0), w));
            }
            Ws[q][col] = b;
          }
          __syncthreads();
          tile_fma(acc, Gs, Ws, ty, tx);
          __syncthreads();  // the next chunk overwrites Gs / Ws
        }
      }
    }
    // Pixels no window covers (stride larger than the dilated kernel) get their zeros here too.
#pragma unroll
    for (int a = 0; a < kMicro; ++a) {
      const int na = n0 + ty + kSpread * a;
#pragma unroll
      for (int b = 0; b < kMicro; ++b) {
        const int cb = c0 + tx + kSpread * b;
        if (na < d.N && cb < d.C_in) {
          grad_x[static_cast<int64_t>(na) * d.x_sample + cb * d.HW + pix] = static_cast<scalar_t>(acc[a][b]);
        }
      }
    }
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

// Number of 64-wide tiles over `extent`, for grid dimensions y / z (at most 65535 blocks).
unsigned tiles_yz(int64_t extent, const char* op, const char* what) {
  const int64_t t = (extent + kTile - 1) / kTile;
  BIOPLAUS_CHECK(t <= 65535, op, ": ", what, " = ", extent, " needs ", t, " tiles of ", kTile,
                 ", more than the 65535 blocks a CUDA grid dimension allows");
  return static_cast<unsigned>(t);
}

at::Tensor lc2d_forward_cuda(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                             c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation) {
  constexpr const char* op = "lc2d_forward";
  const Lc2dGeometry g = check_lc2d_forward_inputs(x, weight, bias, stride, padding, dilation);
  const DeviceGuard guard(x.device());
  at::Tensor y = at::empty({g.N, g.C_out, g.H_out, g.W_out}, x.options());
  if (g.N == 0) return y;  // no elements to write
  const Lc2dDims d = make_dims(g, op);
  const dim3 grid(static_cast<unsigned>(d.P), tiles_yz(g.C_out, op, "C_out"));
  const at::Tensor xc = x.contiguous();
  const at::Tensor wc = weight.contiguous();
  const bool has_bias = bias.has_value() && bias->defined();
  const at::Tensor bc = has_bias ? bias->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "lc2d_forward_cuda", [&] {
    launch_kernel(lc2d_forward_kernel<scalar_t>, grid, kThreads, 0, xc.const_data_ptr<scalar_t>(),
                  wc.const_data_ptr<scalar_t>(), has_bias ? bc.const_data_ptr<scalar_t>() : nullptr,
                  y.mutable_data_ptr<scalar_t>(), d);
  });
  return y;
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
  const dim3 grid(static_cast<unsigned>(d.HW), tiles_yz(g.C_in, op, "C_in"));
  const at::Tensor gyc = grad_y.contiguous();
  // "random" never reads weight (it may be an expanded zero-stride tensor): no copy, a null pointer.
  const at::Tensor wc = f.reads_weight() ? weight.contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_y.scalar_type(), "lc2d_backward_input_cuda", [&] {
    const scalar_t* w = f.reads_weight() ? wc.const_data_ptr<scalar_t>() : nullptr;
    const auto kernel = f.generates() ? lc2d_backward_input_kernel<scalar_t, true>
                                      : lc2d_backward_input_kernel<scalar_t, false>;
    launch_kernel(kernel, grid, kThreads, 0, gyc.const_data_ptr<scalar_t>(), w, grad_x.mutable_data_ptr<scalar_t>(),
                  d, f);
  });
  return grad_x;
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
  const dim3 grid(static_cast<unsigned>(d.P), tiles_yz(g.patch(), op, "C_in * kH * kW"),
                  tiles_yz(g.C_out, op, "C_out"));
  const at::Tensor gyc = grad_y.contiguous();
  const at::Tensor xc = x.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "lc2d_backward_weight_cuda", [&] {
    launch_kernel(lc2d_backward_weight_kernel<scalar_t>, grid, kThreads, 0, gyc.const_data_ptr<scalar_t>(),
                  xc.const_data_ptr<scalar_t>(), grad_weight.mutable_data_ptr<scalar_t>(),
                  grad_bias.mutable_data_ptr<scalar_t>(), d);
  });
  return {grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(bioplaus, BIOPLAUS_KERNEL_KEY, m) {
  m.impl("lc2d_forward", &lc2d_forward_cuda);
  m.impl("lc2d_backward_input", &lc2d_backward_input_cuda);
  m.impl("lc2d_backward_weight", &lc2d_backward_weight_cuda);
}

}  // namespace bioplaus
