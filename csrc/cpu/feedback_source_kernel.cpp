// fill_feedback (cpu/feedback_source.h): B's elements in bounded runs.
//
// Uniform samples, the common case, are generated kBlocks counter blocks at a time with AVX-512 or AVX2
// (picked once at run time; scalar otherwise): 32-bit lanes, one lane per counter block, each lane
// running exactly the rounds of philox::philox4x32_10. The 32 x 32 -> 64-bit products come from the
// even/odd-lane multiply (mul_epu32) and are split back into hi/lo 32-bit lanes by blends; the
// conversion (shift, subtract, int -> float, two float multiplies) is the scalar one, exact up to the
// final multiply by `scale`, which rounds the same way in a vector lane. So every value equals
// philox_fill's bit for bit. Normal samples (libm log/sin/cos) take the scalar path of philox_fill.
#include "cpu/feedback_source.h"

#include <algorithm>
#include <cstring>
#include <type_traits>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define BIOPLAUS_X86_SIMD 1
#endif

namespace bioplaus {
namespace {

constexpr int kBlocks = 16;  // counter blocks per batch: 64 elements

// Uniform values of the kBlocks blocks b0 .. b0 + 15: out[4 * l + j] = word j of block b0 + l (any alignment).
using UniformBatch = void (*)(philox::Key, uint64_t step, uint64_t b0, float scale, float* out);

void uniform_batch_scalar(philox::Key key, uint64_t step, uint64_t b0, float scale, float* out) {
  for (int l = 0; l < kBlocks; ++l) {
    const philox::Words v = philox::block_words(key, b0 + static_cast<uint64_t>(l), step);
    for (int j = 0; j < 4; ++j) out[4 * l + j] = philox::mul_rn(scale, philox::uniform(v.w[j]));
  }
}

// The lanes' counter words c1 = hi32(b0 + l) are all hi32(b0) unless the batch crosses a multiple of
// 2^32 blocks; such (vanishingly rare) batches take the scalar path.
bool crosses_hi_word(uint64_t b0) { return static_cast<uint32_t>(b0) > 0xFFFFFFFFu - (kBlocks - 1); }

#if defined(BIOPLAUS_X86_SIMD)
// GCC's AVX-512 headers initialise their "undefined" vectors from themselves, which -Wmaybe-uninitialized
// reports at every inlined intrinsic; the vectors are never read.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

// (hi, lo) 32-bit halves of m * c in every 32-bit lane.
__attribute__((target("avx512f"))) inline void mulhilo_avx512(__m512i m, __m512i c, __m512i& hi, __m512i& lo) {
  const __m512i even = _mm512_mul_epu32(c, m);                         // lanes 0, 2, ...: 64-bit products
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(c, 32), m);  // lanes 1, 3, ...
  hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
  lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
}

// 64-bit unpacks of float vectors (pairs of floats move together).
__attribute__((target("avx512f"))) inline __m512 lo64(__m512 a, __m512 b) {
  return _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
}
__attribute__((target("avx512f"))) inline __m512 hi64(__m512 a, __m512 b) {
  return _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
}

__attribute__((target("avx512f"))) void uniform_batch_avx512(philox::Key key, uint64_t step, uint64_t b0,
                                                              float scale, float* out) {
  if (crosses_hi_word(b0)) return uniform_batch_scalar(key, step, b0, scale, out);
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  __m512i c0 = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(b0))), lane);
  __m512i c1 = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(b0 >> 32)));
  __m512i c2 = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(step)));
  __m512i c3 = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(step >> 32)));
  const __m512i m0 = _mm512_set1_epi32(static_cast<int>(philox::kMul0));
  const __m512i m1 = _mm512_set1_epi32(static_cast<int>(philox::kMul1));
  uint32_t k0 = key.k0, k1 = key.k1;
  for (int r = 0; r < philox::kRounds; ++r) {  // philox::philox_round; the key is bumped after each round
    __m512i hi0, lo0, hi1, lo1;
    mulhilo_avx512(m0, c0, hi0, lo0);
    mulhilo_avx512(m1, c2, hi1, lo1);
    c0 = _mm512_ternarylogic_epi32(hi1, c1, _mm512_set1_epi32(static_cast<int>(k0)), 0x96);  // a ^ b ^ c
    c2 = _mm512_ternarylogic_epi32(hi0, c3, _mm512_set1_epi32(static_cast<int>(k1)), 0x96);
    c1 = lo1;
    c3 = lo0;
    k0 += philox::kWeyl0;
    k1 += philox::kWeyl1;
  }
  // philox::uniform then mul_rn(scale, .), word by word: f[j] lane l = word j of block b0 + l.
  const __m512i offset = _mm512_set1_epi32(1 << 24);
  const __m512 inv = _mm512_set1_ps(philox::kTwoPow24Inv), s = _mm512_set1_ps(scale);
  const __m512i words[4] = {c0, c1, c2, c3};
  __m512 f[4];
  for (int j = 0; j < 4; ++j) {
    f[j] = _mm512_mul_ps(s, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_srli_epi32(words[j], 7), offset)),
                                          inv));
  }
  // Transpose to element order out[4l + j]. After the two unpack rounds, u[i] holds in its 128-bit lane k the
  // four words of block 4k + i; the lane shuffles then gather blocks 4q .. 4q + 3 into output vector q.
  const __m512 t0 = _mm512_unpacklo_ps(f[0], f[1]), t1 = _mm512_unpackhi_ps(f[0], f[1]);
  const __m512 t2 = _mm512_unpacklo_ps(f[2], f[3]), t3 = _mm512_unpackhi_ps(f[2], f[3]);
  const __m512 u0 = lo64(t0, t2), u1 = hi64(t0, t2), u2 = lo64(t1, t3), u3 = hi64(t1, t3);
  const __m512 s0 = _mm512_shuffle_f32x4(u0, u1, 0x44), s1 = _mm512_shuffle_f32x4(u2, u3, 0x44);  // lanes 0, 1
  const __m512 s2 = _mm512_shuffle_f32x4(u0, u1, 0xEE), s3 = _mm512_shuffle_f32x4(u2, u3, 0xEE);  // lanes 2, 3
  _mm512_storeu_ps(out + 0, _mm512_shuffle_f32x4(s0, s1, 0x88));   // blocks 0-3: lane 0 of u0, u1, u2, u3
  _mm512_storeu_ps(out + 16, _mm512_shuffle_f32x4(s0, s1, 0xDD));  // blocks 4-7: lane 1
  _mm512_storeu_ps(out + 32, _mm512_shuffle_f32x4(s2, s3, 0x88));  // blocks 8-11: lane 2
  _mm512_storeu_ps(out + 48, _mm512_shuffle_f32x4(s2, s3, 0xDD));  // blocks 12-15: lane 3
}

