// Bounded runs of the feedback matrix B on the CPU (semantics in common/feedback.h), for kernels that
// transform or generate B tile by tile into a per-thread buffer instead of materialising it. Implemented in
// cpu/feedback_source_kernel.cpp on the CPU generator (cpu/philox_generator.h).
#pragma once

#include "common/feedback.h"

#include <cstdint>

namespace bioplaus {

// dst[k] = B[e0 + k] for k < count, where w[k] = weight[e0 + k] (w may be null in "random" mode, whose
// B never reads weight). Deterministic and independent of how a range is split into calls.
template <typename scalar_t>
void fill_feedback(const FeedbackSpec& f, const scalar_t* w, int64_t e0, int64_t count, scalar_t* dst);

}  // namespace bioplaus
