// Fully connected layer with a feedback matrix: the schemas of linear (forward, any backend; its autograd
// kernel: linear_autograd.cpp) and linear_backward_input (kernels: cpu/linear_kernel.cpp,
// cuda/linear_kernel.cu), the one input check, and the CUDA autocast wrappers. Fake kernels:
// bioplaus_kernels/ops/linear.py.
#include "linear.h"

#include "common/checks.h"

#include <ATen/autocast_mode.h>
#include <ATen/ops/linear.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

namespace bioplaus {

LinearDims check_linear_backward_input_inputs(const at::Tensor& grad_y, const at::Tensor& weight,
                                              c10::string_view feedback, int64_t seed, int64_t stream,
                                              int64_t step, c10::string_view distribution, double scale) {
  constexpr const char* op = "linear_backward_input";
  LinearDims d{};
  d.feedback = check_feedback_spec(op, feedback, seed, stream, step, distribution, scale);
  BIOPLAUS_CHECK(weight.dim() == 2, op, ": weight must be 2-D [out_features, in_features], got a ", weight.dim(),
                 "-D tensor of shape ", shape_str(weight.sizes()));
  BIOPLAUS_CHECK(grad_y.dim() >= 1, op,
                 ": grad_y must have at least 1 dimension [..., out_features], got a 0-D tensor");
  check_float_dtype(op, "weight", weight);
  check_same(op, "grad_y", grad_y, "weight", weight);
  d.out = weight.size(0);
  d.in = weight.size(1);
  BIOPLAUS_CHECK(grad_y.size(-1) == d.out, op, ": grad_y has ", grad_y.size(-1),
                 " features in its last dimension but weight expects out_features=", d.out);
  d.M = 1;
  for (int64_t k = 0; k + 1 < grad_y.dim(); ++k) d.M *= grad_y.size(k);
  return d;
}

namespace {

at::Tensor linear_backward_input_autocast(const at::Tensor& grad_y, const at::Tensor& weight,
                                          c10::string_view feedback, int64_t seed, int64_t stream, int64_t step,
                                          c10::string_view distribution, double scale) {
  c10::impl::ExcludeDispatchKeyGuard guard(c10::DispatchKey::AutocastCUDA);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow(BIOPLAUS_OP("linear_backward_input"), "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::string_view, int64_t, int64_t,
                                         int64_t, c10::string_view, double)>();
  const auto dt = at::autocast::get_autocast_dtype(at::kCUDA);
  return op.call(at::autocast::cached_cast(dt, grad_y, c10::DeviceType::CUDA),
                 at::autocast::cached_cast(dt, weight, c10::DeviceType::CUDA), feedback, seed, stream, step,
                 distribution, scale);
}

// Under CUDA autocast, x, weight, bias and matrix in autocast's dtype, as autocast casts F.linear's.
at::Tensor linear_autocast(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           c10::string_view feedback, int64_t seed, int64_t stream, int64_t step,
                           c10::string_view distribution, double scale, const std::optional<at::Tensor>& matrix) {
  c10::impl::ExcludeDispatchKeyGuard guard(c10::DispatchKey::AutocastCUDA);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow(BIOPLAUS_OP("linear"), "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                         c10::string_view, int64_t, int64_t, int64_t, c10::string_view, double,
                                         const std::optional<at::Tensor>&)>();
  const auto dt = at::autocast::get_autocast_dtype(at::kCUDA);
  const auto cast = [&](const std::optional<at::Tensor>& t) -> std::optional<at::Tensor> {
    if (!t.has_value() || !t->defined()) return std::nullopt;
    return at::autocast::cached_cast(dt, *t, c10::DeviceType::CUDA);
  };
  return op.call(*cast(x), *cast(weight), cast(bias), feedback, seed, stream, step, distribution, scale,
                 cast(matrix));
}

// y = F.linear(x, weight, bias) on any backend: the autograd kernel (linear_autograd.cpp) gives it the
// feedback backward; the spec (or the stored matrix) is validated here, at the forward, so a bad one fails
// before any backward.
at::Tensor linear_forward(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                          c10::string_view feedback, int64_t seed, int64_t stream, int64_t step,
                          c10::string_view distribution, double scale, const std::optional<at::Tensor>& matrix) {
  constexpr const char* op = "linear";
  const FeedbackSpec spec = check_feedback_spec(op, feedback, seed, stream, step, distribution, scale);
  check_feedback_matrix(op, spec, feedback, matrix, weight);
  return at::linear(x, weight, bias);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(bioplaus, m) {
  m.def(
      "linear_backward_input(Tensor grad_y, Tensor weight, str feedback=\"weight\", int seed=0, int stream=0, "
      "int step=0, str distribution=\"uniform\", float scale=1.0) -> Tensor");
  // matrix: a stored feedback matrix B (weight's shape; feedback "weight"): grad_x = grad_y @ matrix.
  m.def(
      "linear(Tensor x, Tensor weight, Tensor? bias=None, str feedback=\"weight\", int seed=0, int stream=0, "
      "int step=0, str distribution=\"uniform\", float scale=1.0, Tensor? matrix=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(bioplaus, CompositeExplicitAutograd, m) {
  m.impl("linear", linear_forward);
}

// The op is a backward formula; it has no derivative of its own. This C++ kernel makes a double backward
// through it an error ("derivative for bioplaus::linear_backward_input is not implemented") at a fraction
// of the cost of a Python autograd registration, which every call (grad mode on or off) would pass
// through (docs/performance.md section 7).
TORCH_LIBRARY_IMPL(bioplaus, Autograd, m) {
  m.impl("linear_backward_input", torch::autograd::autogradNotImplementedFallback());
}

TORCH_LIBRARY_IMPL(bioplaus, AutocastCUDA, m) {
  m.impl("linear_backward_input", linear_backward_input_autocast);
  m.impl("linear", linear_autocast);
}

}  // namespace bioplaus
