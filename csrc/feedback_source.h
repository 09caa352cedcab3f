// The feedback matrix B of a spec, materialised: the operator contract of feedback_source.
//
//   weight [any shape]   float32/float64 (CPU: float16/bfloat16 too, computed in float32 and rounded,
//                        which gives the same values); only its shape/dtype/device in "random" mode
//   returns B            weight's shape, dtype and device, contiguous: B[e] per common/feedback.h
// Used where a library routine needs B as a tensor (Conv2d's backward, feedback_weight(), metrics); the
// input-gradient ops never build it.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#define BIOPLAUS_FEEDBACK_OP_DECLS
#include "common/feedback.h"

namespace bioplaus {

// Validates feedback_source's arguments; messages name the argument, the expected and the received value.
FeedbackSpec check_feedback_source_inputs(const at::Tensor& weight, c10::string_view feedback, int64_t seed,
                                          int64_t stream, int64_t step, c10::string_view distribution,
                                          double scale);

}  // namespace bioplaus
