// Inverse loss on the CPU (contract in inverse_loss.h).
//
// x_hat = act(y V^T + c) (Linear: at::addmm, the BLAS torch was built with; LC: the transposed LC through
// the LC input-gradient kernel, then the bias), the activation in place with ATen's vectorised kernels.
// Then, over the flat index i of h (numel = N * E):
//   pass 1 (noise-preserving only): residual = eps (normal_noise below);
//   pass 2, by sample row n: residual[i] = x_hat[i] - (h[i] + eps[i]) (or - h[i]),
//           row_sq[n] = sum of residual^2 over the row (accumulated in double);
// and loss = (sum of row_sq in row order) / N, independent of the thread count.
// inverse_loss_noisy_input: h + eps with the same normal_noise.
#include "inverse_loss.h"

#include "cpu/fill_feedback.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/ops/add.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/cos.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/log.h>
#include <ATen/ops/sin.h>
#include <ATen/ops/sqrt.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

namespace bioplaus {
namespace {

using Result = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// eps[0 .. numel) as float32: the Philox words of each block (vectorised, split across threads), then Box-Muller
// on whole tensors with ATen's vectorised log/sqrt/cos/sin (runtime-dispatched AVX2/AVX-512; a scalar libm
// loop costs about 5x more and dominated a training step). Same generator, key, counter and conversions as
// common/philox.h; the transcendentals may differ from libm's (and from philox_fill's) in the last ulp, as
// they already do between the CPU and CUDA. Both CPU users of the noise (the noisy input and the
// noise-preserving residual) call this one function, so they agree bit for bit.
at::Tensor normal_noise(int64_t numel, const InverseLossArgs& a, const at::TensorOptions& like) {
  const int64_t blocks = (numel + 3) / 4;
  const auto fopts = like.dtype(at::kFloat).memory_format(at::MemoryFormat::Contiguous);
  at::Tensor u1 = at::empty({blocks, 2}, fopts), u2 = at::empty({blocks, 2}, fopts);
  float* p1 = u1.mutable_data_ptr<float>();
  float* p2 = u2.mutable_data_ptr<float>();
  // The words come from the AVX-512/AVX2 Philox behind the feedback kernels (philox_words: the same words
  // as philox::block_words, about 5x faster).
  at::parallel_for(0, blocks, 4096, [&](int64_t b0, int64_t b1) {
    std::vector<uint32_t> x(static_cast<size_t>(4 * (b1 - b0)));
    philox_words(a.key, a.step, static_cast<uint64_t>(b0), b1 - b0, x.data());
    for (int64_t b = b0; b < b1; ++b) {
      const uint32_t* q = x.data() + 4 * (b - b0);
      for (int p = 0; p < 2; ++p) {  // Box-Muller pairs (w0, w1) and (w2, w3)
        p1[2 * b + p] = static_cast<float>((q[2 * p] >> 8) + 1u) * philox::kTwoPow24Inv;
        p2[2 * b + p] = static_cast<float>(q[2 * p + 1] >> 8) * philox::kTwoPow24Inv;
      }
    }
  });
  const at::Tensor r = at::sqrt(at::log(u1).mul_(-2.0f));
  const at::Tensor t = u2.mul_(6.28318530717958647692f);
  // element 4b + 2p + j: r * cos(t) for j = 0, r * sin(t) for j = 1, then times sigma (float multiplies).
  at::Tensor eps = at::stack({at::cos(t).mul_(r), at::sin(t).mul_(r)}, -1).view({-1}).narrow(0, 0, numel);
  return eps.mul_(a.sigma);
}

// x_hat: [N, E] contiguous, activated; h: N samples of E elements.
Result epilogue(const at::Tensor& x_hat, const at::Tensor& h, const InverseLossArgs& a) {
  const at::Tensor hc = h.contiguous();
  at::Tensor residual = at::empty(hc.sizes(), hc.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor loss = at::zeros({}, hc.options());
  const int64_t N = hc.size(0), E = N ? hc.numel() / N : 0;
  if (hc.numel() == 0) return {loss, x_hat.view(hc.sizes()), residual};
  std::vector<double> row_sq(N);
  AT_DISPATCH_FLOATING_TYPES(hc.scalar_type(), "inverse_loss_cpu", [&] {
    const scalar_t* xp = x_hat.const_data_ptr<scalar_t>();
    const scalar_t* hp = hc.const_data_ptr<scalar_t>();
    scalar_t* rp = residual.mutable_data_ptr<scalar_t>();
    if (a.preserve_noise) residual.copy_(normal_noise(hc.numel(), a, hc.options()).view(hc.sizes()));
    at::parallel_for(0, N, std::max<int64_t>(1, 32768 / E), [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) {
        const scalar_t* x = xp + n * E;
        const scalar_t* hrow = hp + n * E;
        scalar_t* r = rp + n * E;
        double sq = 0;
        for (int64_t e = 0; e < E; ++e) {
          // The target is formed in scalar_t exactly as the caller's h + philox_fill(...) is.
          const scalar_t target = a.preserve_noise ? static_cast<scalar_t>(hrow[e] + r[e]) : hrow[e];
          r[e] = x[e] - target;
          sq += static_cast<double>(r[e]) * static_cast<double>(r[e]);
        }
        row_sq[n] = sq;
      }
    });
    double total = 0;
    for (int64_t n = 0; n < N; ++n) total += row_sq[n];
    loss.fill_(static_cast<scalar_t>(total / static_cast<double>(N)));
  });
  return {loss, x_hat.view(hc.sizes()), residual};
}

Result inverse_loss_cpu(const at::Tensor& y, const at::Tensor& h, const at::Tensor& weight, const at::Tensor& bias,
                        c10::string_view activation, double sigma, int64_t seed, int64_t stream, int64_t step,
                        bool preserve_noise) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const InverseLossArgs a =
      check_inverse_loss_inputs(y, h, weight, bias, activation, sigma, seed, stream, step, preserve_noise);
  at::Tensor x_hat = at::addmm(bias, y, weight.t());
  tp::activate_(x_hat, a.act);
  return epilogue(x_hat, h, a);
}

Result inverse_loss_lc2d_cpu(const at::Tensor& y, const at::Tensor& h, const at::Tensor& weight,
                             const at::Tensor& bias, c10::IntArrayRef stride, c10::IntArrayRef padding,
                             c10::IntArrayRef dilation, c10::string_view activation, double sigma, int64_t seed,
                             int64_t stream, int64_t step, bool preserve_noise) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const InverseLossArgs a = check_inverse_loss_lc2d_inputs(y, h, weight, bias, stride, padding, dilation, activation,
                                                           sigma, seed, stream, step, preserve_noise);
  if (h.size(0) == 0) return epilogue(at::empty(h.sizes(), h.options()), h, a);
  at::Tensor x_hat =
      tp::lc2d_transposed(y, weight, {h.size(2), h.size(3)}, stride, padding, dilation).contiguous();
  x_hat.add_(bias);
  tp::activate_(x_hat, a.act);
  return epilogue(x_hat, h, a);
}

at::Tensor inverse_loss_noisy_input_cpu(const at::Tensor& h, double sigma, int64_t seed, int64_t stream, int64_t step) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const InverseLossArgs a = check_inverse_loss_noisy_input_inputs(h, sigma, seed, stream, step);
  // The noise rounded to h's dtype first, then added in it: exactly h + philox_fill(...)'s arithmetic.
  return at::add(h, normal_noise(h.numel(), a, h.options()).to(h.scalar_type()).view(h.sizes()));
}

}  // namespace

TORCH_LIBRARY_IMPL(bioplaus, CPU, m) {
  m.impl("inverse_loss", inverse_loss_cpu);
  m.impl("inverse_loss_lc2d", inverse_loss_lc2d_cpu);
  m.impl("inverse_loss_noisy_input", inverse_loss_noisy_input_cpu);
}

}  // namespace bioplaus
