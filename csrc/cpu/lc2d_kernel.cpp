// Locally connected 2D on the CPU: float32 and float64, both cores, bounded memory.
//
// An LC layer is one small GEMM per output position p = i * W_out + j:
//   forward        Y_p[C_out x N]  = W_p[C_out x K] * X_p^T[K x N]
//   weight grad    dW_p[C_out x K] = dY_p^T[C_out x N] * X_p[N x K]
//   input grad     dX_p[N x K]     = dY_p[N x C_out] * W_p[C_out x K], then added into grad_x
// where X_p is the patch matrix of p (row n, column k = (c * kH + r) * kW + s) and W_p = weight[i, j]
// viewed as [C_out, K]. The patches are gathered straight from x (any strides, implicit zero padding)
// into a per-thread buffer that holds a bounded chunk of positions, never the whole im2col; the GEMMs
// are batched over that chunk (at::bmm, i.e. the BLAS torch was built with). Work is split so that no
// two threads write the same element (positions for forward and weight grad, samples for input grad),
// so results need no atomics and are bit-identical run to run.
#include "lc2d.h"

#include <ATen/Dispatch.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>

namespace bioplaus {
namespace {

// Positions per block in the layout transposes between [.., P] activations and [P, ..] GEMM buffers.
constexpr int64_t kTile = 16;

// Positions per chunk so that a per-thread buffer of `bytes_per_position` each stays near 4 MiB.
int64_t chunk_positions(int64_t bytes_per_position, int64_t positions) {
  constexpr int64_t kTargetBytes = int64_t{4} << 20;
  return std::clamp<int64_t>(kTargetBytes / std::max<int64_t>(bytes_per_position, 1), 1, positions);
}

// Strided view of x, so channels_last and sliced inputs need no copy.
template <typename scalar_t>
struct Strided4d {
  const scalar_t* data;
  int64_t s0, s1, s2, s3;
  explicit Strided4d(const at::Tensor& t)
      : data(t.const_data_ptr<scalar_t>()), s0(t.stride(0)), s1(t.stride(1)), s2(t.stride(2)), s3(t.stride(3)) {}
  scalar_t operator()(int64_t a, int64_t b, int64_t c, int64_t d) const {
    return data[a * s0 + b * s1 + c * s2 + d * s3];
  }
};

// cols[q][n][k] = x[n0 + n, c, ih, iw] for positions p0 .. p0 + np - 1 (zero where (ih, iw) is padding).
template <typename scalar_t>
void gather_patches(const Strided4d<scalar_t>& x, const Lc2dGeometry& g, int64_t p0, int64_t np, int64_t n0,
                    int64_t nb, scalar_t* cols) {
  const int64_t K = g.patch();
  for (int64_t q = 0; q < np; ++q) {
    const int64_t i = (p0 + q) / g.W_out, j = (p0 + q) % g.W_out;
    for (int64_t n = 0; n < nb; ++n) {
      scalar_t* dst = cols + (q * nb + n) * K;
      for (int64_t c = 0; c < g.C_in; ++c) {
        for (int64_t r = 0; r < g.kH; ++r) {
          const int64_t ih = i * g.sH - g.pT + r * g.dH;
          const bool row_ok = ih >= 0 && ih < g.H;
          for (int64_t s = 0; s < g.kW; ++s) {
            const int64_t iw = j * g.sW - g.pL + s * g.dW;
            *dst++ = (row_ok && iw >= 0 && iw < g.W) ? x(n0 + n, c, ih, iw) : scalar_t(0);
          }
        }
      }
    }
  }
}

template <typename scalar_t>
void forward_kernel(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias, at::Tensor& y,
                    const Lc2dGeometry& g) {
  const int64_t P = g.positions(), K = g.patch(), N = g.N, C_out = g.C_out;
  const Strided4d<scalar_t> xs(x);
  const at::Tensor w3 = w.view({P, C_out, K});
  const scalar_t* b = bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr;  // [C_out, P]
  scalar_t* out = y.mutable_data_ptr<scalar_t>();                                    // [N, C_out, P]
  const int64_t chunk = chunk_positions(int64_t(sizeof(scalar_t)) * N * (K + C_out), P);
  at::parallel_for(0, P, 1, [&](int64_t begin, int64_t end) {
    at::Tensor cols = at::empty({chunk, N, K}, x.options().memory_format(at::MemoryFormat::Contiguous));
    at::Tensor prod = at::empty({chunk, C_out, N}, cols.options());
    for (int64_t p0 = begin; p0 < end; p0 += chunk) {
      const int64_t np = std::min(chunk, end - p0);
      gather_patches(xs, g, p0, np, 0, N, cols.mutable_data_ptr<scalar_t>());
      at::Tensor prod_c = prod.narrow(0, 0, np);
      at::bmm_out(prod_c, w3.narrow(0, p0, np), cols.narrow(0, 0, np).transpose(1, 2));
      const scalar_t* pr = prod_c.const_data_ptr<scalar_t>();  // [np, C_out, N]
      // y[n][o][p0 + q] = prod[q][o][n] + bias[o][p0 + q], in blocks of kTile positions so that both
      // sides stay in cache (each is strided in one of the two indices).
      for (int64_t qb = 0; qb < np; qb += kTile) {
        const int64_t qe = std::min(np, qb + kTile);
        for (int64_t o = 0; o < C_out; ++o) {
          const scalar_t* bo = b ? b + o * P + p0 : nullptr;
          for (int64_t n = 0; n < N; ++n) {
            scalar_t* dst = out + (n * C_out + o) * P + p0;
            for (int64_t q = qb; q < qe; ++q) dst[q] = pr[(q * C_out + o) * N + n] + (bo ? bo[q] : scalar_t(0));
          }
        }
      }
    }
  });
}

template <typename scalar_t>
void backward_weight_kernel(const at::Tensor& grad_y, const at::Tensor& x, at::Tensor& gw, at::Tensor& gb,
                            const Lc2dGeometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t P = g.positions(), K = g.patch(), N = g.N, C_out = g.C_out;
  const Strided4d<scalar_t> xs(x);
  const scalar_t* dy = grad_y.const_data_ptr<scalar_t>();  // [N, C_out, P], contiguous
  const at::Tensor gw3 = gw.view({P, C_out, K});
  scalar_t* gbias = gb.mutable_data_ptr<scalar_t>();  // [C_out, P]
  const int64_t chunk = chunk_positions(int64_t(sizeof(scalar_t)) * N * (K + C_out), P);
  at::parallel_for(0, P, 1, [&](int64_t begin, int64_t end) {
    at::Tensor cols = at::empty({chunk, N, K}, x.options().memory_format(at::MemoryFormat::Contiguous));
    at::Tensor dyt = at::empty({chunk, C_out, N}, cols.options());
    for (int64_t p0 = begin; p0 < end; p0 += chunk) {
      const int64_t np = std::min(chunk, end - p0);
      gather_patches(xs, g, p0, np, 0, N, cols.mutable_data_ptr<scalar_t>());
      // dyt[q][o][n] = grad_y[n, o, p0 + q]; the bias gradient is its row sum, in order over n.
      scalar_t* d = dyt.mutable_data_ptr<scalar_t>();
      for (int64_t qb = 0; qb < np; qb += kTile) {
        const int64_t qe = std::min(np, qb + kTile);
        for (int64_t o = 0; o < C_out; ++o)
          for (int64_t n = 0; n < N; ++n) {
            const scalar_t* src = dy + (n * C_out + o) * P + p0;
            for (int64_t q = qb; q < qe; ++q) d[(q * C_out + o) * N + n] = src[q];
          }
      }
      for (int64_t q = 0; q < np; ++q)
        for (int64_t o = 0; o < C_out; ++o) {
          const scalar_t* row = d + (q * C_out + o) * N;
          acc_t sum = 0;
          for (int64_t n = 0; n < N; ++n) sum += row[n];
          gbias[o * P + p0 + q] = static_cast<scalar_t>(sum);
        }
      at::Tensor gw_c = gw3.narrow(0, p0, np);
      at::bmm_out(gw_c, dyt.narrow(0, 0, np), cols.narrow(0, 0, np));
    }
  });
}

template <typename scalar_t>
void backward_input_kernel(const at::Tensor& grad_y, const at::Tensor& w, at::Tensor& gx, const Lc2dGeometry& g) {
  const int64_t P = g.positions(), K = g.patch(), N = g.N, C_out = g.C_out;
  const scalar_t* dy = grad_y.const_data_ptr<scalar_t>();  // [N, C_out, P], contiguous
  const at::Tensor w3 = w.view({P, C_out, K});
  scalar_t* out = gx.mutable_data_ptr<scalar_t>();  // [N, C_in, H, W], zero-initialised
  // Samples are split across threads (each owns its grad_x rows); positions are walked in chunks.
  at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
    const int64_t nb = n1 - n0;
    const int64_t chunk = chunk_positions(int64_t(sizeof(scalar_t)) * nb * (K + C_out), P);
    at::Tensor dyq = at::empty({chunk, nb, C_out}, w.options());
    at::Tensor dcols = at::empty({chunk, nb, K}, w.options());
    for (int64_t p0 = 0; p0 < P; p0 += chunk) {
      const int64_t np = std::min(chunk, P - p0);
      scalar_t* d = dyq.mutable_data_ptr<scalar_t>();  // d[q][n][o] = grad_y[n0 + n, o, p0 + q]
      for (int64_t qb = 0; qb < np; qb += kTile) {
        const int64_t qe = std::min(np, qb + kTile);
        for (int64_t n = 0; n < nb; ++n)
          for (int64_t o = 0; o < C_out; ++o) {
            const scalar_t* src = dy + ((n0 + n) * C_out + o) * P + p0;
            for (int64_t q = qb; q < qe; ++q) d[(q * nb + n) * C_out + o] = src[q];
          }
      }
      at::Tensor dcols_c = dcols.narrow(0, 0, np);
      at::bmm_out(dcols_c, dyq.narrow(0, 0, np), w3.narrow(0, p0, np));
      // col2im for this chunk: grad_x[n, c, ih, iw] += dcols[q][n][(c, r, s)], skipping padding.
      const scalar_t* src = dcols_c.const_data_ptr<scalar_t>();
      for (int64_t q = 0; q < np; ++q) {
        const int64_t i = (p0 + q) / g.W_out, j = (p0 + q) % g.W_out;
        for (int64_t n = 0; n < nb; ++n) {
          const scalar_t* row = src + (q * nb + n) * K;
          scalar_t* xn = out + (n0 + n) * g.C_in * g.H * g.W;
          for (int64_t c = 0; c < g.C_in; ++c) {
            for (int64_t r = 0; r < g.kH; ++r) {
              const int64_t ih = i * g.sH - g.pT + r * g.dH;
              const scalar_t* rs = row + (c * g.kH + r) * g.kW;
              if (ih < 0 || ih >= g.H) continue;
              scalar_t* xrow = xn + (c * g.H + ih) * g.W;
              for (int64_t s = 0; s < g.kW; ++s) {
                const int64_t iw = j * g.sW - g.pL + s * g.dW;
                if (iw >= 0 && iw < g.W) xrow[iw] += rs[s];
              }
            }
          }
        }
      }
    }
  });
}

