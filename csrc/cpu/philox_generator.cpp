// The CPU generator of the library's counter-based random numbers (definition: common/philox.h): uniform
// groups, raw words and normal samples, vectorised for AVX-512 and AVX2 with a scalar path for other CPUs,
// each equal to the scalar definition bit for bit (normal samples: to the last ulp of log/sin/cos).
//
// Uniform samples, the common case, are generated a group at a time (common/philox.h: 16 counter blocks,
// 128 elements, element 128 g + 16 s + l = half s % 2 of word s / 2 of block 16 g + l). With AVX-512 one
// group is one 16-lane vector per Philox word, so the 8 half-word slots of a group are 8 plain 16-float
// stores: no transpose. Up to four groups run interleaved (their rounds are independent, which keeps both
// vector ports busy), each lane running exactly the rounds of philox::philox4x32_10. The 32 x 32 -> 64-bit
// products come from the even/odd-lane multiply (mul_epu32), split back into hi/lo 32-bit lanes by masked
// in-lane swaps. The conversion (mask or shift, subtract, int -> float, multiply by 2^-15) is exact and the
// final multiply by `scale` rounds the same way in a vector lane (or, for a positive scale, one FMA rounds
// the same exact value once), so every value equals the scalar philox::element_sample's bit for bit.
// "random_sign" combines |R| with sign(W) in the same pass (float). AVX2 runs a group as two 8-lane halves,
// interleaved, blends for the swaps; the scalar path serves other CPUs and the partial groups at the ends
// of a run. Normal samples: Philox words as above, Box-Muller on Sleef's vector log/sin/cos
// (normal_samples).
#include "cpu/philox_generator.h"

#include "common/feedback.h"  // signed_magnitude: the "random_sign" combination fused into uniform_groups

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define BIOPLAUS_X86_SIMD 1
#endif

#include <cmath>

#if defined(BIOPLAUS_X86_SIMD)
// Sleef's 1-ulp (u10) vector log/sin/cos, which libtorch_cpu links (ATen's Vectorized<float> is built on
// them) and exports. Declared weak: a libtorch without them still loads, and normal samples take libm.
extern "C" {
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"  // vector arguments: only called from target("avx512f"/"avx2") code
__m512 Sleef_logf16_u10avx512f(__m512) __attribute__((weak));
__m512 Sleef_cosf16_u10avx512f(__m512) __attribute__((weak));
__m512 Sleef_sinf16_u10avx512f(__m512) __attribute__((weak));
__m256 Sleef_logf8_u10avx2(__m256) __attribute__((weak));
__m256 Sleef_cosf8_u10avx2(__m256) __attribute__((weak));
__m256 Sleef_sinf8_u10avx2(__m256) __attribute__((weak));
#pragma GCC diagnostic pop
}
#endif

