// Locally connected 2D on the CPU: float32 and float64, both cores, bounded memory.
//
// An LC layer is one small GEMM per output position p = i * W_out + j:
//   forward        Y_p[C_out x N]  = W_p[C_out x K] * X_p^T[K x N]
//   weight grad    dW_p[C_out x K] = dY_p^T[C_out x N] * X_p[N x K]
//   input grad     dX_p[N x K]     = dY_p[N x C_out] * B_p[C_out x K], then added into grad_x
// (B = weight, or the feedback matrix of the spec: its chunk of positions, the contiguous run of
// elements p0 * C_out * K .. (p0 + np) * C_out * K, is built in the thread's buffer before the GEMM, so the
// GEMMs see the same shapes in every mode and B is never materialised)
// where X_p is the patch matrix of p (row n, column k = (c * kH + r) * kW + s) and W_p = weight[i, j]
// viewed as [C_out, K]. The patches are gathered straight from x (any strides, implicit zero padding)
// into a per-thread buffer that holds a bounded chunk of positions, never the whole im2col; the GEMMs
// are batched over that chunk (at::bmm, i.e. the BLAS torch was built with); a chunk's buffers stay a
// small fraction of the layer's own tensors (plan_chunk). Work is split so that no
// two threads write the same element (positions for forward and weight grad, samples for input grad),
// so results need no atomics and are bit-identical run to run.
#include "lc2d.h"
#include "lc2d_selection.h"

#include "cpu/fill_feedback.h"

#include <ATen/Dispatch.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/baddbmm.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <chrono>
#include <string>
#include <utility>
#include <vector>