at::Tensor lc2d_forward_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation) {
  // The GEMMs below go through the dispatcher: keep them out of autograd (inputs may require grad).
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Lc2dGeometry g = check_lc2d_forward_inputs(x, weight, bias, stride, padding, dilation);
  at::Tensor y = at::empty({g.N, g.C_out, g.H_out, g.W_out}, x.options().memory_format(at::MemoryFormat::Contiguous));
  if (g.N == 0) return y;
  const at::Tensor w = weight.contiguous();
  const at::Tensor b = (bias.has_value() && bias->defined()) ? bias->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lc2d_forward_cpu", [&] { forward_kernel<scalar_t>(x, w, b, y, g); });
  return y;
}

at::Tensor lc2d_backward_input_cpu(const at::Tensor& grad_y, const at::Tensor& weight, c10::IntArrayRef input_size,
                                   c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation) {
  // The GEMMs below go through the dispatcher: keep them out of autograd (inputs may require grad).
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Lc2dGeometry g = check_lc2d_backward_input_inputs(grad_y, weight, input_size, stride, padding, dilation);
  at::Tensor gx = at::zeros({g.N, g.C_in, g.H, g.W}, weight.options().memory_format(at::MemoryFormat::Contiguous));
  if (g.N == 0) return gx;
  const at::Tensor w = weight.contiguous();
  const at::Tensor dy = grad_y.contiguous();
  AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "lc2d_backward_input_cpu",
                             [&] { backward_input_kernel<scalar_t>(dy, w, gx, g); });
  return gx;
}

