// Inverse loss: operator schemas, the one input check per op and the CUDA autocast wrappers (contract in
// inverse_loss.h). Kernels: cpu/inverse_loss_kernel.cpp, cuda/inverse_loss_kernel.cu; fake kernels and
// autograd in bioplaus_kernels/ops/inverse_loss.py.
#include "inverse_loss.h"

#include <ATen/autocast_mode.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>

namespace bioplaus {
namespace {

// Autocast (CUDA): the op is a loss, so it runs in float32, as autocast runs torch's mse_loss: the sum of
// squares over a layer can pass float16's range, and x_hat and the residual feed the float32 gradients.
// float64 inputs stay float64. Under ExcludeDispatchKeyGuard the redispatch reaches Autograd, then the kernel.
at::Tensor to_float(const at::Tensor& t) { return at::autocast::cached_cast(at::kFloat, t, c10::DeviceType::CUDA); }

using Result = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

Result inverse_loss_autocast(const at::Tensor& y, const at::Tensor& target, const at::Tensor& weight,
                             const at::Tensor& bias, c10::string_view activation) {
  c10::impl::ExcludeDispatchKeyGuard guard(c10::DispatchKey::AutocastCUDA);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow(BIOPLAUS_OP("inverse_loss"), "")
                       .typed<Result(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                     c10::string_view)>();
  return op.call(to_float(y), to_float(target), to_float(weight), to_float(bias), activation);
}

Result inverse_loss_lc2d_autocast(const at::Tensor& y, const at::Tensor& target, const at::Tensor& weight,
                                  const at::Tensor& bias, c10::IntArrayRef stride, c10::IntArrayRef padding,
                                  c10::IntArrayRef dilation, c10::string_view activation) {
  c10::impl::ExcludeDispatchKeyGuard guard(c10::DispatchKey::AutocastCUDA);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow(BIOPLAUS_OP("inverse_loss_lc2d"), "")
                       .typed<Result(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                     c10::IntArrayRef, c10::IntArrayRef, c10::IntArrayRef, c10::string_view)>();
  return op.call(to_float(y), to_float(target), to_float(weight), to_float(bias), stride, padding, dilation,
                 activation);
}

}  // namespace

tp::Activation check_inverse_loss_inputs(const at::Tensor& y, const at::Tensor& target, const at::Tensor& weight,
                                         const at::Tensor& bias, c10::string_view activation) {
  constexpr const char* op = "inverse_loss";
  const tp::Activation act = tp::parse_activation(op, activation);
  tp::check_like_weight(op, weight, {{"y", &y}, {"target", &target}, {"bias", &bias}});
  tp::check_linear_inverse_geometry(op, target, "target", y, "y", weight, bias);
  return act;
}

tp::Activation check_inverse_loss_lc2d_inputs(const at::Tensor& y, const at::Tensor& target,
                                              const at::Tensor& weight, const at::Tensor& bias,
                                              c10::IntArrayRef stride, c10::IntArrayRef padding,
                                              c10::IntArrayRef dilation, c10::string_view activation) {
  constexpr const char* op = "inverse_loss_lc2d";
  const tp::Activation act = tp::parse_activation(op, activation);
  tp::check_like_weight(op, weight, {{"y", &y}, {"target", &target}, {"bias", &bias}});
  tp::check_lc2d_inverse_geometry(op, target, "target", y, "y", weight, bias, stride, padding, dilation);
  return act;
}

NoiseArgs check_inverse_loss_noisy_input_inputs(const at::Tensor& h, double sigma, int64_t seed, int64_t stream,
                                                int64_t step) {
  constexpr const char* op = "inverse_loss_noisy_input";
  BIOPLAUS_CHECK(std::isfinite(sigma) && sigma >= 0, op, ": sigma must be a finite number >= 0, got ", sigma);
  check_seed_stream_step(op, seed, stream, step);
  check_float_dtype(op, "h", h);
  return NoiseArgs{philox::make_key(static_cast<uint64_t>(seed), static_cast<uint64_t>(stream)),
                   static_cast<uint64_t>(step), static_cast<float>(sigma)};
}

TORCH_LIBRARY_FRAGMENT(bioplaus, m) {
  m.def("inverse_loss(Tensor y, Tensor target, Tensor weight, Tensor bias, str activation=\"tanh\") "
        "-> (Tensor, Tensor, Tensor)");
  m.def("inverse_loss_lc2d(Tensor y, Tensor target, Tensor weight, Tensor bias, int[2] stride, int[4] padding, "
        "int[2] dilation, str activation=\"tanh\") -> (Tensor, Tensor, Tensor)");
  m.def("inverse_loss_noisy_input(Tensor h, float sigma, int seed, int stream, int step) -> Tensor");
}

TORCH_LIBRARY_IMPL(bioplaus, AutocastCUDA, m) {
  m.impl("inverse_loss", inverse_loss_autocast);
  m.impl("inverse_loss_lc2d", inverse_loss_lc2d_autocast);
}

}  // namespace bioplaus
