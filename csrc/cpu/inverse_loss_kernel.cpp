// Inverse loss on the CPU (contract in inverse_loss.h).
//
// x_hat = act(y V^T + c) (Linear: at::addmm, the BLAS torch was built with; LC: the transposed LC through
// the LC input-gradient kernel, then the bias), the activation in place with ATen's vectorised kernels.
// Then, by sample row n (E = numel / N elements a row): residual[i] = x_hat[i] - target[i] and
// row_sq[n] = the sum of residual^2 over the row (accumulated in double); loss = (sum of row_sq in row
// order) / N, independent of the thread count.
// inverse_loss_noisy_input: h + eps, generated in chunks (write_noise).
#include "inverse_loss.h"

#include "cpu/philox_generator.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

namespace bioplaus {
namespace {

using Result = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// dst[i] = base[i] + scalar_t(eps[i]) for i < numel: the float32 noise, rounded to scalar_t, then added in
// scalar_t, exactly as h + philox_fill(...) forms it. One pass:
// blocks are split across threads, each working through kChunk counter blocks at a time (normal_samples
// into an L1-sized buffer, then the store), so there are no full-size temporaries.
template <typename scalar_t>
void write_noise(const NoiseArgs& a, int64_t numel, const scalar_t* base, scalar_t* dst) {
  constexpr int64_t kChunk = 512;  // blocks: 2048 samples
  const int64_t blocks = (numel + 3) / 4;
  at::parallel_for(0, blocks, 4096, [&](int64_t b_begin, int64_t b_end) {
    std::vector<float> eps(4 * kChunk);
    for (int64_t b0 = b_begin; b0 < b_end; b0 += kChunk) {
      const int64_t nb = std::min(kChunk, b_end - b0);
      normal_samples(a.key, a.step, static_cast<uint64_t>(b0), nb, a.sigma, eps.data());
      const int64_t e0 = 4 * b0, count = std::min(4 * nb, numel - e0);
      scalar_t* out = dst + e0;
      const scalar_t* in = base + e0;
      for (int64_t e = 0; e < count; ++e) out[e] = in[e] + static_cast<scalar_t>(eps[e]);
    }
  });
}

// x_hat: [N, E] contiguous, activated; target: N samples of E elements.
Result epilogue(const at::Tensor& x_hat, const at::Tensor& target) {
  const at::Tensor tc = target.contiguous();
  at::Tensor residual = at::empty(tc.sizes(), tc.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor loss = at::zeros({}, tc.options());
  const int64_t N = tc.size(0), E = N ? tc.numel() / N : 0;
  if (tc.numel() == 0) return {loss, x_hat.view(tc.sizes()), residual};
  std::vector<double> row_sq(N);
  AT_DISPATCH_FLOATING_TYPES(tc.scalar_type(), "inverse_loss_cpu", [&] {
    const scalar_t* xp = x_hat.const_data_ptr<scalar_t>();
    const scalar_t* tgt = tc.const_data_ptr<scalar_t>();
    scalar_t* rp = residual.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, N, std::max<int64_t>(1, 32768 / E), [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) {
        const scalar_t* x = xp + n * E;
        const scalar_t* trow = tgt + n * E;
        scalar_t* r = rp + n * E;
        double sq = 0;
        for (int64_t e = 0; e < E; ++e) {
          r[e] = x[e] - trow[e];
          sq += static_cast<double>(r[e]) * static_cast<double>(r[e]);
        }
        row_sq[n] = sq;
      }
    });
    double total = 0;
    for (int64_t n = 0; n < N; ++n) total += row_sq[n];
    loss.fill_(static_cast<scalar_t>(total / static_cast<double>(N)));
  });
  return {loss, x_hat.view(tc.sizes()), residual};
}

Result inverse_loss_cpu(const at::Tensor& y, const at::Tensor& target, const at::Tensor& weight,
                        const at::Tensor& bias, c10::string_view activation) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const tp::Activation act = check_inverse_loss_inputs(y, target, weight, bias, activation);
  at::Tensor x_hat = at::addmm(bias, y, weight.t());
  tp::activate_(x_hat, act);
  return epilogue(x_hat, target);
}

Result inverse_loss_lc2d_cpu(const at::Tensor& y, const at::Tensor& target, const at::Tensor& weight,
                             const at::Tensor& bias, c10::IntArrayRef stride, c10::IntArrayRef padding,
                             c10::IntArrayRef dilation, c10::string_view activation) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const tp::Activation act =
      check_inverse_loss_lc2d_inputs(y, target, weight, bias, stride, padding, dilation, activation);
  if (target.size(0) == 0) return epilogue(at::empty(target.sizes(), target.options()), target);
  const at::Tensor x_hat =
      tp::lc2d_inverse(y, weight, bias, {target.size(2), target.size(3)}, stride, padding, dilation, act);
  return epilogue(x_hat, target);
}

at::Tensor inverse_loss_noisy_input_cpu(const at::Tensor& h, double sigma, int64_t seed, int64_t stream, int64_t step) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const NoiseArgs a = check_inverse_loss_noisy_input_inputs(h, sigma, seed, stream, step);
  const at::Tensor hc = h.contiguous();
  at::Tensor out = at::empty(hc.sizes(), hc.options().memory_format(at::MemoryFormat::Contiguous));
  AT_DISPATCH_FLOATING_TYPES(hc.scalar_type(), "inverse_loss_noisy_input_cpu", [&] {
    write_noise<scalar_t>(a, hc.numel(), hc.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(bioplaus, CPU, m) {
  m.impl("inverse_loss", inverse_loss_cpu);
  m.impl("inverse_loss_lc2d", inverse_loss_lc2d_cpu);
  m.impl("inverse_loss_noisy_input", inverse_loss_noisy_input_cpu);
}

}  // namespace bioplaus
