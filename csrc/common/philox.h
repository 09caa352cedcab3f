// The one counter-based generator of the library: Philox4x32-10, the key derivation and the element
// mapping, shared by the CPU kernels, the CUDA kernels and (through the philox_fill op) Python, so that a
// regenerated random tensor equals the materialised one bit for bit on every device.
//
// Generator: Philox4x32-10 exactly as Random123 (philox4x32_R with R = 10) and cuRAND define it:
// 128-bit counter (c0, c1, c2, c3), 64-bit key (k0, k1), 10 rounds, multipliers 0xD2511F53 / 0xCD9E8D57,
// Weyl key increments 0x9E3779B9 / 0xBB67AE85 between rounds; four 32-bit output words per counter.
//
// Key derivation (seed, stream) -> key: key64 = seed ^ mix64(stream), k0 = lo32(key64), k1 = hi32(key64),
// where mix64 is the splitmix64 finaliser (a bijection of uint64 with mix64(0) = 0). Stream 0 thus uses the
// seed itself as the key, and distinct streams (layer ids) of one seed get unrelated keys.
//
// Element mapping (e = the canonical row-major flat index of the drawn tensor; `step` is 0 for fixed
// matrices and the training step for per-step redraws (brSF), so the counter space of every step is
// disjoint from every other step's). Counter block b at `step` is (lo32(b), hi32(b), lo32(step), hi32(step)).
//   bits, normal:  element e reads block e / 4, word e % 4 (4 elements per block).
//   uniform:       8 elements per block, one 16-bit half-word each, laid out so that a group of 16
//                  consecutive blocks (the lanes of one 512-bit vector) fills 128 consecutive elements
//                  without a transpose. Element e = 128 g + 16 s + l (group g, slot s in 0..7, lane l in
//                  0..15) reads block 16 g + l, word s / 2, half s % 2 (0: bits 0-15, 1: bits 16-31).
//                  Half the generator calls per element of the 32-bit form (the CPU kernels' cost is the
//                  generator's: see cpu/feedback_source_kernel.cpp).
//
// Conversions (computed in float, identically on host and device):
//   uniform [-1, 1):   u(h) = (int32(h) - 2^15) * 2^-15 for the 16-bit half-word h. Both operations are
//                      exact, so there is no rounding for a compiler to contract or reorder: bit-exact on
//                      every device. Values are multiples of 2^-15 (65536 levels).
//   normal N(0, 1):    Box-Muller on the word pairs (0, 1) and (2, 3) of the element's counter block:
//                      u1 = ((a >> 8) + 1) * 2^-24 in (0, 1], u2 = (b >> 8) * 2^-24 in [0, 1),
//                      r = sqrt(-2 log u1), element with e % 4 in {0, 2} gets r cos(2 pi u2), in {1, 3}
//                      r sin(2 pi u2). logf/cosf/sinf of the host libm and of CUDA may differ in the last
//                      ulp, so normal samples are bit-exact run to run on one device but only equal to a
//                      few ulp across devices.
//   bits:              the raw 32-bit word, for tests.
// A `scale` is applied as one float multiply (round to nearest, never contracted); the float result is
// then converted to the output dtype (exact for float64, round to nearest for float16/bfloat16).
#pragma once

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define BIOPLAUS_HD __host__ __device__ __forceinline__
#else
#define BIOPLAUS_HD inline
#endif

