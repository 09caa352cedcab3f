// bioplaus::lc2d's autograd, in C++ (as linear's: linear_autograd.cpp): y = lc2d_forward(x, weight, bias)
// whose backward sends the transposed LC of grad_y through B (lc2d_backward_input with the op's feedback spec,
// or with the given stored matrix in "weight" mode) to x, and the true local gradients (lc2d_backward_weight)
// to weight and bias.
//
// Index map: grad_x[N, C_in, H, W] = lc2d_backward_input(grad_y, B, (H, W), stride, padding, dilation, spec);
// (grad_weight[H_out, W_out, C_out, C_in, kH, kW], grad_bias[C_out, H_out, W_out]) =
// lc2d_backward_weight(grad_y, x, (kH, kW), stride, padding, dilation).
#include "lc2d.h"

#include "common/checks.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <vector>

namespace bioplaus {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor call_lc2d(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                     c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                     c10::string_view feedback, int64_t seed, int64_t stream, int64_t step,
                     c10::string_view distribution, double scale, const std::optional<at::Tensor>& matrix) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow(BIOPLAUS_OP("lc2d"), "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                         c10::IntArrayRef, c10::IntArrayRef, c10::IntArrayRef, c10::string_view,
                                         int64_t, int64_t, int64_t, c10::string_view, double,
                                         const std::optional<at::Tensor>&)>();
  return op.call(x, weight, bias, stride, padding, dilation, feedback, seed, stream, step, distribution, scale,
                 matrix);
}

at::Tensor call_backward_input(const at::Tensor& grad_y, const at::Tensor& weight, c10::IntArrayRef input_size,
                               c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                               c10::string_view feedback, int64_t seed, int64_t stream, int64_t step,
                               c10::string_view distribution, double scale) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow(BIOPLAUS_OP("lc2d_backward_input"), "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::IntArrayRef, c10::IntArrayRef,
                                         c10::IntArrayRef, c10::IntArrayRef, c10::string_view, int64_t, int64_t,
                                         int64_t, c10::string_view, double)>();
  return op.call(grad_y, weight, input_size, stride, padding, dilation, feedback, seed, stream, step, distribution,
                 scale);
}

std::tuple<at::Tensor, at::Tensor> call_backward_weight(const at::Tensor& grad_y, const at::Tensor& x,
                                                        c10::IntArrayRef kernel_size, c10::IntArrayRef stride,
                                                        c10::IntArrayRef padding, c10::IntArrayRef dilation) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow(BIOPLAUS_OP("lc2d_backward_weight"), "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                 c10::IntArrayRef, c10::IntArrayRef,
                                                                 c10::IntArrayRef, c10::IntArrayRef)>();
  return op.call(grad_y, x, kernel_size, stride, padding, dilation);
}

class Lc2dFeedback : public torch::autograd::Function<Lc2dFeedback> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, c10::IntArrayRef stride, c10::IntArrayRef padding,
                            c10::IntArrayRef dilation, c10::string_view feedback, int64_t seed, int64_t stream,
                            int64_t step, c10::string_view distribution, double scale,
                            const std::optional<at::Tensor>& matrix) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    const bool has_matrix = matrix.has_value() && matrix->defined();
    ctx->save_for_backward({x, weight, has_matrix ? *matrix : at::Tensor()});
    auto& d = ctx->saved_data;
    d["has_bias"] = bias.has_value() && bias->defined();
    d["stride"] = stride.vec();
    d["padding"] = padding.vec();
    d["dilation"] = dilation.vec();
    d["feedback"] = std::string(feedback);
    d["seed"] = seed;
    d["stream"] = stream;
    d["step"] = step;
    d["distribution"] = std::string(distribution);
    d["scale"] = scale;
    return call_lc2d(x, weight, bias, stride, padding, dilation, feedback, seed, stream, step, distribution, scale,
                     matrix);
  }

  // Outputs follow forward's arguments: x, weight, bias, the three geometry lists, the six spec values and
  // matrix (no gradient).
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor& grad_y = grads[0];
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    const at::Tensor& weight = saved[1];
    const at::Tensor& matrix = saved[2];
    const auto& d = ctx->saved_data;
    variable_list out(13);
    if (!grad_y.defined()) return out;
    const std::vector<int64_t> stride = d.at("stride").toIntVector(), padding = d.at("padding").toIntVector(),
                               dilation = d.at("dilation").toIntVector();
    // Without create_graph the engine runs this with grad mode off and nothing below records a graph: the
    // calls skip their autograd kernels (the kernel ops' is the not-implemented fallback).
    std::optional<at::AutoDispatchBelowADInplaceOrView> below_autograd;
    if (!at::GradMode::is_enabled()) below_autograd.emplace();
    if (ctx->needs_input_grad(0)) {
      const std::vector<int64_t> input_size{x.size(2), x.size(3)};
      out[0] = matrix.defined()
                   ? call_backward_input(grad_y, matrix, input_size, stride, padding, dilation, "weight", 0, 0, 0,
                                         "uniform", 1.0)
                   : call_backward_input(grad_y, weight, input_size, stride, padding, dilation,
                                         d.at("feedback").toStringRef(), d.at("seed").toInt(), d.at("stream").toInt(),
                                         d.at("step").toInt(), d.at("distribution").toStringRef(),
                                         d.at("scale").toDouble());
    }
    const bool want_w = ctx->needs_input_grad(1), want_b = d.at("has_bias").toBool() && ctx->needs_input_grad(2);
    if (want_w || want_b) {
      auto [gw, gb] = call_backward_weight(grad_y, x, {weight.size(4), weight.size(5)}, stride, padding, dilation);
      if (want_w) out[1] = gw;
      if (want_b) out[2] = gb;
    }
    return out;
  }
};

at::Tensor lc2d_autograd(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                         c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                         c10::string_view feedback, int64_t seed, int64_t stream, int64_t step,
                         c10::string_view distribution, double scale, const std::optional<at::Tensor>& matrix) {
  return Lc2dFeedback::apply(x, weight, bias, stride, padding, dilation, feedback, seed, stream, step, distribution,
                             scale, matrix);
}

}  // namespace

TORCH_LIBRARY_IMPL(bioplaus, Autograd, m) {
  m.impl("lc2d", lc2d_autograd);
}

}  // namespace bioplaus
