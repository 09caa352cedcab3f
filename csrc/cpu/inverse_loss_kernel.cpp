// Inverse loss on the CPU (contract in inverse_loss.h).
//
// x_hat = act(y V^T + c) (Linear: at::addmm, the BLAS torch was built with; LC: the transposed LC through
// the LC input-gradient kernel, then the bias), the activation in place with ATen's vectorised kernels.
// Then, over the flat index i of h (numel = N * E):
//   pass 1 (noise-preserving only): residual = eps (write_noise below);
//   pass 2, by sample row n: residual[i] = x_hat[i] - (h[i] + eps[i]) (or - h[i]),
//           row_sq[n] = sum of residual^2 over the row (accumulated in double);
// and loss = (sum of row_sq in row order) / N, independent of the thread count.
// inverse_loss_noisy_input: h + eps with the same write_noise.
#include "inverse_loss.h"

#include "cpu/feedback_source.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define BIOPLAUS_X86_SIMD 1
#endif

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

namespace bioplaus {
namespace {

using Result = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// Box-Muller on `count` (a multiple of 16) pairs, in float32 with the roundings of common/philox.h:
//   r = sqrt(log(u1[k]) * -2),  t = u2[k] * 2 pi,  eps[2k] = sigma * (r cos t),  eps[2k + 1] = sigma * (r sin t).
// log/sin/cos are Sleef's 1-ulp (u10) vector functions, which libtorch_cpu links (ATen's Vectorized<float> is
// built on them) and exports. They are declared weak, so a libtorch without them still loads and takes the
// libm loop; the two may differ in the last ulp, as CPU and CUDA already do, but every CPU user of the
// noise calls the one function picked at load time, so they agree bit for bit.
constexpr float kTwoPi = 6.28318530717958647692f;
using BoxMuller = void (*)(const float* u1, const float* u2, int64_t count, float sigma, float* eps);

#if defined(BIOPLAUS_X86_SIMD)
}  // namespace
}  // namespace bioplaus

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