namespace bioplaus {
namespace philox {

constexpr uint32_t kMul0 = 0xD2511F53u;
constexpr uint32_t kMul1 = 0xCD9E8D57u;
constexpr uint32_t kWeyl0 = 0x9E3779B9u;
constexpr uint32_t kWeyl1 = 0xBB67AE85u;
constexpr int kRounds = 10;

struct Words {
  uint32_t w[4];
};

struct Key {
  uint32_t k0, k1;
};

BIOPLAUS_HD uint32_t mulhi32(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

// One Philox round (Random123 philox4x32round).
BIOPLAUS_HD Words philox_round(Words c, Key k) {
  const uint32_t hi0 = mulhi32(kMul0, c.w[0]), lo0 = kMul0 * c.w[0];
  const uint32_t hi1 = mulhi32(kMul1, c.w[2]), lo1 = kMul1 * c.w[2];
  return Words{{hi1 ^ c.w[1] ^ k.k0, lo1, hi0 ^ c.w[3] ^ k.k1, lo0}};
}

// Philox4x32-10: round with the key, then 9 times (bump key, round).
BIOPLAUS_HD Words philox4x32_10(Words ctr, Key key) {
  ctr = philox_round(ctr, key);
#pragma unroll
  for (int r = 1; r < kRounds; ++r) {
    key.k0 += kWeyl0;
    key.k1 += kWeyl1;
    ctr = philox_round(ctr, key);
  }
  return ctr;
}

// splitmix64 finaliser (Steele, Lea & Flood 2014): bijective, mix64(0) = 0.
BIOPLAUS_HD uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// key64 = seed ^ mix64(stream); see the file comment.
BIOPLAUS_HD Key make_key(uint64_t seed, uint64_t stream) {
  const uint64_t k = seed ^ mix64(stream);
  return Key{static_cast<uint32_t>(k), static_cast<uint32_t>(k >> 32)};
}

// The four words of counter block `block` at `step`.
BIOPLAUS_HD Words block_words(Key key, uint64_t block, uint64_t step) {
  const Words ctr{{static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32), static_cast<uint32_t>(step),
                   static_cast<uint32_t>(step >> 32)}};
  return philox4x32_10(ctr, key);
}

// Float multiply that no compiler contracts into an FMA (matters only where an add follows).
BIOPLAUS_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

constexpr float kTwoPow24Inv = 5.9604644775390625e-08f;  // 2^-24

constexpr float kTwoPow15Inv = 3.0517578125e-05f;  // 2^-15

// Uniform in [-1, 1) from a 16-bit half-word: exact (see the file comment).
BIOPLAUS_HD float uniform16(uint32_t h) {
  return static_cast<float>(static_cast<int32_t>(h) - (int32_t{1} << 15)) * kTwoPow15Inv;
}

// The uniform mapping's geometry (see the file comment): 16 blocks x 8 half-words per group.
constexpr int kGroupBlocks = 16;
constexpr int kGroupElems = 128;

// Where uniform element e lives: counter block, word and half.
struct UniformSlot {
  uint64_t block;
  int word, half;
};

BIOPLAUS_HD UniformSlot uniform_slot(uint64_t e) {
  const int s = static_cast<int>((e >> 4) & 7);
  return UniformSlot{(e >> 7) * kGroupBlocks + (e & 15), s >> 1, s & 1};
}

// The uniform sample of half `half` of word x.
BIOPLAUS_HD float uniform_half(uint32_t x, int half) { return uniform16(half ? x >> 16 : x & 0xFFFFu); }

// Box-Muller on the word pair (a, b); `second` selects the sine output.
BIOPLAUS_HD float normal(uint32_t a, uint32_t b, bool second) {
  const float u1 = static_cast<float>((a >> 8) + 1u) * kTwoPow24Inv;  // (0, 1]
  const float u2 = static_cast<float>(b >> 8) * kTwoPow24Inv;         // [0, 1)
  const float r = sqrtf(mul_rn(-2.0f, logf(u1)));
  const float t = mul_rn(6.28318530717958647692f, u2);
  return mul_rn(r, second ? sinf(t) : cosf(t));
}

enum class Distribution : int { kUniform = 0, kNormal = 1, kBits = 2 };

// The normal sample of word j (= e % 4) of a counter block.
BIOPLAUS_HD float normal_sample(const Words& v, int j) {
  const int p = j & 2;  // Box-Muller pair (0, 1) or (2, 3)
  return normal(v.w[p], v.w[p + 1], (j & 1) != 0);
}

// Element e's float sample (uniform or normal), before the scale; one generator call.
BIOPLAUS_HD float element_sample(Key key, uint64_t step, uint64_t e, Distribution d) {
  if (d == Distribution::kUniform) {
    const UniformSlot u = uniform_slot(e);
    return uniform_half(block_words(key, u.block, step).w[u.word], u.half);
  }
  return normal_sample(block_words(key, e >> 2, step), static_cast<int>(e & 3));
}

}  // namespace philox
}  // namespace bioplaus
