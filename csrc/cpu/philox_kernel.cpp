// philox_fill and philox4x32_10 on the CPU. Work is split into element ranges (fill_feedback generates any
// range, common/philox.h maps elements to counter blocks), so every element is written by exactly one thread
// and the result does not depend on the thread count. Uniform and normal samples come from fill_feedback in
// "random" mode, on the vectorised CPU generator (cpu/philox_generator.h, bit-equal to the scalar
// definition); the raw words ("bits") from the scalar generator.
#include "philox.h"

#include "common/checks.h"

#include "cpu/fill_feedback.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>

namespace bioplaus {
namespace {

constexpr int64_t kGrainBlocks = 2048;

// The raw 32-bit words as int64.
void fill_bits_cpu(int64_t* out, int64_t numel, philox::Key key, uint64_t step) {
  const int64_t blocks = (numel + 3) / 4;
  at::parallel_for(0, blocks, kGrainBlocks, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const philox::Words v = philox::block_words(key, static_cast<uint64_t>(b), step);
      const int64_t e0 = 4 * b, n = std::min<int64_t>(4, numel - e0);
      for (int j = 0; j < n; ++j) out[e0 + j] = static_cast<int64_t>(v.w[j]);
    }
  });
}

// out[e] = R[e] of a "random" feedback spec: mul_rn(scale, sample) in float, converted to scalar_t.
template <typename scalar_t>
void fill_samples_cpu(scalar_t* out, int64_t numel, const FeedbackSpec& spec) {
  at::parallel_for(0, (numel + 3) / 4, kGrainBlocks, [&](int64_t b0, int64_t b1) {
    const int64_t e0 = 4 * b0, e1 = std::min(numel, 4 * b1);
    fill_feedback<scalar_t>(spec, nullptr, e0, e1 - e0, out + e0);
  });
}

at::Tensor philox_fill_cpu(const at::Tensor& like, int64_t seed, int64_t stream, int64_t step,
                           c10::string_view distribution, double scale) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const philox::Distribution d = check_philox_fill_inputs(like, seed, stream, step, distribution);
  at::Tensor out = at::empty(like.sizes(), like.options().memory_format(at::MemoryFormat::Contiguous));
  const int64_t numel = out.numel();
  if (numel == 0) return out;
  const philox::Key key = philox::make_key(static_cast<uint64_t>(seed), static_cast<uint64_t>(stream));
  const float scale_f = static_cast<float>(scale);
  if (d == philox::Distribution::kBits) {
    fill_bits_cpu(out.mutable_data_ptr<int64_t>(), numel, key, static_cast<uint64_t>(step));
  } else {
    const FeedbackSpec spec{FeedbackMode::kRandom, d, key, static_cast<uint64_t>(step), scale_f, scale};
    AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "philox_fill_cpu",
                               [&] { fill_samples_cpu(out.mutable_data_ptr<scalar_t>(), numel, spec); });
  }
  return out;
}

void check_words(const char* name, const at::Tensor& t, int64_t cols) {
  BIOPLAUS_CHECK(t.dim() == 2 && t.size(1) == cols, "philox4x32_10: ", name, " must be an int64 tensor of shape [N, ",
                 cols, "], got shape ", t.sizes());
  BIOPLAUS_CHECK(t.scalar_type() == at::kLong, "philox4x32_10: ", name, " must be int64, got ", t.scalar_type());
}

at::Tensor philox4x32_10_cpu(const at::Tensor& counter, const at::Tensor& key) {
  check_words("counter", counter, 4);
  check_words("key", key, 2);
  BIOPLAUS_CHECK(counter.size(0) == key.size(0), "philox4x32_10: counter has ", counter.size(0),
                 " rows but key has ", key.size(0));
  const at::Tensor c = counter.contiguous(), k = key.contiguous();
  at::Tensor out = at::empty({c.size(0), 4}, c.options().memory_format(at::MemoryFormat::Contiguous));
  const int64_t* cp = c.const_data_ptr<int64_t>();
  const int64_t* kp = k.const_data_ptr<int64_t>();
  int64_t* op = out.mutable_data_ptr<int64_t>();
  auto in_range = [](int64_t v) { return v >= 0 && v <= int64_t{0xFFFFFFFF}; };
  for (int64_t i = 0; i < c.size(0); ++i) {
    for (int j = 0; j < 4; ++j) {
      BIOPLAUS_CHECK(in_range(cp[4 * i + j]), "philox4x32_10: counter values must be in [0, 2^32), got ",
                     cp[4 * i + j]);
    }
    for (int j = 0; j < 2; ++j) {
      BIOPLAUS_CHECK(in_range(kp[2 * i + j]), "philox4x32_10: key values must be in [0, 2^32), got ", kp[2 * i + j]);
    }
    const philox::Words ctr{{static_cast<uint32_t>(cp[4 * i]), static_cast<uint32_t>(cp[4 * i + 1]),
                             static_cast<uint32_t>(cp[4 * i + 2]), static_cast<uint32_t>(cp[4 * i + 3])}};
    const philox::Words v =
        philox::philox4x32_10(ctr, philox::Key{static_cast<uint32_t>(kp[2 * i]), static_cast<uint32_t>(kp[2 * i + 1])});
    for (int j = 0; j < 4; ++j) op[4 * i + j] = static_cast<int64_t>(v.w[j]);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(bioplaus, CPU, m) {
  m.impl("philox_fill", philox_fill_cpu);
  m.impl("philox4x32_10", philox4x32_10_cpu);
}

}  // namespace bioplaus
