// Shared pieces of the target-propagation ops (difference_target, inverse_loss): the activation of an
// inverse layer g(y) = act(pre) and its derivative, and (host only) the input checks and the transposed
// locally connected layer through the dispatcher.
//
// Activations are evaluated in the accumulation type T (float for float32/float16/bfloat16, double for
// float64). The derivative is written in terms of the output a = act(pre), which is what the backward
// keeps: tanh 1 - a^2, sigmoid a (1 - a), relu [a > 0], identity 1.
#pragma once

#include "common/philox.h"

#include <math.h>
#include <stdint.h>

namespace bioplaus {
namespace tp {

enum class Activation : int { kIdentity = 0, kTanh = 1, kSigmoid = 2, kRelu = 3 };

template <typename T>
BIOPLAUS_HD T activate(Activation a, T pre) {
  switch (a) {
    case Activation::kTanh:
      return tanh(pre);
    case Activation::kSigmoid:
      return T(1) / (T(1) + exp(-pre));
    case Activation::kRelu:
      return pre > T(0) ? pre : T(0);
    default:
      return pre;
  }
}

}  // namespace tp
}  // namespace bioplaus

// Host-only glue shared by the op files and the CPU/CUDA kernels (inline: csrc/common/ holds headers only).
// Not guarded by __CUDA_ARCH__: nvcc's device pass still parses the host launchers that call it.
#include "common/checks.h"
#include "common/lc2d_geometry.h"

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

