// Counter-based random tensors: the operator contract of philox_fill (generator, key derivation, element
// mapping and conversions: common/philox.h).
//
//   like [any shape]   philox_fill(like, seed, stream, step, distribution, scale) has like's shape, dtype and
//                      device, contiguous; element e (row-major flat index) = scale * sample e of the
//                      distribution ("uniform" [-1, 1), "normal" N(0, 1); "bits": the raw 32-bit words, int64)
#pragma once

#include "common/philox.h"

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

namespace bioplaus {

// Validates philox_fill's arguments (messages name the argument, expected and received value) and returns
// the parsed distribution.
philox::Distribution check_philox_fill_inputs(const at::Tensor& like, int64_t seed, int64_t stream, int64_t step,
                                              c10::string_view distribution);

}  // namespace bioplaus
