// Inverse loss on the CPU (contract in inverse_loss.h).
//
// pre = y V^T (Linear: at::mm, the BLAS torch was built with) or the transposed LC of y (the LC
// input-gradient kernel through the dispatcher); then one fused epilogue per sample row n:
//   x_hat[n, e] = act(pre[n, e] + c[e]),  residual[n, e] = x_hat[n, e] - h[n, e] - [preserve] eps[n * E + e],
//   row_sq[n] = sum_e residual[n, e]^2   (accumulated in double)
// with eps drawn from Philox in the loop; the loss sums row_sq in row order (so the result does not depend
// on the thread count) and divides by N.
#include "inverse_loss.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

namespace bioplaus {
namespace {

using Result = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// pre: [N, E] contiguous (no bias); h: [N, ...E]; bias: E values.
Result epilogue(const at::Tensor& pre, const at::Tensor& h, const at::Tensor& bias, const InverseLossArgs& a) {
  const at::Tensor hc = h.contiguous(), c = bias.contiguous();
  const auto opts = hc.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor x_hat = at::empty(hc.sizes(), opts), residual = at::empty(hc.sizes(), opts);
  at::Tensor loss = at::zeros({}, hc.options());
  const int64_t N = hc.size(0), E = N ? hc.numel() / N : 0;
  if (hc.numel() == 0) return {loss, x_hat, residual};
  std::vector<double> row_sq(N);
  AT_DISPATCH_FLOATING_TYPES(hc.scalar_type(), "inverse_loss_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* pp = pre.const_data_ptr<scalar_t>();
    const scalar_t* hp = hc.const_data_ptr<scalar_t>();
    const scalar_t* cp = c.const_data_ptr<scalar_t>();
    scalar_t* xp = x_hat.mutable_data_ptr<scalar_t>();
    scalar_t* rp = residual.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, N, std::max<int64_t>(1, 16384 / E), [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) {
        double sq = 0;
        for (int64_t e = 0; e < E; ++e) {
          const int64_t idx = n * E + e;
          const scalar_t xh = static_cast<scalar_t>(tp::activate<acc_t>(a.act, acc_t(pp[idx]) + acc_t(cp[e])));
          // The target is formed in scalar_t exactly as the caller's h + philox_fill(...) is.
          scalar_t target = hp[idx];
          if (a.preserve_noise) target = target + static_cast<scalar_t>(tp::noise(a.key, a.step, idx, a.sigma));
          const scalar_t r = xh - target;
          xp[idx] = xh;
          rp[idx] = r;
          sq += static_cast<double>(r) * static_cast<double>(r);
        }
        row_sq[n] = sq;
      }
    });
    double total = 0;
    for (int64_t n = 0; n < N; ++n) total += row_sq[n];
    loss.fill_(static_cast<scalar_t>(total / static_cast<double>(N)));
  });
  return {loss, x_hat, residual};
}

Result inverse_loss_cpu(const at::Tensor& y, const at::Tensor& h, const at::Tensor& weight, const at::Tensor& bias,
                        c10::string_view activation, double sigma, int64_t seed, int64_t stream, int64_t step,
                        bool preserve_noise) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const InverseLossArgs a =
      check_inverse_loss_inputs(y, h, weight, bias, activation, sigma, seed, stream, step, preserve_noise);
  return epilogue(at::mm(y, weight.t()).contiguous(), h, bias, a);
}

Result inverse_loss_lc2d_cpu(const at::Tensor& y, const at::Tensor& h, const at::Tensor& weight,
                             const at::Tensor& bias, c10::IntArrayRef stride, c10::IntArrayRef padding,
                             c10::IntArrayRef dilation, c10::string_view activation, double sigma, int64_t seed,
                             int64_t stream, int64_t step, bool preserve_noise) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const InverseLossArgs a = check_inverse_loss_lc2d_inputs(y, h, weight, bias, stride, padding, dilation, activation,
                                                           sigma, seed, stream, step, preserve_noise);
  if (h.size(0) == 0) return epilogue(h, h, bias.reshape({-1}), a);
  const at::Tensor pre = tp::lc2d_transposed(y, weight, {h.size(2), h.size(3)}, stride, padding, dilation);
  return epilogue(pre.contiguous(), h, bias.reshape({-1}), a);
}

}  // namespace

TORCH_LIBRARY_IMPL(bioplaus, CPU, m) {
  m.impl("inverse_loss", inverse_loss_cpu);
  m.impl("inverse_loss_lc2d", inverse_loss_lc2d_cpu);
}

}  // namespace bioplaus