namespace bioplaus {
namespace {


using philox::kGroupBlocks;
using philox::kGroupElems;

// Uniform values of the n whole groups g0 .. g0 + n - 1 into out[0 .. 128 n), times `scale`; with `w`
// (float "random_sign"), |value| * sign(w[k]) instead.
using UniformGroups = void (*)(philox::Key key, uint64_t step, uint64_t g0, int64_t n, float scale,
                               const float* w, float* out);

void uniform_groups_scalar(philox::Key key, uint64_t step, uint64_t g0, int64_t n, float scale, const float* w,
                           float* out) {
  for (int64_t g = 0; g < n; ++g, out += kGroupElems) {
    for (int l = 0; l < kGroupBlocks; ++l) {
      const philox::Words v = philox::block_words(key, (g0 + g) * kGroupBlocks + l, step);
      for (int s = 0; s < 8; ++s) out[16 * s + l] = philox::mul_rn(scale, philox::uniform_half(v.w[s >> 1], s & 1));
    }
    if (w) {
      for (int k = 0; k < kGroupElems; ++k) out[k] = signed_magnitude<float>(out[k], w[k]);
      w += kGroupElems;
    }
  }
}

// Raw words of blocks b0 .. b0 + n - 1: out[4 (b - b0) + j] = word j.
using BlockWords = void (*)(philox::Key key, uint64_t step, uint64_t b0, int64_t n, uint32_t* out);

void block_words_scalar(philox::Key key, uint64_t step, uint64_t b0, int64_t n, uint32_t* out) {
  for (int64_t b = 0; b < n; ++b) {
    const philox::Words v = philox::block_words(key, b0 + static_cast<uint64_t>(b), step);
    std::memcpy(out + 4 * b, v.w, sizeof(v.w));
  }
}

// A vector's lanes take the blocks first .. first + lanes - 1, whose counter word c1 = hi32(block) is
// shared unless the run crosses a multiple of 2^32 (never for a group, which starts at a multiple of 16).
bool crosses_hi_word(uint64_t first, int lanes) {
  return static_cast<uint32_t>(first) > 0xFFFFFFFFu - static_cast<uint32_t>(lanes - 1);
}

#if defined(BIOPLAUS_X86_SIMD)
// GCC's AVX-512 headers initialise their "undefined" vectors from themselves, which -Wmaybe-uninitialized
// reports at every inlined intrinsic; the vectors are never read.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

// (hi, lo) 32-bit halves of m * c in every 32-bit lane. even / odd hold the 64-bit products of the even /
// odd lanes (dwords 2i, 2i + 1 of each: low, high half); one masked in-lane swap (CDAB) per result moves
// the other product's halves into place: hi = (even's high halves, odd's high halves), lo = (even's low,
// odd's low). Two ops where a shift and a blend took four: the rounds are bound by the two vector ports.
__attribute__((target("avx512f"))) inline void mulhilo_avx512(__m512i m, __m512i c, __m512i& hi, __m512i& lo) {
  const __m512i even = _mm512_mul_epu32(c, m);
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(c, 32), m);
  hi = _mm512_mask_shuffle_epi32(odd, 0x5555, even, _MM_PERM_CDAB);  // even lanes: even's dword 2i + 1
  lo = _mm512_mask_shuffle_epi32(even, 0xAAAA, odd, _MM_PERM_CDAB);  // odd lanes: odd's dword 2i
}

// Philox4x32-10 of NV vectors at once: lane l of vector v runs block first[v] + l; c[v][j] = word j.
template <int NV>
__attribute__((target("avx512f"))) inline void philox_avx512(philox::Key key, uint64_t step, const uint64_t* first,
                                                             __m512i (&c)[NV][4]) {
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (int v = 0; v < NV; ++v) {
    c[v][0] = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(first[v]))), lane);
    c[v][1] = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(first[v] >> 32)));
    c[v][2] = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(step)));
    c[v][3] = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(step >> 32)));
  }
  const __m512i m0 = _mm512_set1_epi32(static_cast<int>(philox::kMul0));
  const __m512i m1 = _mm512_set1_epi32(static_cast<int>(philox::kMul1));
  uint32_t k0 = key.k0, k1 = key.k1;
  for (int r = 0; r < philox::kRounds; ++r) {  // philox::philox_round; the key is bumped after each round
    const __m512i kk0 = _mm512_set1_epi32(static_cast<int>(k0)), kk1 = _mm512_set1_epi32(static_cast<int>(k1));
    for (int v = 0; v < NV; ++v) {
      __m512i hi0, lo0, hi1, lo1;
      mulhilo_avx512(m0, c[v][0], hi0, lo0);
      mulhilo_avx512(m1, c[v][2], hi1, lo1);
      c[v][0] = _mm512_ternarylogic_epi32(hi1, c[v][1], kk0, 0x96);  // a ^ b ^ c
      c[v][2] = _mm512_ternarylogic_epi32(hi0, c[v][3], kk1, 0x96);
      c[v][1] = lo1;
      c[v][3] = lo0;
    }
    k0 += philox::kWeyl0;
    k1 += philox::kWeyl1;
  }
}

// mul_rn(scale, uniform16(h)) for the 16-bit values h in the lanes. kFolded (scale > 0 with scale * 2^-15
// a normal float, see folds_scale): one FMA, h * a - scale with a = scale * 2^-15, whose exact value
// (h - 2^15) * 2^-15 * scale is rounded once, as the product is; else the exact conversion, then the product.
template <bool kFolded>
__attribute__((target("avx512f"))) inline __m512 uniform16_avx512(__m512i h, __m512 scale, __m512 a) {
  if constexpr (kFolded) {
    return _mm512_fmsub_ps(_mm512_cvtepi32_ps(h), a, scale);
  } else {
    const __m512i offset = _mm512_set1_epi32(1 << 15);
    const __m512 inv = _mm512_set1_ps(philox::kTwoPow15Inv);
    return _mm512_mul_ps(scale, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(h, offset)), inv));
  }
}

