// Inverse loss of target propagation (papers.md section 1), noise drawn inside the kernel:
//
//   x_hat    = g(y) = act(V y + c)                 y = f(h + eps), computed by the caller with the same eps
//   target   = h + eps   (preserve_noise = true:  DTP's noise-preserving loss || g(f(h~)) - h~ ||^2)
//            = h         (preserve_noise = false: SDTP's de-noising loss   || g(f(h + eps)) - h ||^2)
//   residual = x_hat - target
//   loss     = (1 / N) sum_{n, e} residual[n, e]^2      (sum over a sample's units, mean over the batch)
//
// eps[e] for element e (row-major flat index in h's shape) is the float32 Philox normal sample times
// float32(sigma), keyed by (seed, stream) at `step`: philox_fill(h, seed, stream, step, "normal", sigma)'s
// generator and conversions (common/philox.h); the CPU kernels evaluate log/cos/sin vectorised, so values
// may differ from philox_fill's in the last ulp (as CPU and CUDA already do). The caller forms h + eps with
// inverse_loss_noisy_input, which draws the same eps bit for bit on the same device.
//
//   inverse_loss        Linear inverse: y [N, D_out], h [N, D_in], weight V [D_in, D_out], bias c [D_in].
//   inverse_loss_lc2d   transposed LC inverse (see difference_target.h): y [N, C_out, H_out, W_out],
//                       h [N, C_in, H, W], weight V [H_out, W_out, C_out, C_in, kH, kW], bias c [C_in, H, W].
// Returns (loss [] , x_hat [h's shape], residual [h's shape]); x_hat and residual are what the backward
// (registered in bioplaus_kernels/ops/inverse_loss.py) needs: d loss / d pre = (2/N) residual act'(x_hat).
//
//   inverse_loss_noisy_input(h, sigma, seed, stream, step) = h + eps   (any shape, a new contiguous tensor)
// the caller's noisy input, with the same eps as the inverse_loss kernels of its device.
#pragma once

#include "common/tp.h"

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/string_view.h>

namespace bioplaus {

struct InverseLossArgs {
  tp::Activation act;
  philox::Key key;
  uint64_t step;
  float sigma;
  bool preserve_noise;
};

InverseLossArgs check_inverse_loss_inputs(const at::Tensor& y, const at::Tensor& h, const at::Tensor& weight,
                                          const at::Tensor& bias, c10::string_view activation, double sigma,
                                          int64_t seed, int64_t stream, int64_t step, bool preserve_noise);

InverseLossArgs check_inverse_loss_lc2d_inputs(const at::Tensor& y, const at::Tensor& h, const at::Tensor& weight,
                                               const at::Tensor& bias, c10::IntArrayRef stride,
                                               c10::IntArrayRef padding, c10::IntArrayRef dilation,
                                               c10::string_view activation, double sigma, int64_t seed,
                                               int64_t stream, int64_t step, bool preserve_noise);

InverseLossArgs check_inverse_loss_noisy_input_inputs(const at::Tensor& h, double sigma, int64_t seed,
                                                     int64_t stream, int64_t step);

}  // namespace bioplaus
