// bioplaus::linear's autograd, in C++: y = F.linear(x, weight, bias) whose backward sends
// grad_y * B (linear_backward_input with the op's feedback spec, or the given stored matrix B) to x and the
// true local gradients to weight and bias. In C++ because a Python autograd.Function adds argument handling
// and a Python backward to every step, which is a large share of a small layer's step
// (docs/performance.md section 7).
//
// Index map (x [..., in] seen as M rows): grad_x = linear_backward_input(grad_y, weight, spec) or
// grad_y[..., out] * matrix[out, in] (torch's GEMM, as backprop's with W),
// grad_weight[out, in] = grad_y[M, out]^T * x[M, in], grad_bias[out] = sum over M of grad_y.
#include "common/checks.h"

#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <optional>
#include <string>

namespace bioplaus {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor call_linear(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                       c10::string_view feedback, int64_t seed, int64_t stream, int64_t step,
                       c10::string_view distribution, double scale, const std::optional<at::Tensor>& matrix) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow(BIOPLAUS_OP("linear"), "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                         c10::string_view, int64_t, int64_t, int64_t, c10::string_view, double,
                                         const std::optional<at::Tensor>&)>();
  return op.call(x, weight, bias, feedback, seed, stream, step, distribution, scale, matrix);
}

at::Tensor call_backward_input(const at::Tensor& grad_y, const at::Tensor& weight, c10::string_view feedback,
                               int64_t seed, int64_t stream, int64_t step, c10::string_view distribution,
                               double scale) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow(BIOPLAUS_OP("linear_backward_input"), "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::string_view, int64_t, int64_t,
                                         int64_t, c10::string_view, double)>();
  return op.call(grad_y, weight, feedback, seed, stream, step, distribution, scale);
}

class LinearFeedback : public torch::autograd::Function<LinearFeedback> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, c10::string_view feedback, int64_t seed,
                            int64_t stream, int64_t step, c10::string_view distribution, double scale,
                            const std::optional<at::Tensor>& matrix) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    const bool has_matrix = matrix.has_value() && matrix->defined();
    ctx->save_for_backward({x, weight, has_matrix ? *matrix : at::Tensor()});
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    ctx->saved_data["feedback"] = std::string(feedback);
    ctx->saved_data["seed"] = seed;
    ctx->saved_data["stream"] = stream;
    ctx->saved_data["step"] = step;
    ctx->saved_data["distribution"] = std::string(distribution);
    ctx->saved_data["scale"] = scale;
    return call_linear(x, weight, bias, feedback, seed, stream, step, distribution, scale, matrix);
  }

  // Outputs follow forward's arguments: x, weight, bias, the six spec values and matrix (no gradient).
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor& grad_y = grads[0];
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    const at::Tensor& weight = saved[1];
    const at::Tensor& matrix = saved[2];
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    variable_list out(10);
    if (!grad_y.defined()) return out;
    // Without create_graph the engine runs this with grad mode off and nothing below records a graph: the
    // calls skip their autograd kernels (linear_backward_input's is the boxed not-implemented fallback).
    std::optional<at::AutoDispatchBelowADInplaceOrView> below_autograd;
    if (!at::GradMode::is_enabled()) below_autograd.emplace();
    // The edges are the tensor arguments present: x, weight, then bias if given.
    if (ctx->needs_input_grad(0)) {
      const auto& d = ctx->saved_data;
      out[0] = matrix.defined()
                   ? at::matmul(grad_y, matrix)
                   : call_backward_input(grad_y, weight, d.at("feedback").toStringRef(), d.at("seed").toInt(),
                                         d.at("stream").toInt(), d.at("step").toInt(),
                                         d.at("distribution").toStringRef(), d.at("scale").toDouble());
    }
    const bool want_w = ctx->needs_input_grad(1), want_b = has_bias && ctx->needs_input_grad(2);
    if (want_w || want_b) {
      const at::Tensor g2 = grad_y.reshape({-1, grad_y.size(-1)});
      if (want_w) out[1] = at::mm(g2.t(), x.reshape({-1, x.size(-1)}));
      if (want_b) out[2] = at::sum(g2, 0);
    }
    return out;
  }
};

at::Tensor linear_autograd(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           c10::string_view feedback, int64_t seed, int64_t stream, int64_t step,
                           c10::string_view distribution, double scale, const std::optional<at::Tensor>& matrix) {
  return LinearFeedback::apply(x, weight, bias, feedback, seed, stream, step, distribution, scale, matrix);
}

}  // namespace

TORCH_LIBRARY_IMPL(bioplaus, Autograd, m) {
  m.impl("linear", linear_autograd);
}

}  // namespace bioplaus