namespace bioplaus {
namespace {

// The feedback matrix's buffer in the transformed input-gradient modes (see backward_input_kernel).
constexpr int64_t kFeedbackBytes = int64_t{4} << 20;

// Positions per block in the layout transposes between [.., P] activations and [P, ..] GEMM buffers.
constexpr int64_t kTile = 16;

// A thread's GEMM buffers cover np positions x nb samples within a byte budget: 1/64 of the layer's
// x + weight + y bytes split over the threads, within [128 KiB, 4 MiB]. That bounds what the buffers add
// to a training step (which holds y, grad_x and grad_weight anyway) to about 1.5%.
struct Chunk {
  int64_t np, nb;
};

// Prefer the whole batch in each GEMM. When that leaves fewer than kTile positions per chunk, take kTile
// positions and split the batch instead, as long as each GEMM keeps at least kTile samples: the
// transposes between [.., P] activations and the buffers then move whole cache lines.
Chunk plan_chunk(const Lc2dGeometry& g, int64_t elem_size, int64_t samples) {
  const int64_t P = g.positions(), K = g.patch();
  const int64_t layer_bytes = elem_size * (g.N * g.C_in * g.H * g.W + P * g.C_out * K + g.N * g.C_out * P);
  const int64_t budget = std::clamp<int64_t>(layer_bytes / (64 * at::get_num_threads()), int64_t{128} << 10,
                                             int64_t{4} << 20);
  const int64_t items = std::max<int64_t>(budget / (elem_size * (K + g.C_out)), 1);  // (position, sample) pairs
  samples = std::max<int64_t>(samples, 1);
  int64_t np = std::clamp<int64_t>(items / samples, 1, P);
  if (np < kTile && items / kTile >= std::min(samples, kTile)) np = std::min(kTile, P);
  const int64_t nb_max = std::clamp<int64_t>(items / np, 1, samples);
  const int64_t n_chunks = (samples + nb_max - 1) / nb_max;  // equal sample chunks, not a full one and a sliver
  return {np, (samples + n_chunks - 1) / n_chunks};
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

// buf[q][o][n] = act[n0 + n][o][p0 + q] (act is [N, C, P] contiguous), in blocks of kTile positions so
// that both sides stay in cache. `n_inner` picks buf[q][n][o] instead (the [np, nb, C] GEMM operand).
template <typename scalar_t>
void gather_positions(const scalar_t* act, int64_t C, int64_t P, int64_t p0, int64_t np, int64_t n0, int64_t nb,
                      bool n_inner, scalar_t* buf) {
  for (int64_t qb = 0; qb < np; qb += kTile) {
    const int64_t qe = std::min(np, qb + kTile);
    for (int64_t n = 0; n < nb; ++n)
      for (int64_t o = 0; o < C; ++o) {
        const scalar_t* src = act + ((n0 + n) * C + o) * P + p0;
        for (int64_t q = qb; q < qe; ++q) buf[n_inner ? (q * nb + n) * C + o : (q * C + o) * nb + n] = src[q];
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
  const Chunk ch = plan_chunk(g, sizeof(scalar_t), N);
  // Threads own disjoint position ranges; each walks them in chunks of np positions x nb samples.
  at::parallel_for(0, P, 1, [&](int64_t begin, int64_t end) {
    const auto opts = x.options().memory_format(at::MemoryFormat::Contiguous);
    at::Tensor cols = at::empty({ch.np, ch.nb, K}, opts), prod = at::empty({ch.np, C_out, ch.nb}, opts);
    for (int64_t p0 = begin; p0 < end; p0 += ch.np) {
      const int64_t np = std::min(ch.np, end - p0);
      for (int64_t n0 = 0; n0 < N; n0 += ch.nb) {
        const int64_t nb = std::min(ch.nb, N - n0);
        at::Tensor cols_c = cols.view({-1}).narrow(0, 0, np * nb * K).view({np, nb, K});
        at::Tensor prod_c = prod.view({-1}).narrow(0, 0, np * C_out * nb).view({np, C_out, nb});
        gather_patches(xs, g, p0, np, n0, nb, cols_c.mutable_data_ptr<scalar_t>());
        at::bmm_out(prod_c, w3.narrow(0, p0, np), cols_c.transpose(1, 2));  // [np, C_out, nb]
        // y[n0 + n][o][p0 + q] = prod[q][o][n] + bias[o][p0 + q], in blocks of kTile positions.
        const scalar_t* pr = prod_c.const_data_ptr<scalar_t>();
        for (int64_t qb = 0; qb < np; qb += kTile) {
          const int64_t qe = std::min(np, qb + kTile);
          for (int64_t o = 0; o < C_out; ++o) {
            const scalar_t* bo = b ? b + o * P + p0 : nullptr;
            for (int64_t n = 0; n < nb; ++n) {
              scalar_t* dst = out + ((n0 + n) * C_out + o) * P + p0;
              for (int64_t q = qb; q < qe; ++q) dst[q] = pr[(q * C_out + o) * nb + n] + (bo ? bo[q] : scalar_t(0));
            }
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
  const Chunk ch = plan_chunk(g, sizeof(scalar_t), N);
  // Threads own disjoint position ranges; the batch is reduced chunk by chunk, in order, into the
  // thread's slice of grad_weight (first chunk written, later ones added).
  at::parallel_for(0, P, 1, [&](int64_t begin, int64_t end) {
    const auto opts = x.options().memory_format(at::MemoryFormat::Contiguous);
    at::Tensor cols = at::empty({ch.np, ch.nb, K}, opts), dyt = at::empty({ch.np, C_out, ch.nb}, opts);
    std::vector<acc_t> bsum(ch.np * C_out);
    for (int64_t p0 = begin; p0 < end; p0 += ch.np) {
      const int64_t np = std::min(ch.np, end - p0);
      at::Tensor gw_c = gw3.narrow(0, p0, np);
      std::fill(bsum.begin(), bsum.end(), acc_t(0));
      for (int64_t n0 = 0; n0 < N; n0 += ch.nb) {
        const int64_t nb = std::min(ch.nb, N - n0);
        at::Tensor cols_c = cols.view({-1}).narrow(0, 0, np * nb * K).view({np, nb, K});
        at::Tensor dyt_c = dyt.view({-1}).narrow(0, 0, np * C_out * nb).view({np, C_out, nb});
        gather_patches(xs, g, p0, np, n0, nb, cols_c.mutable_data_ptr<scalar_t>());
        scalar_t* d = dyt_c.mutable_data_ptr<scalar_t>();  // d[q][o][n] = grad_y[n0 + n, o, p0 + q]
        gather_positions(dy, C_out, P, p0, np, n0, nb, /*n_inner=*/false, d);
        for (int64_t qo = 0; qo < np * C_out; ++qo)
          for (int64_t n = 0; n < nb; ++n) bsum[qo] += d[qo * nb + n];
        if (n0 == 0) {
          at::bmm_out(gw_c, dyt_c, cols_c);
        } else {
          gw_c.baddbmm_(dyt_c, cols_c);
        }
      }
      for (int64_t q = 0; q < np; ++q)
        for (int64_t o = 0; o < C_out; ++o) gbias[o * P + p0 + q] = static_cast<scalar_t>(bsum[q * C_out + o]);
    }
  });
}

// dX for the samples [begin, end) from the position chunk [p0, p0 + np), through b_c = B_p of the chunk's
// positions ([np, C_out, K]): GEMMs of nb samples at a time into the caller's buffers, then col2im into gx.
template <typename scalar_t>
void backward_input_chunk(const scalar_t* dy, const at::Tensor& b_c, scalar_t* out, const Lc2dGeometry& g,
                          const Chunk& ch, int64_t p0, int64_t np, int64_t begin, int64_t end, at::Tensor& dyq,
                          at::Tensor& dcols) {
  const int64_t P = g.positions(), K = g.patch(), C_out = g.C_out;
  for (int64_t n0 = begin; n0 < end; n0 += ch.nb) {
    const int64_t nb = std::min(ch.nb, end - n0);
    at::Tensor dyq_c = dyq.view({-1}).narrow(0, 0, np * nb * C_out).view({np, nb, C_out});
    at::Tensor dcols_c = dcols.view({-1}).narrow(0, 0, np * nb * K).view({np, nb, K});
    gather_positions(dy, C_out, P, p0, np, n0, nb, /*n_inner=*/true, dyq_c.mutable_data_ptr<scalar_t>());
    at::bmm_out(dcols_c, dyq_c, b_c);  // [np, nb, K]
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
}

// The samples are split into ranges of `per` (one per thread), all walking the positions in the same
// chunks with the same GEMM shapes, whatever the mode: "weight" multiplies by views of w, the other
// modes by B's chunk, built once per chunk by all threads together (fill_feedback, split by position)
// and then shared by every sample range. So no thread regenerates another's part of B, and a spec run
// equals a "weight" run on the materialised B bit for bit.
template <typename scalar_t>
void backward_input_kernel(const at::Tensor& grad_y, const at::Tensor& w, at::Tensor& gx, const Lc2dGeometry& g,
                           const FeedbackSpec& f) {
  const int64_t P = g.positions(), K = g.patch(), N = g.N, C_out = g.C_out;
  const scalar_t* dy = grad_y.const_data_ptr<scalar_t>();  // [N, C_out, P], contiguous
  scalar_t* out = gx.mutable_data_ptr<scalar_t>();         // [N, C_in, H, W], zero-initialised
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), N);
  const int64_t per = (N + threads - 1) / threads;
  const int64_t ranges = (N + per - 1) / per;  // range t owns samples [t * per, min(N, (t + 1) * per))
  const Chunk ch = plan_chunk(g, sizeof(scalar_t), per);
  const auto opts = grad_y.options().memory_format(at::MemoryFormat::Contiguous);
  const auto new_buffers = [&] {
    return std::make_pair(at::empty({ch.np, ch.nb, C_out}, opts), at::empty({ch.np, ch.nb, K}, opts));
  };
  if (f.mode == FeedbackMode::kWeight) {
    const at::Tensor w3 = w.view({P, C_out, K});
    at::parallel_for(0, ranges, 1, [&](int64_t t0, int64_t t1) {
      auto [dyq, dcols] = new_buffers();
      for (int64_t t = t0; t < t1; ++t) {
        for (int64_t p0 = 0; p0 < P; p0 += ch.np) {
          const int64_t np = std::min(ch.np, P - p0);
          backward_input_chunk(dy, w3.narrow(0, p0, np), out, g, ch, p0, np, t * per, std::min(N, (t + 1) * per),
                               dyq, dcols);
        }
      }
    });
    return;
  }
  // "random" never reads w (it may be an expanded zero-stride tensor).
  const scalar_t* wp = f.reads_weight() ? w.const_data_ptr<scalar_t>() : nullptr;
  std::vector<std::pair<at::Tensor, at::Tensor>> buffers;
  for (int64_t t = 0; t < ranges; ++t) buffers.push_back(new_buffers());
  // B is built for a group of whole GEMM chunks at a time (within kFeedbackBytes, at least one chunk), so
  // the threads meet twice per group rather than twice per chunk.
  const int64_t block = C_out * K;  // elements of one position's B_p
  const int64_t group = std::max<int64_t>(kFeedbackBytes / (block * int64_t(sizeof(scalar_t))) / ch.np, 1) * ch.np;
  at::Tensor bbuf = at::empty({std::min(group, P), C_out, K}, opts);
  scalar_t* bp = bbuf.mutable_data_ptr<scalar_t>();
  for (int64_t g0 = 0; g0 < P; g0 += group) {
    const int64_t ng = std::min(group, P - g0);
    at::parallel_for(0, ng, 1, [&](int64_t q0, int64_t q1) {
      const int64_t e0 = (g0 + q0) * block;
      fill_feedback<scalar_t>(f, wp ? wp + e0 : nullptr, e0, (q1 - q0) * block, bp + q0 * block);
    });
    at::parallel_for(0, ranges, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        for (int64_t p0 = g0; p0 < g0 + ng; p0 += ch.np) {
          const int64_t np = std::min(ch.np, P - p0);
          backward_input_chunk(dy, bbuf.narrow(0, p0 - g0, np), out, g, ch, p0, np, t * per,
                               std::min(N, (t + 1) * per), buffers[t].first, buffers[t].second);
        }
      }
    });
  }
}

// The CPU algorithms of every pass, in preference order (lc2d_selection.h), and the autotuner's timer.
const std::vector<std::string> kAlgorithms{"library"};

template <typename F>
double time_ms(F&& fn) {
  const auto t0 = std::chrono::steady_clock::now();
  fn();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
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
  const auto run = [&](const std::string&) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lc2d_forward_cpu", [&] { forward_kernel<scalar_t>(x, w, b, y, g); });
  };
  run(select_lc2d_algorithm(Lc2dPass::kForward, g, x.scalar_type(), x.device(), kAlgorithms,
                            [&](const std::string& a) { return time_ms([&] { run(a); }); }));
  return y;
}

at::Tensor lc2d_backward_input_cpu(const at::Tensor& grad_y, const at::Tensor& weight, c10::IntArrayRef input_size,
                                   c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                                   c10::string_view feedback, int64_t seed, int64_t stream, int64_t step,
                                   c10::string_view distribution, double scale) {
  // The GEMMs below go through the dispatcher: keep them out of autograd (inputs may require grad).
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const auto [g, f] = check_lc2d_backward_input_inputs(grad_y, weight, input_size, stride, padding, dilation,
                                                       feedback, seed, stream, step, distribution, scale);
  at::Tensor gx = at::zeros({g.N, g.C_in, g.H, g.W}, grad_y.options().memory_format(at::MemoryFormat::Contiguous));
  if (g.N == 0) return gx;
  const at::Tensor w = f.reads_weight() ? weight.contiguous() : weight;  // "random": shape only
  const at::Tensor dy = grad_y.contiguous();
  const auto run = [&](const std::string&) {
    gx.zero_();  // the kernel adds into it (an autotuned call runs it more than once)
    AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "lc2d_backward_input_cpu",
                               [&] { backward_input_kernel<scalar_t>(dy, w, gx, g, f); });
  };
  run(select_lc2d_algorithm(Lc2dPass::kBackwardInput, g, dy.scalar_type(), dy.device(), kAlgorithms,
                            [&](const std::string& a) { return time_ms([&] { run(a); }); }));
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
  const auto run = [&](const std::string&) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lc2d_backward_weight_cpu",
                               [&] { backward_weight_kernel<scalar_t>(dy, x, gw, gb, g); });
  };
  run(select_lc2d_algorithm(Lc2dPass::kBackwardWeight, g, x.scalar_type(), x.device(), kAlgorithms,
                            [&](const std::string& a) { return time_ms([&] { run(a); }); }));
  return {gw, gb};
}

}  // namespace

TORCH_LIBRARY_IMPL(bioplaus, CPU, m) {
  m.impl("lc2d_forward", lc2d_forward_cpu);
  m.impl("lc2d_backward_input", lc2d_backward_input_cpu);
  m.impl("lc2d_backward_weight", lc2d_backward_weight_cpu);
}

}  // namespace bioplaus
