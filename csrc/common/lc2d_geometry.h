// The geometry of a locally connected 2D layer (layouts and index maps in lc2d.h), resolved and validated
// once for every op that takes one: the lc2d ops and the transposed LC inverses of target propagation
// (difference_target_lc2d, inverse_loss_lc2d). Host code only.
#pragma once

#include "common/checks.h"

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <cstdint>

namespace bioplaus {

// Every size an LC kernel needs.
struct Lc2dGeometry {
  int64_t N, C_in, H, W;
  int64_t C_out, H_out, W_out;
  int64_t kH, kW;
  int64_t sH, sW;
  int64_t pT, pL;  // bottom/right padding only affect H_out/W_out, which are validated
  int64_t dH, dW;

  int64_t positions() const { return H_out * W_out; }
  int64_t patch() const { return C_in * kH * kW; }  // K
};

// Output extent of one spatial axis; resolve_lc2d_geometry guarantees it is >= 1.
inline int64_t lc2d_out_size(int64_t in, int64_t k, int64_t stride, int64_t pad_lo, int64_t pad_hi,
                             int64_t dilation) {
  return (in + pad_lo + pad_hi - dilation * (k - 1) - 1) / stride + 1;
}

// stride (sH, sW) >= 1, padding (top, bottom, left, right) >= 0, dilation (dH, dW) >= 1.
inline void check_lc2d_hyper(const char* op, c10::IntArrayRef stride, c10::IntArrayRef padding,
                             c10::IntArrayRef dilation) {
  check_int_list(op, "stride", stride, 2, 1);
  check_int_list(op, "padding", padding, 4, 0);
  check_int_list(op, "dilation", dilation, 2, 1);
}

// A weight of the LC layout [H_out, W_out, C_out, C_in, kH, kW], positive sizes, a kernel dtype.
inline void check_lc2d_weight(const char* op, const char* name, const at::Tensor& weight) {
  check_dim(op, name, weight, 6, "[H_out, W_out, C_out, C_in, kH, kW]");
  for (int64_t d = 0; d < 6; ++d) {
    BIOPLAUS_CHECK(weight.size(d) >= 1, op, ": ", name, " sizes must be positive, got ", shape_str(weight.sizes()));
  }
  check_float_dtype(op, name, weight);
}

// The geometry of an input H x W under a kH x kW kernel with (checked) stride, padding and dilation; the
// dilated kernel must fit the padded input.
inline Lc2dGeometry resolve_lc2d_geometry(const char* op, int64_t N, int64_t C_in, int64_t C_out, int64_t H,
                                          int64_t W, int64_t kH, int64_t kW, c10::IntArrayRef stride,
                                          c10::IntArrayRef padding, c10::IntArrayRef dilation) {
  check_lc2d_hyper(op, stride, padding, dilation);
  BIOPLAUS_CHECK(H >= 1 && W >= 1, op, ": input spatial size must be positive, got ", H, "x", W);
  BIOPLAUS_CHECK(kH >= 1 && kW >= 1, op, ": kernel size must be positive, got ", kH, "x", kW);
  Lc2dGeometry g{};
  g.N = N;
  g.C_in = C_in;
  g.C_out = C_out;
  g.H = H;
  g.W = W;
  g.kH = kH;
  g.kW = kW;
  g.sH = stride[0];
  g.sW = stride[1];
  g.pT = padding[0];
  g.pL = padding[2];
  g.dH = dilation[0];
  g.dW = dilation[1];
  const int64_t padded_h = H + padding[0] + padding[1];
  const int64_t padded_w = W + padding[2] + padding[3];
  const int64_t span_h = g.dH * (kH - 1) + 1;
  const int64_t span_w = g.dW * (kW - 1) + 1;
  BIOPLAUS_CHECK(span_h <= padded_h && span_w <= padded_w, op, ": the kernel spans ", span_h, "x", span_w,
                 " (size ", kH, "x", kW, ", dilation ", g.dH, "x", g.dW, ") which is larger than the padded input ",
                 padded_h, "x", padded_w);
  g.H_out = lc2d_out_size(H, kH, g.sH, padding[0], padding[1], g.dH);
  g.W_out = lc2d_out_size(W, kW, g.sW, padding[2], padding[3], g.dW);
  return g;
}

// `who` (a weight or an output-side tensor) has the H_out x W_out grid the geometry gives.
inline void check_lc2d_grid(const char* op, const Lc2dGeometry& g, int64_t H_out, int64_t W_out, const char* who) {
  BIOPLAUS_CHECK(g.H_out == H_out && g.W_out == W_out, op, ": input ", g.H, "x", g.W, " with kernel ", g.kH, "x",
                 g.kW, ", stride ", g.sH, "x", g.sW, " and dilation ", g.dH, "x", g.dW, " gives a ", g.H_out, "x",
                 g.W_out, " output, but ", who, " has ", H_out, "x", W_out, " output positions");
}

}  // namespace bioplaus
