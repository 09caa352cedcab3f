// Locally connected 2D: operator schemas, the one input check per op, the layer op lc2d (forward on any
// backend; its autograd kernel: lc2d_autograd.cpp) and the CUDA autocast wrappers. Backend kernels live in
// cpu/lc2d_kernel.cpp and cuda/lc2d_kernel.cu; fake kernels in bioplaus_kernels/ops/lc2d.py.
#include "lc2d.h"

#include "common/checks.h"

#include <ATen/autocast_mode.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

#include <string>

namespace bioplaus {

Lc2dGeometry check_lc2d_forward_inputs(const at::Tensor& x, const at::Tensor& weight,
                                       const std::optional<at::Tensor>& bias, c10::IntArrayRef stride,
                                       c10::IntArrayRef padding, c10::IntArrayRef dilation) {
  constexpr const char* op = "lc2d_forward";
  check_dim(op, "x", x, 4, "[N, C_in, H, W]");
  check_lc2d_weight(op, "weight", weight);
  check_same(op, "x", x, "weight", weight);
  BIOPLAUS_CHECK(x.size(1) == weight.size(3), op, ": x has ", x.size(1), " channels but weight expects C_in=",
                 weight.size(3));
  const Lc2dGeometry g = resolve_lc2d_geometry(op, x.size(0), weight.size(3), weight.size(2), x.size(2), x.size(3),
                                               weight.size(4), weight.size(5), stride, padding, dilation);
  check_lc2d_grid(op, g, weight.size(0), weight.size(1), "weight");
  if (bias.has_value() && bias->defined()) {
    const at::Tensor& b = *bias;
    check_same(op, "bias", b, "weight", weight);
    const std::vector<int64_t> want{g.C_out, g.H_out, g.W_out};
    BIOPLAUS_CHECK(b.sizes() == c10::IntArrayRef(want), op, ": bias must have shape [C_out, H_out, W_out] = ",
                   shape_str(want), ", got ", shape_str(b.sizes()));
  }
  return g;
}

std::pair<Lc2dGeometry, FeedbackSpec> check_lc2d_backward_input_inputs(
    const at::Tensor& grad_y, const at::Tensor& weight, c10::IntArrayRef input_size, c10::IntArrayRef stride,
    c10::IntArrayRef padding, c10::IntArrayRef dilation, c10::string_view feedback, int64_t seed, int64_t stream,
    int64_t step, c10::string_view distribution, double scale) {
  constexpr const char* op = "lc2d_backward_input";
  const FeedbackSpec spec = check_feedback_spec(op, feedback, seed, stream, step, distribution, scale);
  check_int_list(op, "input_size", input_size, 2, 1);
  check_dim(op, "grad_y", grad_y, 4, "[N, C_out, H_out, W_out]");
  check_lc2d_weight(op, "weight", weight);
  check_same(op, "grad_y", grad_y, "weight", weight);
  const Lc2dGeometry g = resolve_lc2d_geometry(op, grad_y.size(0), weight.size(3), weight.size(2), input_size[0],
                                               input_size[1], weight.size(4), weight.size(5), stride, padding,
                                               dilation);
  check_lc2d_grid(op, g, weight.size(0), weight.size(1), "weight");
  BIOPLAUS_CHECK(grad_y.size(1) == g.C_out, op, ": grad_y has ", grad_y.size(1),
                 " channels but weight expects C_out=", g.C_out);
  check_lc2d_grid(op, g, grad_y.size(2), grad_y.size(3), "grad_y");
  return {g, spec};
}

Lc2dGeometry check_lc2d_backward_weight_inputs(const at::Tensor& grad_y, const at::Tensor& x,
                                               c10::IntArrayRef kernel_size, c10::IntArrayRef stride,
                                               c10::IntArrayRef padding, c10::IntArrayRef dilation) {
  constexpr const char* op = "lc2d_backward_weight";
  check_int_list(op, "kernel_size", kernel_size, 2, 1);
  check_dim(op, "grad_y", grad_y, 4, "[N, C_out, H_out, W_out]");
  check_dim(op, "x", x, 4, "[N, C_in, H, W]");
  check_float_dtype(op, "x", x);
  check_same(op, "grad_y", grad_y, "x", x);
  BIOPLAUS_CHECK(grad_y.size(0) == x.size(0), op, ": grad_y has batch size ", grad_y.size(0),
                 " but x has batch size ", x.size(0));
  BIOPLAUS_CHECK(x.size(1) >= 1 && grad_y.size(1) >= 1, op, ": channel counts must be positive, got C_in=",
                 x.size(1), " and C_out=", grad_y.size(1));
  const Lc2dGeometry g = resolve_lc2d_geometry(op, x.size(0), x.size(1), grad_y.size(1), x.size(2), x.size(3),
                                               kernel_size[0], kernel_size[1], stride, padding, dilation);
  check_lc2d_grid(op, g, grad_y.size(2), grad_y.size(3), "grad_y");
  return g;
}

namespace {

// Autocast (CUDA): run the op in the autocast dtype, like cuDNN convolutions do. Under
// ExcludeDispatchKeyGuard the redispatch goes to Autograd and then the CUDA kernel.
constexpr auto kAutocast = c10::DispatchKey::AutocastCUDA;

at::Tensor cast(const at::Tensor& t) {
  return at::autocast::cached_cast(at::autocast::get_autocast_dtype(at::kCUDA), t, c10::DeviceType::CUDA);
}

at::Tensor lc2d_forward_autocast(const at::Tensor& x, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias, c10::IntArrayRef stride,
                                 c10::IntArrayRef padding, c10::IntArrayRef dilation) {
  c10::impl::ExcludeDispatchKeyGuard guard(kAutocast);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow(BIOPLAUS_OP("lc2d_forward"), "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                         c10::IntArrayRef, c10::IntArrayRef, c10::IntArrayRef)>();
  std::optional<at::Tensor> b;
  if (bias.has_value() && bias->defined()) b = cast(*bias);
  return op.call(cast(x), cast(weight), b, stride, padding, dilation);
}

at::Tensor lc2d_backward_input_autocast(const at::Tensor& grad_y, const at::Tensor& weight,
                                        c10::IntArrayRef input_size, c10::IntArrayRef stride,
                                        c10::IntArrayRef padding, c10::IntArrayRef dilation,
                                        c10::string_view feedback, int64_t seed, int64_t stream, int64_t step,
                                        c10::string_view distribution, double scale) {
  c10::impl::ExcludeDispatchKeyGuard guard(kAutocast);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow(BIOPLAUS_OP("lc2d_backward_input"), "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::IntArrayRef,
                                         c10::IntArrayRef, c10::IntArrayRef, c10::IntArrayRef, c10::string_view,
                                         int64_t, int64_t, int64_t, c10::string_view, double)>();
  return op.call(cast(grad_y), cast(weight), input_size, stride, padding, dilation, feedback, seed, stream, step,
                 distribution, scale);
}

std::tuple<at::Tensor, at::Tensor> lc2d_backward_weight_autocast(
    const at::Tensor& grad_y, const at::Tensor& x, c10::IntArrayRef kernel_size, c10::IntArrayRef stride,
    c10::IntArrayRef padding, c10::IntArrayRef dilation) {
  c10::impl::ExcludeDispatchKeyGuard guard(kAutocast);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow(BIOPLAUS_OP("lc2d_backward_weight"), "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                 c10::IntArrayRef, c10::IntArrayRef,
                                                                 c10::IntArrayRef, c10::IntArrayRef)>();
  return op.call(cast(grad_y), cast(x), kernel_size, stride, padding, dilation);
}

using Lc2dLayerFn = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                               c10::IntArrayRef, c10::IntArrayRef, c10::IntArrayRef, c10::string_view, int64_t,
                               int64_t, int64_t, c10::string_view, double, const std::optional<at::Tensor>&);

// Under CUDA autocast, x, weight, bias and matrix in autocast's dtype.
at::Tensor lc2d_autocast(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                         c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                         c10::string_view feedback, int64_t seed, int64_t stream, int64_t step,
                         c10::string_view distribution, double scale, const std::optional<at::Tensor>& matrix) {
  c10::impl::ExcludeDispatchKeyGuard guard(kAutocast);
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow(BIOPLAUS_OP("lc2d"), "").typed<Lc2dLayerFn>();
  const auto cast_opt = [](const std::optional<at::Tensor>& t) -> std::optional<at::Tensor> {
    if (!t.has_value() || !t->defined()) return std::nullopt;
    return cast(*t);
  };
  return op.call(cast(x), cast(weight), cast_opt(bias), stride, padding, dilation, feedback, seed, stream, step,
                 distribution, scale, cast_opt(matrix));
}

// The layer: y = lc2d_forward(x, weight, bias) on any backend; its autograd kernel (lc2d_autograd.cpp) gives it
// the feedback backward. The spec (or the stored matrix) is validated here, at the forward, so a bad one fails
// before any backward.
at::Tensor lc2d_layer(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                      c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                      c10::string_view feedback, int64_t seed, int64_t stream, int64_t step,
                      c10::string_view distribution, double scale, const std::optional<at::Tensor>& matrix) {
  constexpr const char* op = "lc2d";
  const FeedbackSpec spec = check_feedback_spec(op, feedback, seed, stream, step, distribution, scale);
  check_feedback_matrix(op, spec, feedback, matrix, weight);
  static auto forward = c10::Dispatcher::singleton()
                            .findSchemaOrThrow(BIOPLAUS_OP("lc2d_forward"), "")
                            .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                              c10::IntArrayRef, c10::IntArrayRef, c10::IntArrayRef)>();
  return forward.call(x, weight, bias, stride, padding, dilation);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(bioplaus, m) {
  // The layer (ops.lc2d, nn.LocallyConnected2d): the forward of lc2d_forward, the input gradient through the
  // feedback spec's B (or the stored matrix B, with feedback "weight"), the true weight and bias gradients.
  m.def(
      "lc2d(Tensor x, Tensor weight, Tensor? bias, int[2] stride, int[4] padding, int[2] dilation, "
      "str feedback=\"weight\", int seed=0, int stream=0, int step=0, str distribution=\"uniform\", "
      "float scale=1.0, Tensor? matrix=None) -> Tensor");
  m.def(
      "lc2d_forward(Tensor x, Tensor weight, Tensor? bias, int[2] stride, int[4] padding, "
      "int[2] dilation) -> Tensor");
  m.def(
      "lc2d_backward_input(Tensor grad_y, Tensor weight, int[2] input_size, int[2] stride, "
      "int[4] padding, int[2] dilation, str feedback=\"weight\", int seed=0, int stream=0, int step=0, "
      "str distribution=\"uniform\", float scale=1.0) -> Tensor");
  m.def(
      "lc2d_backward_weight(Tensor grad_y, Tensor x, int[2] kernel_size, int[2] stride, "
      "int[4] padding, int[2] dilation) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(bioplaus, CompositeExplicitAutograd, m) {
  m.impl("lc2d", lc2d_layer);
}

// The kernel ops are the layer's forward and backward formulas and have no derivative of their own: a
// gradient through them (a double backward of lc2d) is the error "derivative for bioplaus::lc2d_... is not
// implemented".
TORCH_LIBRARY_IMPL(bioplaus, Autograd, m) {
  m.impl("lc2d_forward", torch::autograd::autogradNotImplementedFallback());
  m.impl("lc2d_backward_input", torch::autograd::autogradNotImplementedFallback());
  m.impl("lc2d_backward_weight", torch::autograd::autogradNotImplementedFallback());
}

TORCH_LIBRARY_IMPL(bioplaus, AutocastCUDA, m) {
  m.impl("lc2d", lc2d_autocast);
  m.impl("lc2d_forward", lc2d_forward_autocast);
  m.impl("lc2d_backward_input", lc2d_backward_input_autocast);
  m.impl("lc2d_backward_weight", lc2d_backward_weight_autocast);
}

}  // namespace bioplaus