// Whether uniform16_avx512 may fold the scale into one FMA and give the product's bits: a = scale * 2^-15
// exact (normal), so h * a and 2^15 * a = scale are exact; scale > 0, so the zero at h = 2^15 is +0 either way
// (the product gives -0 for a negative or zero scale times a negative value, the FMA +0).
bool folds_scale(float scale) { return scale > 0.0f && std::isnormal(scale * philox::kTwoPow15Inv); }

// signed_magnitude(u, w) lane by lane: |u| with w's sign bit where w is nonzero and not NaN, else +0
// (|u| * sign(w) is exact, so the bit pattern is the scalar's, -0 for u = 0 < w included).
__attribute__((target("avx512f"))) inline __m512 signed_magnitude_avx512(__m512 u, __m512 w) {
  const __m512i sign = _mm512_set1_epi32(static_cast<int>(0x80000000u));
  const __mmask16 nonzero = _mm512_cmp_ps_mask(w, _mm512_setzero_ps(), _CMP_NEQ_OQ);
  const __m512i bits = _mm512_ternarylogic_epi32(sign, _mm512_castps_si512(w), _mm512_castps_si512(u), 0xCA);
  return _mm512_maskz_mov_ps(nonzero, _mm512_castsi512_ps(bits));  // 0xCA: sign ? w : u, bit by bit
}

template <int NV, bool kFolded>
__attribute__((target("avx512f"))) void groups_avx512(philox::Key key, uint64_t step, uint64_t g0, float scale,
                                                      const float* w, float* out) {
  uint64_t first[NV];
  for (int v = 0; v < NV; ++v) first[v] = (g0 + v) * kGroupBlocks;
  __m512i c[NV][4];
  philox_avx512<NV>(key, step, first, c);
  const __m512 s = _mm512_set1_ps(scale), a = _mm512_set1_ps(scale * philox::kTwoPow15Inv);
  const __m512i low = _mm512_set1_epi32(0xFFFF);
  for (int v = 0; v < NV; ++v) {
    for (int j = 0; j < 4; ++j) {  // slots 2j (bits 0-15) and 2j + 1 (bits 16-31) of word j
      const int o = kGroupElems * v + 32 * j;
      __m512 lo = uniform16_avx512<kFolded>(_mm512_and_si512(c[v][j], low), s, a);
      __m512 hi = uniform16_avx512<kFolded>(_mm512_srli_epi32(c[v][j], 16), s, a);
      if (w) {
        lo = signed_magnitude_avx512(lo, _mm512_loadu_ps(w + o));
        hi = signed_magnitude_avx512(hi, _mm512_loadu_ps(w + o + 16));
      }
      _mm512_storeu_ps(out + o, lo);
      _mm512_storeu_ps(out + o + 16, hi);
    }
  }
}

template <bool kFolded>
__attribute__((target("avx512f"))) void uniform_groups_avx512_as(philox::Key key, uint64_t step, uint64_t g0,
                                                                  int64_t n, float scale, const float* w, float* out) {
  constexpr int64_t kStride = 4 * kGroupElems;
  for (; n >= 4; n -= 4, g0 += 4, out += kStride, w = w ? w + kStride : w) {
    groups_avx512<4, kFolded>(key, step, g0, scale, w, out);
  }
  if (n >= 2) {
    groups_avx512<2, kFolded>(key, step, g0, scale, w, out);
    n -= 2, g0 += 2, out += 2 * kGroupElems, w = w ? w + 2 * kGroupElems : w;
  }
  if (n) groups_avx512<1, kFolded>(key, step, g0, scale, w, out);
}

void uniform_groups_avx512(philox::Key key, uint64_t step, uint64_t g0, int64_t n, float scale, const float* w,
                           float* out) {
  if (folds_scale(scale)) return uniform_groups_avx512_as<true>(key, step, g0, n, scale, w, out);
  uniform_groups_avx512_as<false>(key, step, g0, n, scale, w, out);
}

