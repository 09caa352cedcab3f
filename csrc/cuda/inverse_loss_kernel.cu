// Inverse loss on CUDA (contract in inverse_loss.h).
//
// Linear: the hand-written GEMM of cuda/tp_gemm.cuh (kInputs = 1) with the epilogue, per element
// idx = m * D_in + i:
//   x_hat = act(acc + c[i]);  residual = x_hat - target[idx]
// LC: the transposed LC of y (the LC input-gradient kernel via the dispatcher), then the same epilogue as
// an elementwise kernel with c[idx % E].
// The loss is reduced without atomics in a fixed order: one block per sample row sums its squared
// residuals (strided partial sums, then a shared-memory tree), then one block sums the rows and divides
// by N; results are bit-identical run to run.
#include "inverse_loss.h"
#include "cuda/launch.cuh"
#include "cuda/tp_gemm.cuh"

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

namespace bioplaus {
namespace {

using Result = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
constexpr int kThreads = 256;

template <typename scalar_t>
struct ResidualWriter {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* target;
  scalar_t* x_hat;
  scalar_t* residual;
  tp::Activation act;

  __device__ __forceinline__ void write(int64_t idx, acc_t pre_with_bias) const {
    const scalar_t xh = static_cast<scalar_t>(tp::activate<acc_t>(act, pre_with_bias));
    x_hat[idx] = xh;
    residual[idx] = static_cast<scalar_t>(static_cast<acc_t>(xh) - static_cast<acc_t>(target[idx]));
  }
};

template <typename scalar_t>
struct LinearEpilogue {
  using acc_t = at::opmath_type<scalar_t>;
  ResidualWriter<scalar_t> writer;
  const scalar_t* bias;
  int64_t cols;

  __device__ __forceinline__ void operator()(int64_t m, int64_t i, acc_t acc, acc_t) const {
    writer.write(m * cols + i, acc + static_cast<acc_t>(bias[i]));
  }
};

template <typename scalar_t>
__global__ void lc_epilogue_kernel(ResidualWriter<scalar_t> writer, const scalar_t* __restrict__ pre,
                                   const scalar_t* __restrict__ bias, int64_t numel, int64_t E) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < numel;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    writer.write(idx, static_cast<acc_t>(pre[idx]) + static_cast<acc_t>(bias[idx % E]));
  }
}

// Fixed-order tree over the kThreads values in `s` (a shared array); returns the total in thread 0.
template <typename acc_t>
__device__ acc_t block_sum(acc_t* s) {
  for (int width = kThreads / 2; width > 0; width /= 2) {
    __syncthreads();
    if (static_cast<int>(threadIdx.x) < width) s[threadIdx.x] += s[threadIdx.x + width];
  }
  __syncthreads();
  return s[0];
}

// row_sq[n] = sum_e residual[n, e]^2; one block per row (grid-stride over rows).
template <typename scalar_t>
__global__ void row_sq_kernel(const scalar_t* __restrict__ residual, at::opmath_type<scalar_t>* __restrict__ row_sq,
                              int64_t N, int64_t E) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t s[kThreads];
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
    acc_t part = 0;
    for (int64_t e = threadIdx.x; e < E; e += kThreads) {
      const acc_t r = static_cast<acc_t>(residual[n * E + e]);
      part += r * r;
    }
    s[threadIdx.x] = part;
    const acc_t total = block_sum(s);
    if (threadIdx.x == 0) row_sq[n] = total;
    __syncthreads();  // every thread has read s[0] before the next row overwrites s
  }
}

// loss = (sum_n row_sq[n]) / N; one block.
template <typename scalar_t>
__global__ void loss_kernel(const at::opmath_type<scalar_t>* __restrict__ row_sq, scalar_t* __restrict__ loss,
                            int64_t N) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t s[kThreads];
  acc_t part = 0;
  for (int64_t n = threadIdx.x; n < N; n += kThreads) part += row_sq[n];
  s[threadIdx.x] = part;
  const acc_t total = block_sum(s);
  if (threadIdx.x == 0) *loss = static_cast<scalar_t>(total / static_cast<acc_t>(N));
}

