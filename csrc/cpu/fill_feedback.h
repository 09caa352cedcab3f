// Bounded runs of the feedback matrix B (and of raw generator words) on the CPU (semantics in common/feedback.h), for kernels that
// transform or generate B tile by tile into a per-thread buffer instead of materialising it.
#pragma once

#include "common/feedback.h"

#include <cstdint>

namespace bioplaus {

// dst[k] = B[e0 + k] for k < count, where w[k] = weight[e0 + k] (w may be null in "random" mode, whose
// B never reads weight). Deterministic and independent of how a range is split into calls.
template <typename scalar_t>
void fill_feedback(const FeedbackSpec& f, const scalar_t* w, int64_t e0, int64_t count, scalar_t* dst);

// The raw Philox words of the n counter blocks b0 .. b0 + n - 1 at `step`: out[4 (b - b0) + j] = word j of
// philox::block_words(key, b, step) (vectorised; for kernels that convert words themselves).
void philox_words(philox::Key key, uint64_t step, uint64_t b0, int64_t n, uint32_t* out);

// The normal samples of the n counter blocks b0 .. b0 + n - 1 at `step`, times `scale`: out[4 (b - b0) + j]
// = scale * (the Box-Muller sample of element 4b + j, common/philox.h), with vectorised log/sin/cos (Sleef,
// through libtorch) where available. Every CPU user of normal samples (philox_fill, the feedback kernels,
// the TP noise) goes through this function, so they agree bit for bit.
void normal_samples(philox::Key key, uint64_t step, uint64_t b0, int64_t n, float scale, float* out);

// Whether the CPU kernels may take their AVX-512 paths (the CPU has AVX-512F and ATEN_CPU_CAPABILITY, if
// set, allows it). Kernels with an AVX-512-only path choose with this once per call, for all modes alike.
bool cpu_allows_avx512();

}  // namespace bioplaus