// 64-bit unpacks of integer vectors (pairs of words move together).
__attribute__((target("avx512f"))) inline __m512i lo64(__m512i a, __m512i b) { return _mm512_unpacklo_epi64(a, b); }
__attribute__((target("avx512f"))) inline __m512i hi64(__m512i a, __m512i b) { return _mm512_unpackhi_epi64(a, b); }

// 16 blocks' words from lanes (c[j] lane l = word j of block l) to block order out[4 l + j]. After the
// two unpack rounds, u[i] holds in its 128-bit lane k the four words of block 4k + i; the lane shuffles
// then gather blocks 4q .. 4q + 3 into output vector q.
__attribute__((target("avx512f"))) inline void store_block_order(const __m512i (&c)[4], uint32_t* out) {
  const __m512i t0 = _mm512_unpacklo_epi32(c[0], c[1]), t1 = _mm512_unpackhi_epi32(c[0], c[1]);
  const __m512i t2 = _mm512_unpacklo_epi32(c[2], c[3]), t3 = _mm512_unpackhi_epi32(c[2], c[3]);
  const __m512i u0 = lo64(t0, t2), u1 = hi64(t0, t2), u2 = lo64(t1, t3), u3 = hi64(t1, t3);
  const __m512i s0 = _mm512_shuffle_i32x4(u0, u1, 0x44), s1 = _mm512_shuffle_i32x4(u2, u3, 0x44);  // lanes 0, 1
  const __m512i s2 = _mm512_shuffle_i32x4(u0, u1, 0xEE), s3 = _mm512_shuffle_i32x4(u2, u3, 0xEE);  // lanes 2, 3
  _mm512_storeu_si512(out + 0, _mm512_shuffle_i32x4(s0, s1, 0x88));   // blocks 0-3: lane 0 of u0, u1, u2, u3
  _mm512_storeu_si512(out + 16, _mm512_shuffle_i32x4(s0, s1, 0xDD));  // blocks 4-7: lane 1
  _mm512_storeu_si512(out + 32, _mm512_shuffle_i32x4(s2, s3, 0x88));  // blocks 8-11: lane 2
  _mm512_storeu_si512(out + 48, _mm512_shuffle_i32x4(s2, s3, 0xDD));  // blocks 12-15: lane 3
}

__attribute__((target("avx512f"))) void block_words_avx512(philox::Key key, uint64_t step, uint64_t b0, int64_t n,
                                                            uint32_t* out) {
  for (; n >= 4 * kGroupBlocks; n -= 4 * kGroupBlocks, b0 += 4 * kGroupBlocks, out += 16 * kGroupBlocks) {
    const uint64_t first[4] = {b0, b0 + 16, b0 + 32, b0 + 48};
    if (crosses_hi_word(b0, 64)) {
      block_words_scalar(key, step, b0, 4 * kGroupBlocks, out);
      continue;
    }
    __m512i c[4][4];
    philox_avx512<4>(key, step, first, c);
    for (int v = 0; v < 4; ++v) store_block_order(c[v], out + 64 * v);
  }
  block_words_scalar(key, step, b0, n, out);
}

// The AVX2 twins: 8 lanes.
__attribute__((target("avx2"))) inline void mulhilo_avx2(__m256i m, __m256i c, __m256i& hi, __m256i& lo) {
  const __m256i even = _mm256_mul_epu32(c, m);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(c, 32), m);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
}

// Philox4x32-10 of NV vectors at once (independent rounds interleaved, as in philox_avx512): lane l of
// vector v runs block first[v] + l, l < 8; c[v][j] lane l = word j.
template <int NV>
__attribute__((target("avx2"))) inline void philox_avx2(philox::Key key, uint64_t step, const uint64_t* first,
                                                        __m256i (&c)[NV][4]) {
  for (int v = 0; v < NV; ++v) {
    c[v][0] = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(first[v]))),
                               _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    c[v][1] = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(first[v] >> 32)));
    c[v][2] = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(step)));
    c[v][3] = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(step >> 32)));
  }
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(philox::kMul0));
  const __m256i m1 = _mm256_set1_epi32(static_cast<int>(philox::kMul1));
  uint32_t k0 = key.k0, k1 = key.k1;
  for (int r = 0; r < philox::kRounds; ++r) {
    const __m256i kk0 = _mm256_set1_epi32(static_cast<int>(k0)), kk1 = _mm256_set1_epi32(static_cast<int>(k1));
    for (int v = 0; v < NV; ++v) {
      __m256i hi0, lo0, hi1, lo1;
      mulhilo_avx2(m0, c[v][0], hi0, lo0);
      mulhilo_avx2(m1, c[v][2], hi1, lo1);
      c[v][0] = _mm256_xor_si256(_mm256_xor_si256(hi1, c[v][1]), kk0);
      c[v][2] = _mm256_xor_si256(_mm256_xor_si256(hi0, c[v][3]), kk1);
      c[v][1] = lo1;
      c[v][3] = lo0;
    }
    k0 += philox::kWeyl0;
    k1 += philox::kWeyl1;
  }
}

