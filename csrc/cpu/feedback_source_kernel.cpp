// fill_feedback (cpu/fill_feedback.h): B's elements in bounded runs, from the CPU generator
// (cpu/philox_generator.h) for the seeded modes; and the CPU kernel of the feedback_source op (B
// materialised, one pass, all threads).
#include "cpu/fill_feedback.h"
#include "cpu/philox_generator.h"

#include "feedback_source.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

namespace bioplaus {
namespace {

using philox::kGroupElems;

constexpr int kNormalBlocks = 16;  // counter blocks per normal batch of a run: 64 elements

// The float loops below are also built for AVX-512 and AVX2 (picked at load time); restrict pointers let
// every loop here vectorise.
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define BIOPLAUS_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define BIOPLAUS_SIMD_CLONES
#endif

// dst[k] = sign(w[k]) * s
BIOPLAUS_SIMD_CLONES
void sign_run_f32(const float* __restrict w, float s, float* __restrict dst, int64_t count) {
  for (int64_t k = 0; k < count; ++k) dst[k] = sign_of<float>(w[k]) * s;
}

// "sign" over a run: dst[k] = sign(w[k]) * scale.
template <typename scalar_t>
void sign_run(const FeedbackSpec& f, const scalar_t* __restrict w, scalar_t* __restrict dst, int64_t count) {
  const scalar_t s = sign_scale<scalar_t>(f);
  if constexpr (std::is_same_v<scalar_t, float>) {
    sign_run_f32(w, s, dst, count);
  } else {
    for (int64_t k = 0; k < count; ++k) dst[k] = sign_of<scalar_t>(w[k]) * s;
  }
}

// dst[k] = |r[k]| * sign(w[k])
BIOPLAUS_SIMD_CLONES
void signed_run_f32(const float* __restrict r, const float* __restrict w, float* __restrict dst, int64_t count) {
  for (int64_t k = 0; k < count; ++k) dst[k] = signed_magnitude<float>(r[k], w[k]);
}

// R's float values into B's run: "random" converts, "random_sign" also takes the signs of w.
template <typename scalar_t>
void generated_run(FeedbackMode mode, const float* __restrict r, const scalar_t* __restrict w,
                   scalar_t* __restrict dst, int64_t count) {
  if (mode == FeedbackMode::kRandom) {
    for (int64_t k = 0; k < count; ++k) dst[k] = static_cast<scalar_t>(r[k]);
  } else if constexpr (std::is_same_v<scalar_t, float>) {
    signed_run_f32(r, w, dst, count);
  } else {
    for (int64_t k = 0; k < count; ++k) dst[k] = signed_magnitude<scalar_t>(static_cast<scalar_t>(r[k]), w[k]);
  }
}

// Uniform "random"/"random_sign" over a run. Whole groups inside the run are generated straight into dst
// (float), at most kMaxGroups at a time through a staging buffer (double); the partial groups at the run's
// ends through the staging buffer. So a run wastes fewer than 2 x 128 generated values.
template <typename scalar_t>
void uniform_run(const FeedbackSpec& f, const scalar_t* w, int64_t e0, int64_t count, scalar_t* dst) {
  constexpr int64_t kMaxGroups = 8;
  alignas(64) float r[kMaxGroups * kGroupElems];
  const bool signs = f.mode == FeedbackMode::kRandomSign;
  const int64_t end = e0 + count;
  for (int64_t e = e0; e < end;) {
    const int64_t g = e / kGroupElems, lo = e - g * kGroupElems;  // e's group and its offset in the group
    const int64_t whole = lo == 0 ? (end - e) / kGroupElems : 0;
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (whole > 0) {
        uniform_groups(f.key, f.step, static_cast<uint64_t>(g), whole, f.scale, signs ? w + (e - e0) : nullptr, dst + (e - e0));
        e += whole * kGroupElems;
        continue;
      }
    }
    const int64_t n = std::max<int64_t>(std::min(whole, kMaxGroups), 1);
    const int64_t take = std::min(end - e, n * kGroupElems - lo);
    uniform_groups(f.key, f.step, static_cast<uint64_t>(g), n, f.scale, nullptr, r);
    generated_run(f.mode, r + lo, signs ? w + (e - e0) : nullptr, dst + (e - e0), take);
    e += take;
  }
}

// Normal "random"/"random_sign" over a run, kNormalBlocks blocks at a time (a run wastes at most 3 + 63
// generated values).
template <typename scalar_t>
void normal_run(const FeedbackSpec& f, const scalar_t* w, int64_t e0, int64_t count, scalar_t* dst) {
  alignas(64) float r[4 * kNormalBlocks];
  const int64_t end = e0 + count;
  for (int64_t b0 = e0 / 4; 4 * b0 < end; b0 += kNormalBlocks) {
    const int64_t lo = std::max(e0, 4 * b0), hi = std::min(end, 4 * (b0 + kNormalBlocks));
    normal_samples(f.key, f.step, static_cast<uint64_t>(b0), kNormalBlocks, f.scale, r);
    generated_run(f.mode, r + (lo - 4 * b0), w ? w + (lo - e0) : nullptr, dst + (lo - e0), hi - lo);
  }
}

}  // namespace

// float and double are their own accumulation types, so the sign product is formed in scalar_t.
template <typename scalar_t>
void fill_feedback(const FeedbackSpec& f, const scalar_t* w, int64_t e0, int64_t count, scalar_t* dst) {
  if (count <= 0) return;
  if (f.mode == FeedbackMode::kWeight) {
    std::memcpy(dst, w, sizeof(scalar_t) * count);
    return;
  }
  if (f.mode == FeedbackMode::kSign) return sign_run(f, w, dst, count);
  if (f.distribution == philox::Distribution::kUniform) return uniform_run(f, w, e0, count, dst);
  normal_run(f, w, e0, count, dst);
}

template void fill_feedback<float>(const FeedbackSpec&, const float*, int64_t, int64_t, float*);
template void fill_feedback<double>(const FeedbackSpec&, const double*, int64_t, int64_t, double*);

namespace {

// Smallest parallel chunk (elements): small matrices stay on one thread.
constexpr int64_t kChunkElems = int64_t{1} << 16;

at::Tensor feedback_source_cpu(const at::Tensor& weight, c10::string_view feedback, int64_t seed, int64_t stream,
                               int64_t step, c10::string_view distribution, double scale) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const FeedbackSpec f = check_feedback_source_inputs(weight, feedback, seed, stream, step, distribution, scale);
  const auto dt = weight.scalar_type();
  if (dt == at::kHalf || dt == at::kBFloat16) {
    // B in float32 from the exactly widened weight, then rounded: the values the definition gives (R, the
    // sign product and |R| * sign(W) all round to the same numbers).
    return feedback_source_cpu(weight.to(at::kFloat), feedback, seed, stream, step, distribution, scale).to(dt);
  }
  // "random" never reads weight (it may be an expanded zero-stride tensor).
  const at::Tensor w = f.reads_weight() ? weight.contiguous() : weight;
  at::Tensor out = at::empty(weight.sizes(), weight.options().memory_format(at::MemoryFormat::Contiguous));
  AT_DISPATCH_FLOATING_TYPES(dt, "feedback_source_cpu", [&] {
    const scalar_t* wp = f.reads_weight() ? w.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, out.numel(), kChunkElems, [&](int64_t e0, int64_t e1) {
      fill_feedback<scalar_t>(f, wp ? wp + e0 : nullptr, e0, e1 - e0, op + e0);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(bioplaus, CPU, m) {
  m.impl("feedback_source", feedback_source_cpu);
}

}  // namespace bioplaus