std::tuple<at::Tensor, at::Tensor> lc2d_backward_weight_cpu(const at::Tensor& grad_y, const at::Tensor& x,
                                                            c10::IntArrayRef kernel_size, c10::IntArrayRef stride,
                                                            c10::IntArrayRef padding, c10::IntArrayRef dilation) {
  // The GEMMs below go through the dispatcher: keep them out of autograd (inputs may require grad).
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Lc2dGeometry g = check_lc2d_backward_weight_inputs(grad_y, x, kernel_size, stride, padding, dilation);
  const auto opts = x.options().memory_format(at::MemoryFormat::Contiguous);
  // An empty batch contributes nothing; otherwise every element is written exactly once below.
  const auto alloc = [&](c10::IntArrayRef size) { return g.N == 0 ? at::zeros(size, opts) : at::empty(size, opts); };
  at::Tensor gw = alloc({g.H_out, g.W_out, g.C_out, g.C_in, g.kH, g.kW});
  at::Tensor gb = alloc({g.C_out, g.H_out, g.W_out});
  if (g.N == 0) return {gw, gb};
  const at::Tensor dy = grad_y.contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lc2d_backward_weight_cpu",
                             [&] { backward_weight_kernel<scalar_t>(dy, x, gw, gb, g); });
  return {gw, gb};
}

}  // namespace

TORCH_LIBRARY_IMPL(bioplaus, CPU, m) {
  m.impl("lc2d_forward", lc2d_forward_cpu);
  m.impl("lc2d_backward_input", lc2d_backward_input_cpu);
  m.impl("lc2d_backward_weight", lc2d_backward_weight_cpu);
}

}  // namespace bioplaus