// signed_magnitude_avx512's twin: |u| with w's sign bit where w is nonzero and not NaN, else +0.
__attribute__((target("avx2"))) inline __m256 signed_magnitude_avx2(__m256 u, __m256 w) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256 nonzero = _mm256_cmp_ps(w, _mm256_setzero_ps(), _CMP_NEQ_OQ);
  return _mm256_and_ps(nonzero, _mm256_or_ps(_mm256_and_ps(sign, w), _mm256_andnot_ps(sign, u)));
}

// uniform16_avx512's twin.
template <bool kFolded>
__attribute__((target("avx2,fma"))) inline __m256 uniform16_avx2(__m256i h, __m256 scale, __m256 a) {
  if constexpr (kFolded) {
    return _mm256_fmsub_ps(_mm256_cvtepi32_ps(h), a, scale);
  } else {
    const __m256i offset = _mm256_set1_epi32(1 << 15);
    const __m256 inv = _mm256_set1_ps(philox::kTwoPow15Inv);
    return _mm256_mul_ps(scale, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(h, offset)), inv));
  }
}

// A group's two 8-lane halves run interleaved; "random_sign" takes w's signs in registers.
template <bool kFolded>
__attribute__((target("avx2,fma"))) void uniform_groups_avx2_as(philox::Key key, uint64_t step, uint64_t g0,
                                                                 int64_t n, float scale, const float* w, float* out) {
  const __m256i low = _mm256_set1_epi32(0xFFFF);
  const __m256 s = _mm256_set1_ps(scale), a = _mm256_set1_ps(scale * philox::kTwoPow15Inv);
  for (int64_t g = 0; g < n; ++g) {
    const uint64_t first[2] = {(g0 + g) * kGroupBlocks, (g0 + g) * kGroupBlocks + 8};
    __m256i c[2][4];
    philox_avx2<2>(key, step, first, c);
    for (int half = 0; half < 2; ++half) {  // lanes 8 half .. 8 half + 7 of the group
      for (int j = 0; j < 4; ++j) {
        for (int h = 0; h < 2; ++h) {  // slot 2j + h
          const __m256i bits = h ? _mm256_srli_epi32(c[half][j], 16) : _mm256_and_si256(c[half][j], low);
          const int64_t o = kGroupElems * g + 16 * (2 * j + h) + 8 * half;
          __m256 u = uniform16_avx2<kFolded>(bits, s, a);
          if (w) u = signed_magnitude_avx2(u, _mm256_loadu_ps(w + o));
          _mm256_storeu_ps(out + o, u);
        }
      }
    }
  }
}

void uniform_groups_avx2(philox::Key key, uint64_t step, uint64_t g0, int64_t n, float scale, const float* w,
                         float* out) {
  if (folds_scale(scale)) return uniform_groups_avx2_as<true>(key, step, g0, n, scale, w, out);
  uniform_groups_avx2_as<false>(key, step, g0, n, scale, w, out);
}

__attribute__((target("avx2"))) void block_words_avx2(philox::Key key, uint64_t step, uint64_t b0, int64_t n,
                                                       uint32_t* out) {
  for (; n >= 8; n -= 8, b0 += 8, out += 32) {
    if (crosses_hi_word(b0, 8)) {
      block_words_scalar(key, step, b0, 8, out);
      continue;
    }
    const uint64_t first[1] = {b0};
    __m256i c[1][4];
    philox_avx2<1>(key, step, first, c);
    alignas(32) uint32_t lanes[4][8];
    for (int j = 0; j < 4; ++j) _mm256_store_si256(reinterpret_cast<__m256i*>(lanes[j]), c[0][j]);
    for (int l = 0; l < 8; ++l)
      for (int j = 0; j < 4; ++j) out[4 * l + j] = lanes[j][l];
  }
  block_words_scalar(key, step, b0, n, out);
}
#pragma GCC diagnostic pop
#endif

