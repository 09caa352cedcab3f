// Difference target: operator schemas and the one input check per op (contract in difference_target.h).
// Kernels: cpu/difference_target_kernel.cpp, cuda/difference_target_kernel.cu; fake kernels and the
// (refusing) autograd in bioplaus_kernels/ops/difference_target.py.
#include "difference_target.h"

#include <torch/library.h>

namespace bioplaus {

tp::Activation check_difference_target_inputs(const at::Tensor& h_below, const at::Tensor& t_above,
                                              const at::Tensor& h_above, const at::Tensor& weight,
                                              const at::Tensor& bias, c10::string_view activation) {
  constexpr const char* op = "difference_target";
  const tp::Activation act = tp::parse_activation(op, activation);
  tp::check_like_weight(op, weight, {{"h_below", &h_below}, {"t_above", &t_above}, {"h_above", &h_above},
                                     {"bias", &bias}});
  tp::check_linear_inverse_geometry(op, h_below, "h_below", h_above, "h_above", weight, bias);
  tp::check_shape(op, "t_above", t_above, h_above.sizes().vec(), "h_above's shape");
  return act;
}

tp::Activation check_difference_target_lc2d_inputs(const at::Tensor& h_below, const at::Tensor& t_above,
                                                   const at::Tensor& h_above, const at::Tensor& weight,
                                                   const at::Tensor& bias, c10::IntArrayRef stride,
                                                   c10::IntArrayRef padding, c10::IntArrayRef dilation,
                                                   c10::string_view activation) {
  constexpr const char* op = "difference_target_lc2d";
  const tp::Activation act = tp::parse_activation(op, activation);
  tp::check_like_weight(op, weight, {{"h_below", &h_below}, {"t_above", &t_above}, {"h_above", &h_above},
                                     {"bias", &bias}});
  tp::check_lc2d_inverse_geometry(op, h_below, "h_below", h_above, "h_above", weight, bias, stride, padding,
                                  dilation);
  tp::check_shape(op, "t_above", t_above, h_above.sizes().vec(), "h_above's shape");
  return act;
}

TORCH_LIBRARY_FRAGMENT(bioplaus, m) {
  m.def("difference_target(Tensor h_below, Tensor t_above, Tensor h_above, Tensor weight, Tensor bias, "
        "str activation=\"tanh\") -> Tensor");
  m.def("difference_target_lc2d(Tensor h_below, Tensor t_above, Tensor h_above, Tensor weight, Tensor bias, "
        "int[2] stride, int[4] padding, int[2] dilation, str activation=\"tanh\") -> Tensor");
}

}  // namespace bioplaus
