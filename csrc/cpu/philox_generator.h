// The CPU generator of the library's counter-based random numbers (definition, key derivation and element
// mapping: common/philox.h), vectorised where the CPU allows; every function is deterministic and independent
// of how a range is split into calls. Implemented in cpu/philox_generator.cpp.
#pragma once

#include "common/philox.h"

#include <cstdint>

namespace bioplaus {

// The uniform values of the n whole groups g0 .. g0 + n - 1 (philox::kGroupElems elements each) into
// out[0 .. kGroupElems n), times `scale` (mul_rn(scale, sample), as philox::element_sample gives them);
// with `w` (float "random_sign"), |value| * sign(w[k]) instead.
void uniform_groups(philox::Key key, uint64_t step, uint64_t g0, int64_t n, float scale, const float* w,
                    float* out);

// The raw Philox words of the n counter blocks b0 .. b0 + n - 1 at `step`: out[4 (b - b0) + j] = word j of
// philox::block_words(key, b, step) (for kernels that convert words themselves).
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