// The vector paths the CPU allows, capped by ATEN_CPU_CAPABILITY ("default", "avx2", "avx512") as ATen's
// own kernels are: one variable pins both, and the tests reach every path on an AVX-512 machine.
int capability_cap() {
  const char* env = std::getenv("ATEN_CPU_CAPABILITY");
  const std::string v = env ? env : "";
  return v == "default" ? 0 : v == "avx2" ? 1 : 2;
}

enum Isa : int { kAvx2 = 1, kAvx512 = 2 };

bool cpu_allows(Isa isa) {
#if defined(BIOPLAUS_X86_SIMD)
  if (capability_cap() < isa) return false;
  // The AVX2 level includes FMA, as ATen's AVX2 capability does (the folded uniform conversion uses it).
  return isa == kAvx512 ? __builtin_cpu_supports("avx512f")
                        : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

}  // namespace

bool cpu_allows_avx512() { return cpu_allows(kAvx512); }

namespace {

UniformGroups pick_uniform_groups() {
#if defined(BIOPLAUS_X86_SIMD)
  if (cpu_allows(kAvx512)) return uniform_groups_avx512;
  if (cpu_allows(kAvx2)) return uniform_groups_avx2;
#endif
  return uniform_groups_scalar;
}

BlockWords pick_block_words() {
#if defined(BIOPLAUS_X86_SIMD)
  if (cpu_allows(kAvx512)) return block_words_avx512;
  if (cpu_allows(kAvx2)) return block_words_avx2;
#endif
  return block_words_scalar;
}

// Box-Muller on `count` (a multiple of 16) pairs (u1, u2), in float32 with the roundings of common/philox.h:
//   r = sqrt(log(u1[k]) * -2), t = u2[k] * 2 pi, out[2k] = scale * (r cos t), out[2k + 1] = scale * (r sin t).
// Vectorised with Sleef where libtorch exports it, libm otherwise; the two may differ in the last ulp (as
// the CPU and CUDA do), but every CPU user of normal samples calls the one function picked at load time.
constexpr float kTwoPi = 6.28318530717958647692f;
using BoxMuller = void (*)(const float* u1, const float* u2, int64_t count, float scale, float* out);

#if defined(BIOPLAUS_X86_SIMD)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
__attribute__((target("avx512f"))) void box_muller_avx512(const float* u1, const float* u2, int64_t count,
                                                          float scale, float* out) {
  // (cos k, sin k) interleaved: lanes 0..7 of cos/sin into the first vector, 8..15 into the second
  const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  const __m512 sc = _mm512_set1_ps(scale);
  for (int64_t k = 0; k < count; k += 16) {
    const __m512 r =
        _mm512_sqrt_ps(_mm512_mul_ps(Sleef_logf16_u10avx512f(_mm512_loadu_ps(u1 + k)), _mm512_set1_ps(-2.0f)));
    const __m512 t = _mm512_mul_ps(_mm512_loadu_ps(u2 + k), _mm512_set1_ps(kTwoPi));
    const __m512 c = _mm512_mul_ps(sc, _mm512_mul_ps(r, Sleef_cosf16_u10avx512f(t)));
    const __m512 s = _mm512_mul_ps(sc, _mm512_mul_ps(r, Sleef_sinf16_u10avx512f(t)));
    _mm512_storeu_ps(out + 2 * k, _mm512_permutex2var_ps(c, lo, s));
    _mm512_storeu_ps(out + 2 * k + 16, _mm512_permutex2var_ps(c, hi, s));
  }
}

__attribute__((target("avx2"))) void box_muller_avx2(const float* u1, const float* u2, int64_t count, float scale,
                                                     float* out) {
  const __m256 sc = _mm256_set1_ps(scale);
  for (int64_t k = 0; k < count; k += 8) {
    const __m256 r =
        _mm256_sqrt_ps(_mm256_mul_ps(Sleef_logf8_u10avx2(_mm256_loadu_ps(u1 + k)), _mm256_set1_ps(-2.0f)));
    const __m256 t = _mm256_mul_ps(_mm256_loadu_ps(u2 + k), _mm256_set1_ps(kTwoPi));
    const __m256 c = _mm256_mul_ps(sc, _mm256_mul_ps(r, Sleef_cosf8_u10avx2(t)));
    const __m256 s = _mm256_mul_ps(sc, _mm256_mul_ps(r, Sleef_sinf8_u10avx2(t)));
    // unpacklo/hi interleave within 128-bit halves: (c0 s0 c1 s1 | c4 s4 c5 s5), (c2 s2 c3 s3 | c6 s6 c7 s7)
    const __m256 a = _mm256_unpacklo_ps(c, s), b = _mm256_unpackhi_ps(c, s);
    _mm256_storeu_ps(out + 2 * k, _mm256_permute2f128_ps(a, b, 0x20));
    _mm256_storeu_ps(out + 2 * k + 8, _mm256_permute2f128_ps(a, b, 0x31));
  }
}
#pragma GCC diagnostic pop
#endif  // BIOPLAUS_X86_SIMD

void box_muller_libm(const float* u1, const float* u2, int64_t count, float scale, float* out) {
  for (int64_t k = 0; k < count; ++k) {
    const float r = std::sqrt(std::log(u1[k]) * -2.0f);
    const float t = u2[k] * kTwoPi;
    out[2 * k] = scale * (r * std::cos(t));
    out[2 * k + 1] = scale * (r * std::sin(t));
  }
}

BoxMuller pick_box_muller() {
#if defined(BIOPLAUS_X86_SIMD)
  if (cpu_allows(kAvx512) && Sleef_logf16_u10avx512f && Sleef_cosf16_u10avx512f && Sleef_sinf16_u10avx512f) {
    return box_muller_avx512;
  }
  if (cpu_allows(kAvx2) && Sleef_logf8_u10avx2 && Sleef_cosf8_u10avx2 && Sleef_sinf8_u10avx2) {
    return box_muller_avx2;
  }
#endif
  return box_muller_libm;
}

}  // namespace

