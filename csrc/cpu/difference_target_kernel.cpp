// Difference target on the CPU (contract in difference_target.h).
//
// One pass over V for both inputs of g: t_above and h_above are stacked along the batch, so the 2N rows
// share one GEMM (Linear: at::addmm with the bias, the BLAS torch was built with) or one transposed-LC pass
// (the LC input-gradient kernel through the dispatcher, then the bias). The activation runs in place on the
// stacked pre-activations (ATen's vectorised kernels), and the epilogue reads row n (g(t_above)) and row
// N + n (g(h_above)):
//   out[n, e] = h_below[n, e] + g[n, e] - g[N + n, e],  e over one sample's elements.
// Rows are split across threads; each element is written once, so results do not depend on the thread
// count.
#include "difference_target.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>

namespace bioplaus {
namespace {

// g: [2N, E] contiguous, the activated inverse of the stacked inputs; h_below: N samples of E elements.
at::Tensor epilogue(const at::Tensor& h_below, const at::Tensor& g) {
  const at::Tensor hb = h_below.contiguous();
  at::Tensor out = at::empty(hb.sizes(), hb.options().memory_format(at::MemoryFormat::Contiguous));
  const int64_t N = hb.size(0), E = N ? hb.numel() / N : 0;
  if (hb.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(hb.scalar_type(), "difference_target_cpu", [&] {
    const scalar_t* hp = hb.const_data_ptr<scalar_t>();
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, N, std::max<int64_t>(1, 32768 / E), [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) {
        const scalar_t* gt = gp + n * E;
        const scalar_t* gh = gp + (N + n) * E;
        const scalar_t* h = hp + n * E;
        scalar_t* o = op + n * E;
        for (int64_t e = 0; e < E; ++e) o[e] = h[e] + gt[e] - gh[e];
      }
    });
  });
  return out;
}

at::Tensor difference_target_cpu(const at::Tensor& h_below, const at::Tensor& t_above, const at::Tensor& h_above,
                                 const at::Tensor& weight, const at::Tensor& bias, c10::string_view activation) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const tp::Activation act = check_difference_target_inputs(h_below, t_above, h_above, weight, bias, activation);
  at::Tensor g = at::addmm(bias, at::cat({t_above, h_above}, 0), weight.t());  // [2N, D_in]
  tp::activate_(g, act);
  return epilogue(h_below, g);
}

at::Tensor difference_target_lc2d_cpu(const at::Tensor& h_below, const at::Tensor& t_above,
                                      const at::Tensor& h_above, const at::Tensor& weight, const at::Tensor& bias,
                                      c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                                      c10::string_view activation) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const tp::Activation act = check_difference_target_lc2d_inputs(h_below, t_above, h_above, weight, bias, stride,
                                                                 padding, dilation, activation);
  if (h_below.size(0) == 0) return at::empty(h_below.sizes(), h_below.options());
  at::Tensor g = tp::lc2d_transposed(at::cat({t_above, h_above}, 0), weight, {h_below.size(2), h_below.size(3)},
                                     stride, padding, dilation)
                     .contiguous();
  g.add_(bias);
  tp::activate_(g, act);
  return epilogue(h_below, g);
}

}  // namespace

TORCH_LIBRARY_IMPL(bioplaus, CPU, m) {
  m.impl("difference_target", difference_target_cpu);
  m.impl("difference_target_lc2d", difference_target_lc2d_cpu);
}

}  // namespace bioplaus
