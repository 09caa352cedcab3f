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

InverseLossArgs check_noise(const char* op, c10::string_view activation, double sigma, int64_t seed, int64_t stream,
                            int64_t step, bool preserve_noise) {
  const tp::Activation act = tp::parse_activation(op, activation);
  BIOPLAUS_CHECK(std::isfinite(sigma) && sigma >= 0, op, ": sigma must be a finite number >= 0, got ", sigma);
  BIOPLAUS_CHECK(seed >= 0, op, ": seed must be >= 0, got ", seed);
  BIOPLAUS_CHECK(stream >= 0, op, ": stream must be >= 0, got ", stream);
  BIOPLAUS_CHECK(step >= 0, op, ": step must be >= 0, got ", step);
  return InverseLossArgs{act, philox::make_key(static_cast<uint64_t>(seed), static_cast<uint64_t>(stream)),
                         static_cast<uint64_t>(step), static_cast<float>(sigma), preserve_noise};
}

// Autocast (CUDA): the op is a loss, so it runs in float32, as autocast runs torch's mse_loss: the sum of
// squares over a layer can pass float16's range, and x_hat and the residual feed the float32 gradients.
// float64 inputs stay float64. Under ExcludeDispatchKeyGuard the redispatch reaches Autograd, then the kernel.
at::Tensor to_float(const at::Tensor& t) { return at::autocast::cached_cast(at::kFloat, t, c10::DeviceType::CUDA); }

using Result = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

Result inverse_loss_autocast(const at::Tensor& y, const at::Tensor& h, const at::Tensor& weight, const at::Tensor& bias,
                             c10::string_view activation, double sigma, int64_t seed, int64_t stream, int64_t step,
                             bool preserve_noise) {
  c10::impl::ExcludeDispatchKeyGuard guard(c10::DispatchKey::AutocastCUDA);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow(BIOPLAUS_OP("inverse_loss"), "")
                       .typed<Result(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                     c10::string_view, double, int64_t, int64_t, int64_t, bool)>();
  return op.call(to_float(y), to_float(h), to_float(weight), to_float(bias), activation, sigma, seed, stream, step,
                 preserve_noise);
}

Result inverse_loss_lc2d_autocast(const at::Tensor& y, const at::Tensor& h, const at::Tensor& weight,
                                  const at::Tensor& bias, c10::IntArrayRef stride, c10::IntArrayRef padding,
                                  c10::IntArrayRef dilation, c10::string_view activation, double sigma, int64_t seed,
                                  int64_t stream, int64_t step, bool preserve_noise) {
  c10::impl::ExcludeDispatchKeyGuard guard(c10::DispatchKey::AutocastCUDA);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow(BIOPLAUS_OP("inverse_loss_lc2d"), "")
                       .typed<Result(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                     c10::IntArrayRef, c10::IntArrayRef, c10::IntArrayRef, c10::string_view, double,
                                     int64_t, int64_t, int64_t, bool)>();
  return op.call(to_float(y), to_float(h), to_float(weight), to_float(bias), stride, padding, dilation, activation,
                 sigma, seed, stream, step, preserve_noise);
}

}  // namespace

InverseLossArgs check_inverse_loss_inputs(const at::Tensor& y, const at::Tensor& h, const at::Tensor& weight,
                                          const at::Tensor& bias, c10::string_view activation, double sigma,
                                          int64_t seed, int64_t stream, int64_t step, bool preserve_noise) {
  constexpr const char* op = "inverse_loss";
  const InverseLossArgs args = check_noise(op, activation, sigma, seed, stream, step, preserve_noise);
  tp::check_like_weight(op, weight, {{"y", &y}, {"h", &h}, {"bias", &bias}});
  tp::check_linear_inverse_geometry(op, h, "h", y, "y", weight, bias);
  return args;
}

InverseLossArgs check_inverse_loss_lc2d_inputs(const at::Tensor& y, const at::Tensor& h, const at::Tensor& weight,
                                               const at::Tensor& bias, c10::IntArrayRef stride,
                                               c10::IntArrayRef padding, c10::IntArrayRef dilation,
                                               c10::string_view activation, double sigma, int64_t seed,
                                               int64_t stream, int64_t step, bool preserve_noise) {
  constexpr const char* op = "inverse_loss_lc2d";
  const InverseLossArgs args = check_noise(op, activation, sigma, seed, stream, step, preserve_noise);
  tp::check_like_weight(op, weight, {{"y", &y}, {"h", &h}, {"bias", &bias}});
  tp::check_lc2d_inverse_geometry(op, h, "h", y, "y", weight, bias, stride, padding, dilation);
  return args;
}

InverseLossArgs check_inverse_loss_noisy_input_inputs(const at::Tensor& h, double sigma, int64_t seed,
                                                     int64_t stream, int64_t step) {
  constexpr const char* op = "inverse_loss_noisy_input";
  const InverseLossArgs args = check_noise(op, "identity", sigma, seed, stream, step, true);
  check_float_dtype(op, "h", h);
  return args;
}

TORCH_LIBRARY_FRAGMENT(bioplaus, m) {
  m.def("inverse_loss(Tensor y, Tensor h, Tensor weight, Tensor bias, str activation, float sigma, int seed, "
        "int stream, int step, bool preserve_noise) -> (Tensor, Tensor, Tensor)");
  m.def("inverse_loss_lc2d(Tensor y, Tensor h, Tensor weight, Tensor bias, int[2] stride, int[4] padding, "
        "int[2] dilation, str activation, float sigma, int seed, int stream, int step, bool preserve_noise) "
        "-> (Tensor, Tensor, Tensor)");
  m.def("inverse_loss_noisy_input(Tensor h, float sigma, int seed, int stream, int step) -> Tensor");
}

TORCH_LIBRARY_IMPL(bioplaus, AutocastCUDA, m) {
  m.impl("inverse_loss", inverse_loss_autocast);
  m.impl("inverse_loss_lc2d", inverse_loss_lc2d_autocast);
}

}  // namespace bioplaus