__attribute__((target("avx2"))) inline void mulhilo_avx2(__m256i m, __m256i c, __m256i& hi, __m256i& lo) {
  const __m256i even = _mm256_mul_epu32(c, m);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(c, 32), m);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
}

// Two halves of 8 lanes.
__attribute__((target("avx2"))) void uniform_batch_avx2(philox::Key key, uint64_t step, uint64_t b0, float scale,
                                                         float* out) {
  if (crosses_hi_word(b0)) return uniform_batch_scalar(key, step, b0, scale, out);
  constexpr int kLanes = 8;
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(philox::kMul0));
  const __m256i m1 = _mm256_set1_epi32(static_cast<int>(philox::kMul1));
  const __m256i offset = _mm256_set1_epi32(1 << 24);
  const __m256 inv = _mm256_set1_ps(philox::kTwoPow24Inv), s = _mm256_set1_ps(scale);
  for (int half = 0; half < kBlocks / kLanes; ++half) {
    const uint32_t first = static_cast<uint32_t>(b0) + static_cast<uint32_t>(half * kLanes);
    __m256i c0 = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(first)), lane);
    __m256i c1 = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(b0 >> 32)));
    __m256i c2 = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(step)));
    __m256i c3 = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(step >> 32)));
    uint32_t k0 = key.k0, k1 = key.k1;
    for (int r = 0; r < philox::kRounds; ++r) {
      __m256i hi0, lo0, hi1, lo1;
      mulhilo_avx2(m0, c0, hi0, lo0);
      mulhilo_avx2(m1, c2, hi1, lo1);
      c0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), _mm256_set1_epi32(static_cast<int>(k0)));
      c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), _mm256_set1_epi32(static_cast<int>(k1)));
      c1 = lo1;
      c3 = lo0;
      k0 += philox::kWeyl0;
      k1 += philox::kWeyl1;
    }
    alignas(32) float w[4][kLanes];
    const __m256i words[4] = {c0, c1, c2, c3};
    for (int j = 0; j < 4; ++j) {
      const __m256 u =
          _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(words[j], 7), offset)), inv);
      _mm256_store_ps(w[j], _mm256_mul_ps(s, u));
    }
    for (int l = 0; l < kLanes; ++l)
      for (int j = 0; j < 4; ++j) out[4 * (half * kLanes + l) + j] = w[j][l];
  }
}
#pragma GCC diagnostic pop
#endif

