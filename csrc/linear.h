// Input gradient of a fully connected layer through a feedback matrix: the operator contract.
//
//   grad_y [..., out]   any leading dims (M rows in all), any strides
//   weight [out, in]    any strides; only its shape/dtype/device in "random" mode (an expanded
//                       zero-stride tensor is fine there)
//   grad_x [..., in]    contiguous:  grad_x[m, i] = sum_o grad_y[m, o] * B[o, i]
// with B the feedback matrix of weight's shape given by the spec (common/feedback.h).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include "feedback_source.h"

namespace bioplaus {

struct LinearDims {
  int64_t M;    // rows of grad_y: the product of its leading dims
  int64_t out;  // out_features
  int64_t in;   // in_features
  FeedbackSpec feedback;
};

// Validates every argument of linear_backward_input; messages name the argument, the expected and the
// received value.
LinearDims check_linear_backward_input_inputs(const at::Tensor& grad_y, const at::Tensor& weight,
                                              c10::string_view feedback, int64_t seed, int64_t stream,
                                              int64_t step, c10::string_view distribution, double scale);

}  // namespace bioplaus
