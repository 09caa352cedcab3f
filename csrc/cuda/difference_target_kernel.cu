// Difference target on CUDA (contract in difference_target.h).
//
// Linear: one hand-written GEMM pass over V for both inputs (cuda/tp_gemm.cuh, kInputs = 2: every V tile
// staged in shared memory multiplies the t_above rows and the h_above rows), with the epilogue
//   out[m, i] = h_below[m, i] + act(acc_t[m, i] + c[i]) - act(acc_h[m, i] + c[i])
// in registers, so g(t_above) and g(h_above) are never written to memory.
// LC: t_above and h_above stacked along the batch go through one transposed-LC pass (the LC
// input-gradient kernel via the dispatcher: one pass over V), then one elementwise kernel applies
//   out[n, e] = h_below[n, e] + act(pre[n, e] + c[e]) - act(pre[N + n, e] + c[e]),  e < E = C_in * H * W.
// Accumulation and activation in at::opmath_type (float for float16/bfloat16/float32, double for float64).
#include "difference_target.h"
#include "cuda/launch.cuh"
#include "cuda/tp_gemm.cuh"

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>

namespace bioplaus {
namespace {

template <typename scalar_t>
struct LinearEpilogue {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* h_below;
  const scalar_t* bias;
  scalar_t* out;
  int64_t cols;
  tp::Activation act;

  __device__ __forceinline__ void operator()(int64_t m, int64_t i, acc_t acc_t_above, acc_t acc_h_above) const {
    const acc_t c = static_cast<acc_t>(bias[i]);
    const int64_t o = m * cols + i;
    out[o] = static_cast<scalar_t>(static_cast<acc_t>(h_below[o]) + tp::activate<acc_t>(act, acc_t_above + c) -
                                   tp::activate<acc_t>(act, acc_h_above + c));
  }
};

template <typename scalar_t>
__global__ void lc_epilogue_kernel(const scalar_t* __restrict__ h_below, const scalar_t* __restrict__ pre,
                                   const scalar_t* __restrict__ bias, scalar_t* __restrict__ out, int64_t numel,
                                   int64_t E, tp::Activation act) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < numel;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const acc_t c = static_cast<acc_t>(bias[idx % E]);
    out[idx] = static_cast<scalar_t>(static_cast<acc_t>(h_below[idx]) +
                                     tp::activate<acc_t>(act, static_cast<acc_t>(pre[idx]) + c) -
                                     tp::activate<acc_t>(act, static_cast<acc_t>(pre[numel + idx]) + c));
  }
}

at::Tensor difference_target_cuda(const at::Tensor& h_below, const at::Tensor& t_above, const at::Tensor& h_above,
                                  const at::Tensor& weight, const at::Tensor& bias, c10::string_view activation) {
  const tp::Activation act = check_difference_target_inputs(h_below, t_above, h_above, weight, bias, activation);
  const DeviceGuard guard(weight.device());
  const at::Tensor hb = h_below.contiguous(), ta = t_above.contiguous(), ha = h_above.contiguous();
  const at::Tensor v = weight.contiguous(), c = bias.contiguous();
  at::Tensor out = at::empty(hb.sizes(), hb.options().memory_format(at::MemoryFormat::Contiguous));
  const int64_t M = hb.size(0), D_in = v.size(0), D_out = v.size(1);
  BIOPLAUS_CHECK(M <= int64_t{65535} * tp::kGemmTile, "difference_target: batch size ", M,
                 " exceeds the CUDA kernel's grid limit of ", int64_t{65535} * tp::kGemmTile, " rows");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, hb.scalar_type(), "difference_target_cuda", [&] {
    LinearEpilogue<scalar_t> ep{hb.const_data_ptr<scalar_t>(), c.const_data_ptr<scalar_t>(),
                                out.mutable_data_ptr<scalar_t>(), D_in, act};
    tp::launch_inverse_gemm<scalar_t, 2>(ta.const_data_ptr<scalar_t>(), ha.const_data_ptr<scalar_t>(),
                                         v.const_data_ptr<scalar_t>(), M, D_in, D_out, ep);
  });
  return out;
}

at::Tensor difference_target_lc2d_cuda(const at::Tensor& h_below, const at::Tensor& t_above,
                                       const at::Tensor& h_above, const at::Tensor& weight, const at::Tensor& bias,
                                       c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                                       c10::string_view activation) {
  const tp::Activation act = check_difference_target_lc2d_inputs(h_below, t_above, h_above, weight, bias, stride,
                                                                 padding, dilation, activation);
  const DeviceGuard guard(weight.device());
  const at::Tensor hb = h_below.contiguous(), c = bias.contiguous();
  at::Tensor out = at::empty(hb.sizes(), hb.options().memory_format(at::MemoryFormat::Contiguous));
  const int64_t numel = hb.numel();
  if (numel == 0) return out;
  const at::Tensor pre = tp::lc2d_transposed(at::cat({t_above, h_above}, 0), weight, {hb.size(2), hb.size(3)},
                                             stride, padding, dilation)
                             .contiguous();
  constexpr int kThreads = 256;
  const unsigned blocks = grid_stride_blocks(numel, kThreads, weight.get_device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, hb.scalar_type(), "difference_target_lc2d_cuda", [&] {
    launch_kernel(lc_epilogue_kernel<scalar_t>, blocks, kThreads, 0, hb.const_data_ptr<scalar_t>(),
                  pre.const_data_ptr<scalar_t>(), c.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
                  numel, c.numel(), act);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(bioplaus, BIOPLAUS_KERNEL_KEY, m) {
  m.impl("difference_target", difference_target_cuda);
  m.impl("difference_target_lc2d", difference_target_lc2d_cuda);
}

}  // namespace bioplaus