template <typename scalar_t>
void reduce_loss(const at::Tensor& residual, at::Tensor& loss) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = residual.size(0), E = residual.numel() / N;
  const auto acc_dtype = std::is_same<acc_t, double>::value ? at::kDouble : at::kFloat;
  at::Tensor row_sq = at::empty({N}, residual.options().dtype(acc_dtype));
  // One block per row, as many as the device keeps resident; more rows loop.
  const unsigned grid = grid_stride_blocks(N * kThreads, kThreads, residual.get_device());
  launch_kernel(row_sq_kernel<scalar_t>, grid, kThreads, 0, residual.const_data_ptr<scalar_t>(),
                row_sq.mutable_data_ptr<acc_t>(), N, E);
  launch_kernel(loss_kernel<scalar_t>, 1, kThreads, 0, row_sq.const_data_ptr<acc_t>(),
                loss.mutable_data_ptr<scalar_t>(), N);
}

Result inverse_loss_cuda(const at::Tensor& y, const at::Tensor& target, const at::Tensor& weight,
                         const at::Tensor& bias, c10::string_view activation) {
  const tp::Activation act = check_inverse_loss_inputs(y, target, weight, bias, activation);
  const DeviceGuard guard(weight.device());
  const at::Tensor yc = y.contiguous(), tc = target.contiguous(), v = weight.contiguous(), c = bias.contiguous();
  const auto opts = tc.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor x_hat = at::empty(tc.sizes(), opts), residual = at::empty(tc.sizes(), opts);
  at::Tensor loss = at::zeros({}, tc.options());
  const int64_t M = tc.size(0), D_in = v.size(0), D_out = v.size(1);
  if (tc.numel() == 0) return {loss, x_hat, residual};
  BIOPLAUS_CHECK(M <= int64_t{65535} * tp::kGemmTile, "inverse_loss: batch size ", M,
                 " exceeds the CUDA kernel's grid limit of ", int64_t{65535} * tp::kGemmTile, " rows");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, tc.scalar_type(), "inverse_loss_cuda", [&] {
    ResidualWriter<scalar_t> writer{tc.const_data_ptr<scalar_t>(), x_hat.mutable_data_ptr<scalar_t>(),
                                    residual.mutable_data_ptr<scalar_t>(), act};
    LinearEpilogue<scalar_t> ep{writer, c.const_data_ptr<scalar_t>(), D_in};
    tp::launch_inverse_gemm<scalar_t, 1>(yc.const_data_ptr<scalar_t>(), nullptr, v.const_data_ptr<scalar_t>(), M,
                                         D_in, D_out, ep);
    reduce_loss<scalar_t>(residual, loss);
  });
  return {loss, x_hat, residual};
}

Result inverse_loss_lc2d_cuda(const at::Tensor& y, const at::Tensor& target, const at::Tensor& weight,
                              const at::Tensor& bias, c10::IntArrayRef stride, c10::IntArrayRef padding,
                              c10::IntArrayRef dilation, c10::string_view activation) {
  const tp::Activation act =
      check_inverse_loss_lc2d_inputs(y, target, weight, bias, stride, padding, dilation, activation);
  const DeviceGuard guard(weight.device());
  const at::Tensor tc = target.contiguous(), c = bias.contiguous();
  const auto opts = tc.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor x_hat = at::empty(tc.sizes(), opts), residual = at::empty(tc.sizes(), opts);
  at::Tensor loss = at::zeros({}, tc.options());
  const int64_t numel = tc.numel();
  if (numel == 0) return {loss, x_hat, residual};
  const at::Tensor pre =
      tp::lc2d_transposed(y, weight, {tc.size(2), tc.size(3)}, stride, padding, dilation).contiguous();
  const unsigned blocks = grid_stride_blocks(numel, kThreads, weight.get_device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, tc.scalar_type(), "inverse_loss_lc2d_cuda", [&] {
    ResidualWriter<scalar_t> writer{tc.const_data_ptr<scalar_t>(), x_hat.mutable_data_ptr<scalar_t>(),
                                    residual.mutable_data_ptr<scalar_t>(), act};
    launch_kernel(lc_epilogue_kernel<scalar_t>, blocks, kThreads, 0, writer, pre.const_data_ptr<scalar_t>(),
                  c.const_data_ptr<scalar_t>(), numel, c.numel());
    reduce_loss<scalar_t>(residual, loss);
  });
  return {loss, x_hat, residual};
}

