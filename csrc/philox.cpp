// Counter-based random tensors: operator schemas and the one input check of philox_fill.
// The generator, key derivation and element mapping are defined once in common/philox.h; backend kernels
// live in cpu/philox_kernel.cpp and cuda/philox_kernel.cu, fake kernels in bioplaus_kernels/ops/philox.py.
#include "philox.h"

#include "common/checks.h"

#include <torch/library.h>

#include <string>

namespace bioplaus {

philox::Distribution check_philox_fill_inputs(const at::Tensor& like, int64_t seed, int64_t stream, int64_t step,
                                              c10::string_view distribution) {
  constexpr const char* op = "philox_fill";
  philox::Distribution d;
  if (distribution == "uniform") {
    d = philox::Distribution::kUniform;
  } else if (distribution == "normal") {
    d = philox::Distribution::kNormal;
  } else if (distribution == "bits") {
    d = philox::Distribution::kBits;
  } else {
    BIOPLAUS_CHECK(false, op, ": distribution must be 'uniform' or 'normal' (or 'bits' for the raw words), got '",
                   std::string(distribution), "'");
  }
  check_seed_stream_step(op, seed, stream, step);
  const auto dt = like.scalar_type();
  if (d == philox::Distribution::kBits) {
    BIOPLAUS_CHECK(dt == at::kLong, op, ": distribution 'bits' needs an int64 tensor, got ", dt);
  } else if (on_cuda(like)) {
    BIOPLAUS_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16, op,
                   ": like must be float32, float64, float16 or bfloat16 on CUDA, got ", dt);
  } else {
    BIOPLAUS_CHECK(dt == at::kFloat || dt == at::kDouble, op, ": like must be float32 or float64 on the CPU, got ",
                   dt);
  }
  return d;
}

TORCH_LIBRARY_FRAGMENT(bioplaus, m) {
  // A new contiguous tensor of like's shape, dtype and device (like's values are not read) whose element e
  // (row-major flat index) is scale * sample(e) of the given distribution; see common/philox.h.
  m.def("philox_fill(Tensor like, int seed, int stream=0, int step=0, str distribution=\"uniform\", "
        "float scale=1.0) -> Tensor");
  // The raw generator, for known-answer tests (CPU only): counter int64 [N, 4] and key int64 [N, 2], each
  // value a uint32 in [0, 2^32); returns the four output words of each row as int64 [N, 4].
  m.def("philox4x32_10(Tensor counter, Tensor key) -> Tensor");
}

}  // namespace bioplaus
