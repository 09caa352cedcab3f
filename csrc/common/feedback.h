// The feedback source of every input-gradient kernel: which matrix B (of weight's shape) the output
// gradient is multiplied by, defined once for the CPU and CUDA kernels. Element e is the row-major flat
// index of B in weight's shape; R[e] is philox_fill(weight, seed, stream, step, distribution, scale)[e]
// (common/philox.h: computed in float as mul_rn(scale, sample), then converted to weight's dtype).
//   weight:       B[e] = weight[e]                   (backprop; a stored FA matrix; TP's inverse V)
//   random:       B[e] = R[e]                        (weight's values are never read)
//   sign:         B[e] = sign(weight[e]) * scale     (sign(0) = sign(NaN) = 0 as torch.sign; the product
//                                                     formed in the accumulation type: float for
//                                                     float32/16/bf16, double for float64, then
//                                                     rounded to weight's dtype, as torch.sign(w) * scale)
//   random_sign:  B[e] = |R[e]| * sign(weight[e])    (exact: a sign flip of R)
#pragma once

#include "common/philox.h"

namespace bioplaus {

enum class FeedbackMode : int { kWeight = 0, kRandom = 1, kSign = 2, kRandomSign = 3 };

// A parsed, validated feedback spec in the form the kernels use.
struct FeedbackSpec {
  FeedbackMode mode;
  philox::Distribution distribution;  // uniform or normal
  philox::Key key;                    // make_key(seed, stream)
  uint64_t step;
  float scale;       // applied to R in float (philox_fill's rule)
  double scale_f64;  // the sign product's factor when the accumulation type is double

  BIOPLAUS_HD bool reads_weight() const { return mode != FeedbackMode::kRandom; }
  BIOPLAUS_HD bool generates() const { return mode == FeedbackMode::kRandom || mode == FeedbackMode::kRandomSign; }
};

// torch.sign: +1, -1, or 0 for zeros and NaN. Branch-free: weight signs are random, so branches mispredict.
template <typename acc_t>
BIOPLAUS_HD acc_t sign_of(acc_t w) {
  return static_cast<acc_t>(w > acc_t(0)) - static_cast<acc_t>(w < acc_t(0));
}

// The factor of "sign" mode in the accumulation type (see the file comment).
template <typename acc_t>
BIOPLAUS_HD acc_t sign_scale(const FeedbackSpec& f) {
  return sizeof(acc_t) == 8 ? static_cast<acc_t>(f.scale_f64) : static_cast<acc_t>(f.scale);
}

// |r| * sign(w), exact; |-0| = +0 (a zero or negative scale makes R's zeros -0), as torch's abs and the
// AVX-512 kernel's sign-bit select give it.
template <typename acc_t>
BIOPLAUS_HD acc_t signed_magnitude(acc_t r, acc_t w) {
  return (r < acc_t(0) ? -r : r == acc_t(0) ? acc_t(0) : r) * sign_of(w);
}

// R[e] as float, before the conversion to weight's dtype.
BIOPLAUS_HD float random_feedback(const FeedbackSpec& f, uint64_t e) {
  return philox::mul_rn(f.scale, philox::element_sample(f.key, f.step, e, f.distribution));
}

// B[e] given R[e] already converted to scalar_t (`r`, unused by weight/sign) and weight[e] (`w`, unused
// by random), in scalar_t; acc_t is the accumulation type (at::opmath_type<scalar_t>).
template <typename scalar_t, typename acc_t>
BIOPLAUS_HD scalar_t combine_feedback(const FeedbackSpec& f, scalar_t r, scalar_t w) {
  switch (f.mode) {
    case FeedbackMode::kWeight:
      return w;
    case FeedbackMode::kRandom:
      return r;
    case FeedbackMode::kSign:
      return static_cast<scalar_t>(sign_of(static_cast<acc_t>(w)) * sign_scale<acc_t>(f));
    default:  // kRandomSign
      return static_cast<scalar_t>(signed_magnitude(static_cast<acc_t>(r), static_cast<acc_t>(w)));
  }
}

// B[e] from scratch (one Philox call per generated element; kernels that need many elements share each
// call over the elements of its counter block instead: see common/philox.h for the element mapping).
template <typename scalar_t, typename acc_t>
BIOPLAUS_HD scalar_t feedback_element(const FeedbackSpec& f, uint64_t e, scalar_t w) {
  const scalar_t r = f.generates() ? static_cast<scalar_t>(random_feedback(f, e)) : scalar_t(0);
  return combine_feedback<scalar_t, acc_t>(f, r, w);
}

}  // namespace bioplaus