// The noise of the four elements 4 * block .. 4 * block + 3: the float32 Philox normal samples times
// float32(sigma), one Philox call and one Box-Muller radius per pair, the expressions of philox::normal_sample
// in its order, so the values equal philox_fill(h, seed, stream, step, "normal", sigma) on the device bit for
// bit.
__device__ __forceinline__ void noise4(philox::Key key, uint64_t step, int64_t block, float sigma, float out[4]) {
  const philox::Words v = philox::block_words(key, static_cast<uint64_t>(block), step);
#pragma unroll
  for (int p = 0; p < 4; p += 2) {
    const float u1 = static_cast<float>((v.w[p] >> 8) + 1u) * philox::kTwoPow24Inv;
    const float u2 = static_cast<float>(v.w[p + 1] >> 8) * philox::kTwoPow24Inv;
    const float r = sqrtf(philox::mul_rn(-2.0f, logf(u1)));
    const float t = philox::mul_rn(6.28318530717958647692f, u2);
    out[p] = philox::mul_rn(sigma, philox::mul_rn(r, cosf(t)));
    out[p + 1] = philox::mul_rn(sigma, philox::mul_rn(r, sinf(t)));
  }
}

// out[4b + j] = h[4b + j] + eps[4b + j]: one thread per Philox block b (four elements, one Philox call).
template <typename scalar_t>
__global__ void noisy_input_kernel(const scalar_t* __restrict__ h, scalar_t* __restrict__ out, int64_t numel,
                                   NoiseArgs a) {
  const int64_t blocks = (numel + 3) / 4;
  for (int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; b < blocks;
       b += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float eps[4];
    noise4(a.key, a.step, b, a.sigma, eps);
    const int64_t n = numel - 4 * b < 4 ? numel - 4 * b : 4;
    for (int64_t j = 0; j < n; ++j) out[4 * b + j] = h[4 * b + j] + static_cast<scalar_t>(eps[j]);
  }
}

at::Tensor inverse_loss_noisy_input_cuda(const at::Tensor& h, double sigma, int64_t seed, int64_t stream,
                                         int64_t step) {
  const NoiseArgs a = check_inverse_loss_noisy_input_inputs(h, sigma, seed, stream, step);
  const DeviceGuard guard(h.device());
  const at::Tensor hc = h.contiguous();
  at::Tensor out = at::empty(hc.sizes(), hc.options().memory_format(at::MemoryFormat::Contiguous));
  const int64_t numel = hc.numel();
  if (numel == 0) return out;
  const unsigned grid = grid_stride_blocks((numel + 3) / 4, kThreads, h.get_device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, hc.scalar_type(), "inverse_loss_noisy_input_cuda", [&] {
    launch_kernel(noisy_input_kernel<scalar_t>, grid, kThreads, 0, hc.const_data_ptr<scalar_t>(),
                  out.mutable_data_ptr<scalar_t>(), numel, a);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(bioplaus, BIOPLAUS_KERNEL_KEY, m) {
  m.impl("inverse_loss", inverse_loss_cuda);
  m.impl("inverse_loss_lc2d", inverse_loss_lc2d_cuda);
  m.impl("inverse_loss_noisy_input", inverse_loss_noisy_input_cuda);
}

}  // namespace bioplaus