namespace bioplaus {
namespace {

// GCC's AVX-512 headers initialise their "undefined" vectors from themselves, which -Wmaybe-uninitialized
// reports at every inlined intrinsic; the vectors are never read.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
__attribute__((target("avx512f"))) void box_muller_avx512(const float* u1, const float* u2, int64_t count,
                                                          float sigma, float* eps) {
  // (cos k, sin k) interleaved: lanes 0..7 of cos/sin into the first vector, 8..15 into the second
  const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  const __m512 sg = _mm512_set1_ps(sigma);
  for (int64_t k = 0; k < count; k += 16) {
    const __m512 log_u1 = Sleef_logf16_u10avx512f(_mm512_loadu_ps(u1 + k));
    const __m512 r = _mm512_sqrt_ps(_mm512_mul_ps(log_u1, _mm512_set1_ps(-2.0f)));
    const __m512 t = _mm512_mul_ps(_mm512_loadu_ps(u2 + k), _mm512_set1_ps(kTwoPi));
    const __m512 c = _mm512_mul_ps(sg, _mm512_mul_ps(r, Sleef_cosf16_u10avx512f(t)));
    const __m512 s = _mm512_mul_ps(sg, _mm512_mul_ps(r, Sleef_sinf16_u10avx512f(t)));
    _mm512_storeu_ps(eps + 2 * k, _mm512_permutex2var_ps(c, lo, s));
    _mm512_storeu_ps(eps + 2 * k + 16, _mm512_permutex2var_ps(c, hi, s));
  }
}

__attribute__((target("avx2"))) void box_muller_avx2(const float* u1, const float* u2, int64_t count, float sigma,
                                                     float* eps) {
  const __m256 sg = _mm256_set1_ps(sigma);
  for (int64_t k = 0; k < count; k += 8) {
    const __m256 log_u1 = Sleef_logf8_u10avx2(_mm256_loadu_ps(u1 + k));
    const __m256 r = _mm256_sqrt_ps(_mm256_mul_ps(log_u1, _mm256_set1_ps(-2.0f)));
    const __m256 t = _mm256_mul_ps(_mm256_loadu_ps(u2 + k), _mm256_set1_ps(kTwoPi));
    const __m256 c = _mm256_mul_ps(sg, _mm256_mul_ps(r, Sleef_cosf8_u10avx2(t)));
    const __m256 s = _mm256_mul_ps(sg, _mm256_mul_ps(r, Sleef_sinf8_u10avx2(t)));
    // unpacklo/hi interleave within 128-bit halves: (c0 s0 c1 s1 | c4 s4 c5 s5), (c2 s2 c3 s3 | c6 s6 c7 s7)
    const __m256 a = _mm256_unpacklo_ps(c, s), b = _mm256_unpackhi_ps(c, s);
    _mm256_storeu_ps(eps + 2 * k, _mm256_permute2f128_ps(a, b, 0x20));
    _mm256_storeu_ps(eps + 2 * k + 8, _mm256_permute2f128_ps(a, b, 0x31));
  }
}
#pragma GCC diagnostic pop
#endif  // BIOPLAUS_X86_SIMD

void box_muller_libm(const float* u1, const float* u2, int64_t count, float sigma, float* eps) {
  for (int64_t k = 0; k < count; ++k) {
    const float r = std::sqrt(std::log(u1[k]) * -2.0f);
    const float t = u2[k] * kTwoPi;
    eps[2 * k] = sigma * (r * std::cos(t));
    eps[2 * k + 1] = sigma * (r * std::sin(t));
  }
}

BoxMuller pick_box_muller() {
#if defined(BIOPLAUS_X86_SIMD)
  if (__builtin_cpu_supports("avx512f") && Sleef_logf16_u10avx512f && Sleef_cosf16_u10avx512f &&
      Sleef_sinf16_u10avx512f) {
    return box_muller_avx512;
  }
  if (__builtin_cpu_supports("avx2") && Sleef_logf8_u10avx2 && Sleef_cosf8_u10avx2 && Sleef_sinf8_u10avx2) {
    return box_muller_avx2;
  }
#endif
  return box_muller_libm;
}

// dst[i] = base[i] + scalar_t(eps[i]) (or scalar_t(eps[i]) when base is null) for i < numel: the float32
// noise, rounded to scalar_t, then added in scalar_t, exactly as h + philox_fill(...) forms it.
// Element 4b + 2p + j of Philox block b is pair k = 2b + p (words 2p, 2p + 1): r cos t for j = 0, r sin t for
// j = 1. One pass: blocks are split across threads, and each thread works through kChunk blocks at a time
// in L1-sized buffers (uniforms, Box-Muller, store), so there are no full-size temporaries.
template <typename scalar_t>
void write_noise(const InverseLossArgs& a, int64_t numel, const scalar_t* base, scalar_t* dst) {
  static const BoxMuller box_muller = pick_box_muller();
  constexpr int64_t kChunk = 512;  // blocks: 2048 samples, 1024 pairs (a multiple of 16)
  const int64_t blocks = (numel + 3) / 4;
  // The words come from the AVX-512/AVX2 Philox behind the feedback kernels: fill_feedback in "random"
  // uniform mode with scale 1 gives u = ((x >> 7) - 2^24) * 2^-24 exactly for word x, so x >> 7 = u * 2^24 + 2^24
  // and x >> 8 = (x >> 7) >> 1 are recovered exactly: the same words as philox::block_words, about 5x faster.
  const FeedbackSpec words{FeedbackMode::kRandom, philox::Distribution::kUniform, a.key, a.step, 1.0f, 1.0};
  at::parallel_for(0, blocks, 4096, [&](int64_t b_begin, int64_t b_end) {
    std::vector<float> buf(8 * kChunk);
    float* u = buf.data();       // 4 * kChunk uniforms, then the 4 * kChunk samples eps
    float* u1 = u + 4 * kChunk;  // 2 * kChunk pairs
    float* u2 = u1 + 2 * kChunk;
    for (int64_t b0 = b_begin; b0 < b_end; b0 += kChunk) {
      const int64_t nb = std::min(kChunk, b_end - b0);
      fill_feedback<float>(words, nullptr, 4 * b0, 4 * nb, u);
      for (int64_t k = 0; k < 2 * nb; ++k) {
        const int32_t a7 = static_cast<int32_t>(u[2 * k] * 16777216.0f) + (int32_t{1} << 24);  // w >> 7
        const int32_t b7 = static_cast<int32_t>(u[2 * k + 1] * 16777216.0f) + (int32_t{1} << 24);
        u1[k] = static_cast<float>((a7 >> 1) + 1) * philox::kTwoPow24Inv;
        u2[k] = static_cast<float>(b7 >> 1) * philox::kTwoPow24Inv;
      }
      const int64_t padded = (2 * nb + 15) / 16 * 16;  // pad with (1, 0): log 1 = 0, harmless
      std::fill(u1 + 2 * nb, u1 + padded, 1.0f);
      std::fill(u2 + 2 * nb, u2 + padded, 0.0f);
      box_muller(u1, u2, padded, a.sigma, u);
      const int64_t e0 = 4 * b0, count = std::min(4 * nb, numel - e0);
      scalar_t* out = dst + e0;
      if (base) {
        const scalar_t* in = base + e0;
        for (int64_t e = 0; e < count; ++e) out[e] = in[e] + static_cast<scalar_t>(u[e]);
      } else {
        for (int64_t e = 0; e < count; ++e) out[e] = static_cast<scalar_t>(u[e]);
      }
    }
  });
}

// x_hat: [N, E] contiguous, activated; h: N samples of E elements.
Result epilogue(const at::Tensor& x_hat, const at::Tensor& h, const InverseLossArgs& a) {
  const at::Tensor hc = h.contiguous();
  at::Tensor residual = at::empty(hc.sizes(), hc.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor loss = at::zeros({}, hc.options());
  const int64_t N = hc.size(0), E = N ? hc.numel() / N : 0;
  if (hc.numel() == 0) return {loss, x_hat.view(hc.sizes()), residual};
  std::vector<double> row_sq(N);
  AT_DISPATCH_FLOATING_TYPES(hc.scalar_type(), "inverse_loss_cpu", [&] {
    const scalar_t* xp = x_hat.const_data_ptr<scalar_t>();
    const scalar_t* hp = hc.const_data_ptr<scalar_t>();
    scalar_t* rp = residual.mutable_data_ptr<scalar_t>();
    if (a.preserve_noise) write_noise<scalar_t>(a, hc.numel(), nullptr, rp);
    at::parallel_for(0, N, std::max<int64_t>(1, 32768 / E), [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) {
        const scalar_t* x = xp + n * E;
        const scalar_t* hrow = hp + n * E;
        scalar_t* r = rp + n * E;
        double sq = 0;
        for (int64_t e = 0; e < E; ++e) {
          // The target is formed in scalar_t exactly as the caller's h + philox_fill(...) is.
          const scalar_t target = a.preserve_noise ? static_cast<scalar_t>(hrow[e] + r[e]) : hrow[e];
          r[e] = x[e] - target;
          sq += static_cast<double>(r[e]) * static_cast<double>(r[e]);
        }
        row_sq[n] = sq;
      }
    });
    double total = 0;
    for (int64_t n = 0; n < N; ++n) total += row_sq[n];
    loss.fill_(static_cast<scalar_t>(total / static_cast<double>(N)));
  });
  return {loss, x_hat.view(hc.sizes()), residual};
}

Result inverse_loss_cpu(const at::Tensor& y, const at::Tensor& h, const at::Tensor& weight, const at::Tensor& bias,
                        c10::string_view activation, double sigma, int64_t seed, int64_t stream, int64_t step,
                        bool preserve_noise) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const InverseLossArgs a =
      check_inverse_loss_inputs(y, h, weight, bias, activation, sigma, seed, stream, step, preserve_noise);
  at::Tensor x_hat = at::addmm(bias, y, weight.t());
  tp::activate_(x_hat, a.act);
  return epilogue(x_hat, h, a);
}

Result inverse_loss_lc2d_cpu(const at::Tensor& y, const at::Tensor& h, const at::Tensor& weight,
                             const at::Tensor& bias, c10::IntArrayRef stride, c10::IntArrayRef padding,
                             c10::IntArrayRef dilation, c10::string_view activation, double sigma, int64_t seed,
                             int64_t stream, int64_t step, bool preserve_noise) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const InverseLossArgs a = check_inverse_loss_lc2d_inputs(y, h, weight, bias, stride, padding, dilation, activation,
                                                           sigma, seed, stream, step, preserve_noise);
  if (h.size(0) == 0) return epilogue(at::empty(h.sizes(), h.options()), h, a);
  const at::Tensor x_hat = tp::lc2d_inverse(y, weight, bias, {h.size(2), h.size(3)}, stride, padding, dilation, a.act);
  return epilogue(x_hat, h, a);
}

at::Tensor inverse_loss_noisy_input_cpu(const at::Tensor& h, double sigma, int64_t seed, int64_t stream, int64_t step) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const InverseLossArgs a = check_inverse_loss_noisy_input_inputs(h, sigma, seed, stream, step);
  const at::Tensor hc = h.contiguous();
  at::Tensor out = at::empty(hc.sizes(), hc.options().memory_format(at::MemoryFormat::Contiguous));
  AT_DISPATCH_FLOATING_TYPES(hc.scalar_type(), "inverse_loss_noisy_input_cpu", [&] {
    write_noise<scalar_t>(a, hc.numel(), hc.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(bioplaus, CPU, m) {
  m.impl("inverse_loss", inverse_loss_cpu);
  m.impl("inverse_loss_lc2d", inverse_loss_lc2d_cpu);
  m.impl("inverse_loss_noisy_input", inverse_loss_noisy_input_cpu);
}

}  // namespace bioplaus
