// feedback_source on CUDA: B[e] = feedback_element(spec, e, weight[e]) (common/feedback.h), one thread per
// element, grid-stride loop with 64-bit indices. The element functions are the host code compiled for the
// device, so "weight", "sign" and uniform "random"/"random_sign" equal the CPU's bit for bit (normal
// samples to a few ulp: libm and CUDA's log/sin/cos differ).
#include "feedback_source.h"

#include "cuda/launch.cuh"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>

namespace bioplaus {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t>
__global__ void feedback_source_kernel(const scalar_t* __restrict__ weight, scalar_t* __restrict__ out, int64_t numel,
                                       const FeedbackSpec f) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < numel; e += stride) {
    const scalar_t w = f.reads_weight() ? weight[e] : scalar_t(0);
    out[e] = feedback_element<scalar_t, acc_t>(f, static_cast<uint64_t>(e), w);
  }
}

at::Tensor feedback_source_cuda(const at::Tensor& weight, c10::string_view feedback, int64_t seed, int64_t stream,
                                int64_t step, c10::string_view distribution, double scale) {
  const FeedbackSpec f = check_feedback_source_inputs(weight, feedback, seed, stream, step, distribution, scale);
  const DeviceGuard guard(weight.device());
  // "random" never reads weight (it may be an expanded zero-stride tensor): no copy, a null pointer.
  const at::Tensor w = f.reads_weight() ? weight.contiguous() : at::Tensor();
  at::Tensor out = at::empty(weight.sizes(), weight.options().memory_format(at::MemoryFormat::Contiguous));
  const int64_t numel = out.numel();
  if (numel == 0) return out;
  const unsigned grid = grid_stride_blocks(numel, kThreads, weight.get_device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "feedback_source_cuda", [&] {
    launch_kernel(feedback_source_kernel<scalar_t>, grid, kThreads, 0,
                  f.reads_weight() ? w.const_data_ptr<scalar_t>() : nullptr, out.mutable_data_ptr<scalar_t>(), numel,
                  f);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(bioplaus, BIOPLAUS_KERNEL_KEY, m) {
  m.impl("feedback_source", feedback_source_cuda);
}

}  // namespace bioplaus