void uniform_groups(philox::Key key, uint64_t step, uint64_t g0, int64_t n, float scale, const float* w,
                    float* out) {
  static const UniformGroups groups = pick_uniform_groups();
  groups(key, step, g0, n, scale, w, out);
}

void philox_words(philox::Key key, uint64_t step, uint64_t b0, int64_t n, uint32_t* out) {
  static const BlockWords words = pick_block_words();
  words(key, step, b0, n, out);
}

void normal_samples(philox::Key key, uint64_t step, uint64_t b0, int64_t n, float scale, float* out) {
  static const BoxMuller box_muller = pick_box_muller();
  constexpr int64_t kChunk = 256;  // blocks per pass: 4 KB of words, 512 pairs (a multiple of 16)
  alignas(64) uint32_t x[4 * kChunk];
  alignas(64) float u1[2 * kChunk], u2[2 * kChunk], samples[4 * kChunk];
  for (int64_t c = 0; c < n; c += kChunk) {
    const int64_t nb = std::min(kChunk, n - c);
    philox_words(key, step, b0 + static_cast<uint64_t>(c), nb, x);
    for (int64_t k = 0; k < 2 * nb; ++k) {  // pair k = 2b + p: words (2p, 2p + 1) of block b
      u1[k] = static_cast<float>((x[2 * k] >> 8) + 1u) * philox::kTwoPow24Inv;  // (0, 1]
      u2[k] = static_cast<float>(x[2 * k + 1] >> 8) * philox::kTwoPow24Inv;     // [0, 1)
    }
    const int64_t padded = (2 * nb + 15) / 16 * 16;  // pad with (1, 0): log 1 = 0, finite, discarded
    std::fill(u1 + 2 * nb, u1 + padded, 1.0f);
    std::fill(u2 + 2 * nb, u2 + padded, 0.0f);
    float* dst = 4 * nb == 2 * padded ? out + 4 * c : samples;  // whole 16-pair batches go straight to out
    box_muller(u1, u2, padded, scale, dst);
    if (dst == samples) std::copy(samples, samples + 4 * nb, out + 4 * c);
  }
}

}  // namespace bioplaus
