// The feedback matrix B of a spec, materialised: the operator contract of feedback_source.
//
//   weight [any shape]   float32/float64 (CPU: float16/bfloat16 too, computed in float32 and rounded,
//                        which gives the same values); only its shape/dtype/device in "random" mode
//   returns B            weight's shape, dtype and device, contiguous: B[e] per common/feedback.h
// Used where a library routine needs B as a tensor (Conv2d's backward, feedback_weight(), metrics); the
// input-gradient ops never build it. Also declares the spec check that every input-gradient op shares.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include "common/feedback.h"

#include <optional>

namespace bioplaus {

// Validates (feedback, seed, stream, step, distribution, scale) for op `op`, the spec of every input-gradient
// op; messages name the argument, the expected and the received value.
FeedbackSpec check_feedback_spec(const char* op, c10::string_view feedback, int64_t seed, int64_t stream,
                                 int64_t step, c10::string_view distribution, double scale);

// A layer op's stored feedback matrix (when given): weight's shape, device and dtype, and spec "weight" (the
// matrix is the feedback itself).
void check_feedback_matrix(const char* op, const FeedbackSpec& spec, c10::string_view feedback,
                           const std::optional<at::Tensor>& matrix, const at::Tensor& weight);

// Validates feedback_source's arguments; messages name the argument, the expected and the received value.
FeedbackSpec check_feedback_source_inputs(const at::Tensor& weight, c10::string_view feedback, int64_t seed,
                                          int64_t stream, int64_t step, c10::string_view distribution,
                                          double scale);

}  // namespace bioplaus