namespace bioplaus {
namespace tp {

// "identity" | "tanh" | "sigmoid" | "relu"; any other name is an error naming the op and the value.
inline Activation parse_activation(const char* op, c10::string_view name) {
  if (name == "tanh") return Activation::kTanh;
  if (name == "identity") return Activation::kIdentity;
  if (name == "sigmoid") return Activation::kSigmoid;
  if (name == "relu") return Activation::kRelu;
  BIOPLAUS_CHECK(false, op, ": activation must be 'tanh', 'sigmoid', 'relu' or 'identity', got '", std::string(name),
                 "'");
}

// Every tensor argument of a TP op on weight's device with weight's dtype.
inline void check_like_weight(const char* op, const at::Tensor& weight,
                              std::initializer_list<std::pair<const char*, const at::Tensor*>> tensors) {
  check_float_dtype(op, "weight", weight);
  for (const auto& nt : tensors) check_same(op, nt.first, *nt.second, "weight", weight);
}

inline void check_shape(const char* op, const char* name, const at::Tensor& t, const std::vector<int64_t>& want,
                        const char* layout) {
  BIOPLAUS_CHECK(t.sizes() == c10::IntArrayRef(want), op, ": ", name, " must have shape ", layout, " = ",
                 shape_str(want), ", got ", shape_str(t.sizes()));
}

// Linear inverse g(y) = act(y V^T + c): weight V [D_in, D_out], `above` [N, D_out], `below` [N, D_in],
// bias [D_in].
inline void check_linear_inverse_geometry(const char* op, const at::Tensor& below, const char* below_name,
                                          const at::Tensor& above, const char* above_name,
                                          const at::Tensor& weight, const at::Tensor& bias) {
  BIOPLAUS_CHECK(weight.dim() == 2, op, ": weight must be 2-D [D_in, D_out] (the shape of the forward weight's "
                 "transpose), got shape ", shape_str(weight.sizes()));
  BIOPLAUS_CHECK(above.dim() == 2, op, ": ", above_name, " must be 2-D [N, D_out], got shape ",
                 shape_str(above.sizes()));
  const int64_t N = above.size(0), D_in = weight.size(0), D_out = weight.size(1);
  check_shape(op, above_name, above, {N, D_out}, "[N, D_out]");
  check_shape(op, below_name, below, {N, D_in}, "[N, D_in]");
  check_shape(op, "bias", bias, {D_in}, "[D_in]");
}

// LC inverse (transposed LC layer with bias over the input grid): weight [H_out, W_out, C_out, C_in, kH,
// kW], `above` [N, C_out, H_out, W_out], `below` [N, C_in, H, W], bias [C_in, H, W]; stride, padding and
// dilation are the forward layer's and must map H x W onto H_out x W_out (the lc2d ops' geometry checks).
inline void check_lc2d_inverse_geometry(const char* op, const at::Tensor& below, const char* below_name,
                                        const at::Tensor& above, const char* above_name, const at::Tensor& weight,
                                        const at::Tensor& bias, c10::IntArrayRef stride, c10::IntArrayRef padding,
                                        c10::IntArrayRef dilation) {
  check_lc2d_weight(op, "weight", weight);
  check_dim(op, below_name, below, 4, "[N, C_in, H, W]");
  const Lc2dGeometry g = resolve_lc2d_geometry(op, below.size(0), weight.size(3), weight.size(2), below.size(2),
                                               below.size(3), weight.size(4), weight.size(5), stride, padding,
                                               dilation);
  check_lc2d_grid(op, g, weight.size(0), weight.size(1), "weight");
  check_shape(op, below_name, below, {g.N, g.C_in, g.H, g.W}, "[N, C_in, H, W]");
  check_shape(op, above_name, above, {g.N, g.C_out, g.H_out, g.W_out}, "[N, C_out, H_out, W_out]");
  check_shape(op, "bias", bias, {g.C_in, g.H, g.W}, "[C_in, H, W]");
}

// The transposed LC layer x[N, C_in, H, W] = LC^T(y; weight) (no bias): lc2d_backward_input with `weight`
// in place of W, through the dispatcher. The call is boxed and fills trailing defaulted arguments from the
// op's schema, so it stays valid when arguments (a feedback spec) are appended to that schema.
inline at::Tensor lc2d_transposed(const at::Tensor& y, const at::Tensor& weight, c10::IntArrayRef input_size,
                                  c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation) {
  static const c10::OperatorHandle op =
      c10::Dispatcher::singleton().findSchemaOrThrow(BIOPLAUS_OP("lc2d_backward_input"), "");
  torch::jit::Stack stack;
  stack.reserve(op.schema().arguments().size());
  stack.emplace_back(y);
  stack.emplace_back(weight);
  stack.emplace_back(input_size.vec());
  stack.emplace_back(stride.vec());
  stack.emplace_back(padding.vec());
  stack.emplace_back(dilation.vec());
  const auto& args = op.schema().arguments();
  for (size_t i = stack.size(); i < args.size(); ++i) {
    TORCH_INTERNAL_ASSERT(args[i].default_value().has_value(), "lc2d_backward_input: argument ", args[i].name(),
                          " has no default");
    stack.push_back(*args[i].default_value());
  }
  op.callBoxed(&stack);
  return stack.back().toTensor();
}

}  // namespace tp
}  // namespace bioplaus

// CPU only: the activation applied in place with ATen's vectorised kernels (runtime-dispatched AVX2/AVX-512;
// this extension is compiled without -mavx flags, so a scalar loop here would be several times slower).
#if !defined(__CUDACC__)
#include <ATen/ops/relu.h>
#include <ATen/ops/sigmoid.h>
#include <ATen/ops/tanh.h>

namespace bioplaus {
namespace tp {

inline void activate_(at::Tensor& t, Activation a) {
  switch (a) {
    case Activation::kTanh:
      at::tanh_(t);
      break;
    case Activation::kSigmoid:
      at::sigmoid_(t);
      break;
    case Activation::kRelu:
      at::relu_(t);
      break;
    default:
      break;
  }
}

// g(y) = act(LC^T(y; weight) + bias) of an LC inverse, [N, C_in, H, W] contiguous (H x W = input_hw).
inline at::Tensor lc2d_inverse(const at::Tensor& y, const at::Tensor& weight, const at::Tensor& bias,
                               c10::IntArrayRef input_hw, c10::IntArrayRef stride, c10::IntArrayRef padding,
                               c10::IntArrayRef dilation, Activation a) {
  at::Tensor x = lc2d_transposed(y, weight, input_hw, stride, padding, dilation).contiguous();
  x.add_(bias);
  activate_(x, a);
  return x;
}

}  // namespace tp
}  // namespace bioplaus
#endif
