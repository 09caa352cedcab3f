// Inverse loss of target propagation (docs/papers.md section 1):
//
//   x_hat    = g(y) = act(V y + c)
//   residual = x_hat - target
//   loss     = (1 / N) sum_{n, e} residual[n, e]^2      (sum over a sample's units, mean over the batch)
//
// The caller picks the target: DTP's noise-preserving loss || g(f(h~)) - h~ ||^2 passes target = h~ = h + eps,
// SDTP's de-noising loss || g(f(h + eps)) - h ||^2 passes target = h; y = f(h~) in both.
//
//   inverse_loss        Linear inverse: y [N, D_out], target [N, D_in], weight V [D_in, D_out], bias c [D_in].
//   inverse_loss_lc2d   transposed LC inverse (see difference_target.h): y [N, C_out, H_out, W_out],
//                       target [N, C_in, H, W], weight V [H_out, W_out, C_out, C_in, kH, kW],
//                       bias c [C_in, H, W].
// Returns (loss [], x_hat [target's shape], residual [target's shape]); x_hat and residual are what the
// backward (registered in bioplaus_kernels/ops/inverse_loss.py) needs: d loss / d pre = (2/N) residual
// act'(x_hat).
//
//   inverse_loss_noisy_input(h, sigma, seed, stream, step) = h + eps   (any shape, a new contiguous tensor)
// the noisy input h~. eps[e] for element e (row-major flat index in h's shape) is the float32 Philox normal
// sample times float32(sigma), keyed by (seed, stream) at `step`: philox_fill(h, seed, stream, step, "normal",
// sigma)'s generator and conversions (common/philox.h), rounded to h's dtype and added in it. The CPU kernel
// evaluates log/cos/sin vectorised, so values may differ from philox_fill's in the last ulp (as CPU and CUDA
// already do).
#pragma once

#include "common/tp.h"

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/string_view.h>

namespace bioplaus {

// The noise of inverse_loss_noisy_input.
struct NoiseArgs {
  philox::Key key;
  uint64_t step;
  float sigma;
};

tp::Activation check_inverse_loss_inputs(const at::Tensor& y, const at::Tensor& target, const at::Tensor& weight,
                                         const at::Tensor& bias, c10::string_view activation);

tp::Activation check_inverse_loss_lc2d_inputs(const at::Tensor& y, const at::Tensor& target,
                                              const at::Tensor& weight, const at::Tensor& bias,
                                              c10::IntArrayRef stride, c10::IntArrayRef padding,
                                              c10::IntArrayRef dilation, c10::string_view activation);

NoiseArgs check_inverse_loss_noisy_input_inputs(const at::Tensor& h, double sigma, int64_t seed, int64_t stream,
                                                int64_t step);

}  // namespace bioplaus
