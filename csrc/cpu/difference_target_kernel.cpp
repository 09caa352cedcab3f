// Difference target on the CPU (contract in difference_target.h).
//
// One pass over V for both inputs of g: t_above and h_above are stacked along the batch, so the 2N rows
// share one GEMM (Linear: at::addmm, the BLAS torch was built with) or one transposed-LC pass (the LC
// input-gradient kernel through the dispatcher). The epilogue then reads row n (from t_above) and row
// N + n (from h_above) of the stacked pre-activations and writes
//   out[n, e] = h_below[n, e] + act(pre[n, e] + c[e]) - act(pre[N + n, e] + c[e]),  e over one sample.
// Rows are split across threads; each element is written once, so results do not depend on the thread
// count.
#include "difference_target.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <algorithm>

namespace bioplaus {
namespace {

// pre: [2N, E] contiguous without bias; bias: [E]; h_below: [N, E] contiguous.
at::Tensor epilogue(const at::Tensor& h_below, const at::Tensor& pre, const at::Tensor& bias, tp::Activation act) {
  const at::Tensor hb = h_below.contiguous(), c = bias.contiguous();
  at::Tensor out = at::empty(hb.sizes(), hb.options().memory_format(at::MemoryFormat::Contiguous));
  const int64_t N = hb.size(0), E = N ? hb.numel() / N : 0;
  if (hb.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(hb.scalar_type(), "difference_target_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* hp = hb.const_data_ptr<scalar_t>();
    const scalar_t* pp = pre.const_data_ptr<scalar_t>();
    const scalar_t* cp = c.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, N, std::max<int64_t>(1, 32768 / E), [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) {
        const scalar_t* pt = pp + n * E;
        const scalar_t* ph = pp + (N + n) * E;
        for (int64_t e = 0; e < E; ++e) {
          const acc_t gt = tp::activate<acc_t>(act, acc_t(pt[e]) + acc_t(cp[e]));
          const acc_t gh = tp::activate<acc_t>(act, acc_t(ph[e]) + acc_t(cp[e]));
          op[n * E + e] = static_cast<scalar_t>(acc_t(hp[n * E + e]) + gt - gh);
        }
      }
    });
  });
  return out;
}

at::Tensor difference_target_cpu(const at::Tensor& h_below, const at::Tensor& t_above, const at::Tensor& h_above,
                                 const at::Tensor& weight, const at::Tensor& bias, c10::string_view activation) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const tp::Activation act = check_difference_target_inputs(h_below, t_above, h_above, weight, bias, activation);
  const at::Tensor pre = at::mm(at::cat({t_above, h_above}, 0), weight.t());  // [2N, D_in]
  return epilogue(h_below, pre.contiguous(), bias, act);
}

at::Tensor difference_target_lc2d_cpu(const at::Tensor& h_below, const at::Tensor& t_above,
                                      const at::Tensor& h_above, const at::Tensor& weight, const at::Tensor& bias,
                                      c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                                      c10::string_view activation) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const tp::Activation act = check_difference_target_lc2d_inputs(h_below, t_above, h_above, weight, bias, stride,
                                                                 padding, dilation, activation);
  if (h_below.size(0) == 0) return at::empty(h_below.sizes(), h_below.options());
  const at::Tensor pre = tp::lc2d_transposed(at::cat({t_above, h_above}, 0), weight,
                                             {h_below.size(2), h_below.size(3)}, stride, padding, dilation);
  return epilogue(h_below, pre.contiguous(), bias.reshape({-1}), act);
}

}  // namespace

TORCH_LIBRARY_IMPL(bioplaus, CPU, m) {
  m.impl("difference_target", difference_target_cpu);
  m.impl("difference_target_lc2d", difference_target_lc2d_cpu);
}

}  // namespace bioplaus
