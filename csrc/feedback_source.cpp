// The feedback spec shared by the input-gradient ops (linear_backward_input, lc2d_backward_input), the layer
// ops (linear, lc2d) and feedback_source: its one validation, the layer ops' stored-matrix check, and
// feedback_source's schema and input check. Semantics in
// common/feedback.h; kernels: cpu/feedback_source_kernel.cpp, cuda/feedback_source_kernel.cu. The Python
// mirror (fake kernels, ops.feedback_source) is bioplaus_kernels/ops/feedback_source.py and must keep the
// same messages.
#include "feedback_source.h"

#include "common/checks.h"

#include <c10/util/Exception.h>
#include <torch/library.h>

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
    BIOPLAUS_CHECK(false, op, ": feedback must be 'weight', 'random', 'sign' or 'random_sign', got '",
                   std::string(feedback), "'");
  }
  if (distribution == "uniform") {
    f.distribution = philox::Distribution::kUniform;
  } else if (distribution == "normal") {
    f.distribution = philox::Distribution::kNormal;
  } else {
    BIOPLAUS_CHECK(false, op, ": distribution must be 'uniform' or 'normal', got '", std::string(distribution), "'");
  }
  check_seed_stream_step(op, seed, stream, step);
  f.key = philox::make_key(static_cast<uint64_t>(seed), static_cast<uint64_t>(stream));
  f.step = static_cast<uint64_t>(step);
  f.scale = static_cast<float>(scale);
  f.scale_f64 = scale;
  return f;
}

void check_feedback_matrix(const char* op, const FeedbackSpec& spec, c10::string_view feedback,
                           const std::optional<at::Tensor>& matrix, const at::Tensor& weight) {
  if (!matrix.has_value() || !matrix->defined()) return;
  BIOPLAUS_CHECK(spec.mode == FeedbackMode::kWeight, op,
                 ": a matrix is the feedback itself; feedback must be 'weight' with it, got '", std::string(feedback),
                 "'");
  BIOPLAUS_CHECK(matrix->sizes() == weight.sizes(), op, ": matrix must have weight's shape ", shape_str(weight.sizes()),
                 ", got ", shape_str(matrix->sizes()));
  check_same(op, "matrix", *matrix, "weight", weight);
}

FeedbackSpec check_feedback_source_inputs(const at::Tensor& weight, c10::string_view feedback, int64_t seed,
                                          int64_t stream, int64_t step, c10::string_view distribution,
                                          double scale) {
  constexpr const char* op = "feedback_source";
  const FeedbackSpec f = check_feedback_spec(op, feedback, seed, stream, step, distribution, scale);
  const auto dt = weight.scalar_type();
  BIOPLAUS_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16, op,
                 ": weight must be float32, float64, float16 or bfloat16, got ", dt);
  return f;
}

TORCH_LIBRARY_FRAGMENT(bioplaus, m) {
  m.def(
      "feedback_source(Tensor weight, str feedback=\"weight\", int seed=0, int stream=0, int step=0, "
      "str distribution=\"uniform\", float scale=1.0) -> Tensor");
}

}  // namespace bioplaus