UniformBatch pick_uniform_batch() {
#if defined(BIOPLAUS_X86_SIMD)
  if (__builtin_cpu_supports("avx512f")) return uniform_batch_avx512;
  if (__builtin_cpu_supports("avx2")) return uniform_batch_avx2;
#endif
  return uniform_batch_scalar;
}

void normal_batch(philox::Key key, uint64_t step, uint64_t b0, float scale, float* out) {
  for (int l = 0; l < kBlocks; ++l) {
    const philox::Words v = philox::block_words(key, b0 + static_cast<uint64_t>(l), step);
    for (int j = 0; j < 4; ++j) {
      out[4 * l + j] = philox::mul_rn(scale, philox::sample(v, j, philox::Distribution::kNormal));
    }
  }
}

// The float loops below are also built for AVX-512 and AVX2 (picked at load time); restrict pointers let
// every loop here vectorise.
#if defined(BIOPLAUS_X86_SIMD) && !defined(__clang__)
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

}  // namespace

// float and double are their own accumulation types, so the sign product is formed in scalar_t.
template <typename scalar_t>
void fill_feedback(const FeedbackSpec& f, const scalar_t* w, int64_t e0, int64_t count, scalar_t* dst) {
  if (f.mode == FeedbackMode::kWeight) {
    std::memcpy(dst, w, sizeof(scalar_t) * count);
    return;
  }
  if (f.mode == FeedbackMode::kSign) return sign_run(f, w, dst, count);
  // Generated modes: R in batches of kBlocks counter blocks; a batch's first block holds element e0 or
  // the element after the previous batch, so a run wastes at most 3 + 63 generated values.
  static const UniformBatch uniform_batch = pick_uniform_batch();
  const UniformBatch batch = f.distribution == philox::Distribution::kUniform ? uniform_batch : normal_batch;
  alignas(64) float r[4 * kBlocks];
  const int64_t end = e0 + count;
  for (int64_t b0 = e0 / 4; 4 * b0 < end; b0 += kBlocks) {
    const int64_t lo = std::max(e0, 4 * b0), hi = std::min(end, 4 * (b0 + kBlocks));
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (f.mode == FeedbackMode::kRandom && lo == 4 * b0 && hi == lo + 4 * kBlocks) {  // no staging copy
        batch(f.key, f.step, static_cast<uint64_t>(b0), f.scale, dst + (lo - e0));
        continue;
      }
    }
    batch(f.key, f.step, static_cast<uint64_t>(b0), f.scale, r);
    generated_run(f.mode, r + (lo - 4 * b0), w ? w + (lo - e0) : nullptr, dst + (lo - e0), hi - lo);
  }
}

template void fill_feedback<float>(const FeedbackSpec&, const float*, int64_t, int64_t, float*);
template void fill_feedback<double>(const FeedbackSpec&, const double*, int64_t, int64_t, double*);

}  // namespace bioplaus
