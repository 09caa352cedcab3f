// fill_feedback (cpu/feedback_source.h): B's elements in bounded runs. Uniform samples are generated
// kBlocks counter blocks at a time in structure-of-arrays form, so the compiler turns the Philox rounds
// into vector multiplies (32 x 32 -> 64-bit lanes); target_clones builds AVX-512 and AVX2 versions next
// to the baseline and picks one at load time. Every lane computes exactly the scalar generator of
// common/philox.h (integer arithmetic, one exact conversion, one float multiply), so the values equal
// philox_fill's bit for bit. Normal samples (libm log/sin/cos) take the scalar path of philox_fill.
#include "cpu/feedback_source.h"

#include <algorithm>
#include <cstring>

namespace bioplaus {
namespace {

constexpr int kBlocks = 16;  // counter blocks per batch: 64 elements

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define BIOPLAUS_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define BIOPLAUS_SIMD_CLONES
#endif

// out[4 * l + j] = mul_rn(scale, uniform(word j of block b0 + l)) for l < kBlocks.
BIOPLAUS_SIMD_CLONES
void uniform_blocks(philox::Key key, uint64_t step, uint64_t b0, float scale, float* out) {
  uint32_t c0[kBlocks], c1[kBlocks], c2[kBlocks], c3[kBlocks];
  for (int l = 0; l < kBlocks; ++l) {
    const uint64_t b = b0 + static_cast<uint64_t>(l);
    c0[l] = static_cast<uint32_t>(b);
    c1[l] = static_cast<uint32_t>(b >> 32);
    c2[l] = static_cast<uint32_t>(step);
    c3[l] = static_cast<uint32_t>(step >> 32);
  }
  uint32_t k0 = key.k0, k1 = key.k1;
  for (int r = 0; r < philox::kRounds; ++r) {
    if (r > 0) {
      k0 += philox::kWeyl0;
      k1 += philox::kWeyl1;
    }
    for (int l = 0; l < kBlocks; ++l) {  // philox::philox_round, lane by lane
      const uint64_t p0 = static_cast<uint64_t>(philox::kMul0) * c0[l];
      const uint64_t p1 = static_cast<uint64_t>(philox::kMul1) * c2[l];
      const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1[l] ^ k0;
      const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3[l] ^ k1;
      c1[l] = static_cast<uint32_t>(p1);
      c3[l] = static_cast<uint32_t>(p0);
      c0[l] = n0;
      c2[l] = n2;
    }
  }
  for (int l = 0; l < kBlocks; ++l) {
    out[4 * l + 0] = philox::mul_rn(scale, philox::uniform(c0[l]));
    out[4 * l + 1] = philox::mul_rn(scale, philox::uniform(c1[l]));
    out[4 * l + 2] = philox::mul_rn(scale, philox::uniform(c2[l]));
    out[4 * l + 3] = philox::mul_rn(scale, philox::uniform(c3[l]));
  }
}

void normal_blocks(philox::Key key, uint64_t step, uint64_t b0, float scale, float* out) {
  for (int l = 0; l < kBlocks; ++l) {
    const philox::Words v = philox::block_words(key, b0 + static_cast<uint64_t>(l), step);
    for (int j = 0; j < 4; ++j) {
      out[4 * l + j] = philox::mul_rn(scale, philox::sample(v, j, philox::Distribution::kNormal));
    }
  }
}

}  // namespace

template <typename scalar_t>
void fill_feedback(const FeedbackSpec& f, const scalar_t* w, int64_t e0, int64_t count, scalar_t* dst) {
  using acc_t = scalar_t;  // float and double: their own accumulation types
  if (f.mode == FeedbackMode::kWeight) {
    std::memcpy(dst, w, sizeof(scalar_t) * count);
    return;
  }
  if (f.mode == FeedbackMode::kSign) {
    for (int64_t k = 0; k < count; ++k) dst[k] = combine_feedback<scalar_t, acc_t>(f, scalar_t(0), w[k]);
    return;
  }
  // Generated modes: whole batches of kBlocks counter blocks, keeping the elements in [e0, e0 + count).
  float r[4 * kBlocks];
  const int64_t end = e0 + count;
  for (int64_t b0 = e0 / 4; 4 * b0 < end; b0 += kBlocks) {
    if (f.distribution == philox::Distribution::kUniform) {
      uniform_blocks(f.key, f.step, static_cast<uint64_t>(b0), f.scale, r);
    } else {
      normal_blocks(f.key, f.step, static_cast<uint64_t>(b0), f.scale, r);
    }
    const int64_t lo = std::max(e0, 4 * b0), hi = std::min(end, 4 * (b0 + kBlocks));
    if (f.mode == FeedbackMode::kRandom) {
      for (int64_t e = lo; e < hi; ++e) dst[e - e0] = static_cast<scalar_t>(r[e - 4 * b0]);
    } else {
      for (int64_t e = lo; e < hi; ++e) {
        dst[e - e0] = combine_feedback<scalar_t, acc_t>(f, static_cast<scalar_t>(r[e - 4 * b0]), w[e - e0]);
      }
    }
  }
}

template void fill_feedback<float>(const FeedbackSpec&, const float*, int64_t, int64_t, float*);
template void fill_feedback<double>(const FeedbackSpec&, const double*, int64_t, int64_t, double*);

}  // namespace bioplaus
