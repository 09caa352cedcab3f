// Locally connected 2D layer (untied convolution): the operator contract.
//
// Layouts (NCHW activations, position-major weights):
//   x      [N, C_in, H, W]                       any strides
//   weight [H_out, W_out, C_out, C_in, kH, kW]   contiguous; position p = i * W_out + j owns the
//                                                 contiguous block weight[i, j] of C_out * K values,
//                                                 K = C_in * kH * kW, k = (c * kH + r) * kW + s
//   bias   [C_out, H_out, W_out]                 optional
//   y      [N, C_out, H_out, W_out]
//
//   y[n, o, i, j] = bias[o, i, j]
//                 + sum_{c,r,s} weight[i, j, o, c, r, s] * x[n, c, i*sH - pT + r*dH, j*sW - pL + s*dW]
// (x is zero outside [0, H) x [0, W): implicit padding, never materialised.)
//
// padding is (top, bottom, left, right): the Python layer resolves ints, pairs, "same" (TensorFlow:
// out = ceil(in / stride), the odd pad row/column at the bottom/right) and "valid" to these four.
#pragma once

#include "common/lc2d_geometry.h"
#include "feedback_source.h"

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Optional.h>
#include <c10/util/string_view.h>

#include <utility>

namespace bioplaus {

// Validate the forward inputs; error messages name the argument, the expected and the received value.
Lc2dGeometry check_lc2d_forward_inputs(
    const at::Tensor& x,
    const at::Tensor& weight,
    const std::optional<at::Tensor>& bias,
    c10::IntArrayRef stride,
    c10::IntArrayRef padding,
    c10::IntArrayRef dilation);

// grad_x[N, C_in, H, W] = transposed LC of grad_y through the feedback matrix B of weight's shape that
// the spec (feedback, seed, stream, step, distribution, scale) names (common/feedback.h): B = weight for
// backprop, a stored FA matrix or TP's inverse weight V; regenerated or sign-transformed otherwise.
std::pair<Lc2dGeometry, FeedbackSpec> check_lc2d_backward_input_inputs(
    const at::Tensor& grad_y,
    const at::Tensor& weight,
    c10::IntArrayRef input_size,
    c10::IntArrayRef stride,
    c10::IntArrayRef padding,
    c10::IntArrayRef dilation,
    c10::string_view feedback,
    int64_t seed,
    int64_t stream,
    int64_t step,
    c10::string_view distribution,
    double scale);

// (grad_weight, grad_bias) from grad_y and the forward input x.
Lc2dGeometry check_lc2d_backward_weight_inputs(
    const at::Tensor& grad_y,
    const at::Tensor& x,
    c10::IntArrayRef kernel_size,
    c10::IntArrayRef stride,
    c10::IntArrayRef padding,
    c10::IntArrayRef dilation);

}  // namespace bioplaus
