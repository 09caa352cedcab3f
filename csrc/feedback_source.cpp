// The feedback spec shared by the input-gradient ops (linear_backward_input, lc2d_backward_input): its
// one validation. Semantics in common/feedback.h; the Python mirror (fake kernels, ops.feedback_source)
// is bioplaus_kernels/ops/feedback_source.py and must keep the same messages.
#define BIOPLAUS_FEEDBACK_OP_DECLS
#include "common/feedback.h"

#include <c10/util/Exception.h>

#include <string>

namespace bioplaus {

FeedbackSpec check_feedback_spec(const char* op, c10::string_view feedback, int64_t seed, int64_t stream,
                                 int64_t step, c10::string_view distribution, double scale) {
  FeedbackSpec f{};
  if (feedback == "weight") {
    f.mode = FeedbackMode::kWeight;
  } else if (feedback == "random") {
    f.mode = FeedbackMode::kRandom;
  } else if (feedback == "sign") {
    f.mode = FeedbackMode::kSign;
  } else if (feedback == "random_sign") {
    f.mode = FeedbackMode::kRandomSign;
  } else {
    TORCH_CHECK(false, op, ": feedback must be 'weight', 'random', 'sign' or 'random_sign', got '",
                std::string(feedback), "'");
  }
  if (distribution == "uniform") {
    f.distribution = philox::Distribution::kUniform;
  } else if (distribution == "normal") {
    f.distribution = philox::Distribution::kNormal;
  } else {
    TORCH_CHECK(false, op, ": distribution must be 'uniform' or 'normal', got '", std::string(distribution), "'");
  }
  TORCH_CHECK(seed >= 0, op, ": seed must be >= 0, got ", seed);
  TORCH_CHECK(stream >= 0, op, ": stream must be >= 0, got ", stream);
  TORCH_CHECK(step >= 0, op, ": step must be >= 0, got ", step);
  f.key = philox::make_key(static_cast<uint64_t>(seed), static_cast<uint64_t>(stream));
  f.step = static_cast<uint64_t>(step);
  f.scale = static_cast<float>(scale);
  f.scale_f64 = scale;
  return f;
}

}  // namespace bioplaus
