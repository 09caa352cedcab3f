// Difference target of target propagation (Lee et al. 2015; Bartunov et al. 2018, docs/papers.md section 1):
//
//   t_below = h_below + g(t_above) - g(h_above),   g(y) = act(V y + c)
//
// with both applications of the inverse g computed in one pass over V and the difference fused into the
// epilogue. Two layer kinds:
//   difference_target        Linear inverse: h_below [N, D_in], t_above/h_above [N, D_out], weight V
//                            [D_in, D_out] (the shape of the forward weight's transpose), bias c [D_in];
//                            pre[n, i] = sum_o y[n, o] V[i, o] + c[i].
//   difference_target_lc2d   transposed locally connected inverse: h_below [N, C_in, H, W],
//                            t_above/h_above [N, C_out, H_out, W_out], weight V [H_out, W_out, C_out, C_in,
//                            kH, kW] (the forward weight's shape and sparsity), bias c [C_in, H, W];
//                            pre = lc2d_backward_input(y, V, (H, W), stride, padding, dilation) + c, i.e.
//                            pre[n, c, p, q] = c[c, p, q] + sum over the (i, j, o, r, s) with
//                            i*sH - pT + r*dH = p, j*sW - pL + s*dW = q of V[i, j, o, c, r, s] y[n, o, i, j].
// activation: "tanh" | "sigmoid" | "relu" | "identity" (the activation of the layer that produced h_below).
// Output: a new contiguous tensor of h_below's shape. Targets are constants: the ops have no gradient.
#pragma once

#include "common/tp.h"

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/string_view.h>

namespace bioplaus {

tp::Activation check_difference_target_inputs(const at::Tensor& h_below, const at::Tensor& t_above,
                                              const at::Tensor& h_above, const at::Tensor& weight,
                                              const at::Tensor& bias, c10::string_view activation);

tp::Activation check_difference_target_lc2d_inputs(const at::Tensor& h_below, const at::Tensor& t_above,
                                                   const at::Tensor& h_above, const at::Tensor& weight,
                                                   const at::Tensor& bias, c10::IntArrayRef stride,
                                                   c10::IntArrayRef padding, c10::IntArrayRef dilation,
                                                   c10::string_view activation);

}  // namespace bioplaus
