// Locally connected 2D on the CPU: float32 and float64, both cores, bounded memory. Two algorithms per
// pass (lc2d_selection.h picks one per call): "library" (below: batched GEMMs through the BLAS) and
// "direct" (further down: register-blocked loops vectorised over positions, for the small patch lengths
// where a GEMM call costs more than its arithmetic). Both are deterministic: bit-identical run to run.
//
// "library": an LC layer is one small GEMM per output position p = i * W_out + j:
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
#include <cstring>
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

// ---------------------------------------------------------------------------------------------------------
// "direct": for small patch lengths K, where the GEMMs of "library" are mostly call overhead.
//
// Vectorised over positions: a tile is L = 64 / sizeof(scalar_t) consecutive flat positions (one cache
// line of every [.., P] row: y, grad_y, bias), and every value below is a vector of the tile's L lanes,
// lane q holding position p0 + q:
//   xt[n][k]    = x[n, c, ih, iw] of lane q's window (k = (c * kH + r) * kW + s; 0 where padding)
//   mt[o][k]    = B[p0 + q, o, k] (the weight, or the feedback matrix in backward_input), transposed
//                 once per tile and shared by all threads
//   forward     y[n, o, p0 + q]      = bias[o, p0 + q] + sum_k mt[o][k] * xt[n][k]
//   input grad  dcol[n][k]           = sum_o grad_y[n, o, p0 + q] * mt[o][k], then
//               grad_x[n, c, ih, iw] += dcol[n][k]              (col2im, through a per-tile scatter list)
//   weight grad grad_w[p0 + q, o, k] = sum_n grad_y[n, o, p0 + q] * xt[n][k]
//               grad_b[o, p0 + q]     = sum_n grad_y[n, o, p0 + q]
// Each is computed NR x MR output rows at a time (direct_block: the accumulators stay in registers) from
// operands packed so that each side of a block is one contiguous stream over the summed index. Every
// output is one sum over one index in increasing order, so its bits depend neither on the blocking nor on
// threads or chunks; and lanes never mix, so a tile may compute lanes it does not store. When P >= L the
// last tile starts at P - L (overlapping its neighbour) and stores only its new lanes: every load stays
// inside the tensors. When P < L the [.., P] operands are staged in zero-padded [.., L] rows.
// Work is split so that no two threads write one element: (tile, sample chunk) for the forward, (tile,
// channel chunk) for the weight grad, samples for the input grad.
// Memory: mt is built for a group of tiles at a time within kDirectMatrixBytes (for one tile's part of the
// taps where a whole tile's does not fit); the per-thread buffers are sized by the cache blocking
// (kDirectL2Bytes, kDirectL1Bytes). The loops are compiled for AVX-512, AVX2 + FMA and the baseline and
// picked at run time (direct_isa); a result's bits can depend on which (FMA or not), never on the run.

#if defined(__GNUC__)
#define BIOPLAUS_INLINE inline __attribute__((always_inline))
#else
#define BIOPLAUS_INLINE inline
#endif

// The tiles' lane vector: 64 bytes (one AVX-512 register; two AVX2 or four SSE registers).
template <typename T>
struct LaneVec;
template <>
struct LaneVec<float> {
  typedef float type __attribute__((vector_size(64)));
};
template <>
struct LaneVec<double> {
  typedef double type __attribute__((vector_size(64)));
};
template <typename T>
constexpr int64_t kLanes = 64 / sizeof(T);

template <typename T>
at::TensorOptions cpu_options() {
  return at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
}

// Bytes of the shared transposed matrices per group of tiles (at least one tile); of the operands a
// cache block keeps in the L2 cache (the matrix rows of a k block, packed panels) and in the L1 cache.
constexpr int64_t kDirectMatrixBytes = int64_t{4} << 20;
constexpr int64_t kDirectL2Bytes = int64_t{1} << 20;
constexpr int64_t kDirectL1Bytes = int64_t{24} << 10;

int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

// Tile t covers the positions start(t) .. start(t) + L - 1 and owns (stores) its lanes [lo(t), hi(t)).
struct LaneTiles {
  int64_t P, L, count;
  LaneTiles(int64_t P_, int64_t L_) : P(P_), L(L_), count((P_ + L_ - 1) / L_) {}
  int64_t start(int64_t t) const { return P >= L ? std::min(t * L, P - L) : 0; }
  int64_t lo(int64_t t) const { return t * L - start(t); }
  int64_t hi(int64_t t) const { return std::min(P - start(t), L); }
};

// off[k * L + q] = c * s1 + ih * s2 + iw * s3 for tap k = (c, r, s) of lane q's window (position p0 + q),
// or -1 where the tap is padding or the lane has no position.
inline void window_offsets(const Lc2dGeometry& g, int64_t p0, int64_t L, int64_t s1, int64_t s2, int64_t s3,
                           int64_t* off) {
  const int64_t P = g.positions(), K = g.patch();
  for (int64_t q = 0; q < L; ++q) {
    const int64_t p = p0 + q;
    const int64_t i = p / g.W_out, j = p % g.W_out;
    for (int64_t k = 0; k < K; ++k) {
      const int64_t c = k / (g.kH * g.kW), r = k / g.kW % g.kH, s = k % g.kW;
      const int64_t ih = i * g.sH - g.pT + r * g.dH, iw = j * g.sW - g.pL + s * g.dW;
      const bool ok = p < P && ih >= 0 && ih < g.H && iw >= 0 && iw < g.W;
      off[k * L + q] = ok ? c * s1 + ih * s2 + iw * s3 : -1;
    }
  }
}

// Packs the patches of `count` samples (x + i * xs0, i < count): dst[((k / R * rows + row + i) * R + k % R) * L
// + q] = xt[row + i][k][q] for k < K, off being the tile's window offsets (the rows past K are not written).
template <typename T>
BIOPLAUS_INLINE void gather_patches_packed(const T* x, int64_t xs0, int64_t count, const int64_t* off, int64_t K,
                                           int64_t R, int64_t rows, int64_t row, T* __restrict dst) {
  constexpr int64_t L = kLanes<T>;
  for (int64_t k = 0; k < K; ++k) {
    T* d = dst + ((k / R * rows + row) * R + k % R) * L;
    const int64_t* o = off + k * L;
    for (int64_t q = 0; q < L; ++q) {
      const int64_t oq = o[q];
      for (int64_t i = 0; i < count; ++i) d[i * R * L + q] = oq >= 0 ? x[i * xs0 + oq] : T(0);
    }
  }
}

// out(i, j) = init(i, j) + sum_{c < C} a(i, c) * b(j, c), lane by lane, for i < na <= NR and j < nb <= MR,
// where a(i, c) = a + i * sa + c * ca, b(j, c) = b + j * L + c * cb, init(i, j) = init + i * ia + j * ib
// (zero when init is null; it may be out itself) and out(i, j) = out + i * oa + j * ob are rows of L lanes;
// only the lanes [lo, hi) of out are stored. Rows past na / nb repeat the last one (computed, not stored),
// so one block shape serves the remainders. The c loop runs in increasing order for every lane.
template <typename T, int NR, int MR>
BIOPLAUS_INLINE void direct_block(int64_t C, const T* a, int64_t sa, int64_t ca, int64_t na, const T* b, int64_t cb, int64_t nb,
                                  const T* init, int64_t ia, int64_t ib, T* out, int64_t oa, int64_t ob, int64_t lo,
                                  int64_t hi) {
  using V = typename LaneVec<T>::type;
  constexpr int64_t L = kLanes<T>;
  int64_t ar[NR], br[MR];
#pragma GCC unroll 8
  for (int i = 0; i < NR; ++i) ar[i] = std::min<int64_t>(i, na - 1) * sa;
#pragma GCC unroll 8
  for (int j = 0; j < MR; ++j) br[j] = std::min<int64_t>(j, nb - 1) * L;
  V acc[NR][MR];
#pragma GCC unroll 8
  for (int i = 0; i < NR; ++i) {
#pragma GCC unroll 8
    for (int j = 0; j < MR; ++j) {
      if (init) {
        std::memcpy(&acc[i][j], init + std::min<int64_t>(i, na - 1) * ia + std::min<int64_t>(j, nb - 1) * ib,
                    sizeof(V));
      } else {
        acc[i][j] = V{};
      }
    }
  }
  for (int64_t c = 0; c < C; ++c, a += ca, b += cb) {
    V av[NR], bv[MR];
#pragma GCC unroll 8
    for (int i = 0; i < NR; ++i) std::memcpy(&av[i], a + ar[i], sizeof(V));
#pragma GCC unroll 8
    for (int j = 0; j < MR; ++j) std::memcpy(&bv[j], b + br[j], sizeof(V));
#pragma GCC unroll 8
    for (int i = 0; i < NR; ++i) {
#pragma GCC unroll 8
      for (int j = 0; j < MR; ++j) acc[i][j] += av[i] * bv[j];
    }
  }
  const bool full = lo == 0 && hi == L;
#pragma GCC unroll 8
  for (int i = 0; i < NR; ++i) {
#pragma GCC unroll 8
    for (int j = 0; j < MR; ++j) {
      if (i >= na || j >= nb) continue;
      T* dst = out + i * oa + j * ob;
      if (full) {
        std::memcpy(dst, &acc[i][j], sizeof(V));
      } else {
        alignas(64) T lanes[L];
        std::memcpy(lanes, &acc[i][j], sizeof(V));
        for (int64_t q = lo; q < hi; ++q) dst[q] = lanes[q];
      }
    }
  }
}

// Everything a direct pass's threads read: the geometry, the tiles, the operands ([.., P] ones as rows of
// ld elements, lanes at row0 = p0, or at 0 when staged) and the cache blocking.
template <typename T>
struct DirectArgs {
  Lc2dGeometry g;
  LaneTiles tiles{1, 1};
  bool staged = false;    // P < L: y / grad_y / bias are read and written as zero-padded [rows][L] copies
  int64_t K = 0, ld = 0;  // ld: their row stride as read here (P, or L when staged)
  int mr = 4;             // MR of the blocks (3 or 4, see block_extent)
  const T* x = nullptr;   // forward, weight grad; strides xs0..xs3
  int64_t xs0 = 0, xs1 = 0, xs2 = 0, xs3 = 0;
  const T* bias = nullptr;  // forward: rows [C_out][ld], or null
  const T* dy = nullptr;    // backward: rows [N][C_out][ld]
  T* y = nullptr;           // forward: rows [N][C_out][ld]
  T* gx = nullptr;          // input grad: [N][C_in * H * W]
  T* gw = nullptr;          // weight grad: [P][C_out][K]
  T* gb = nullptr;          // bias grad: [C_out][P]
  const T* mt = nullptr;    // the group's transposed matrices, tile t at mt + (t - t0) * tile_size
  int64_t tile_size = 0;
  int64_t t0 = 0;        // the group's first tile
  int64_t kb = 0, kn = 0;  // the group's taps [kb, kb + kn): all of them, or a part of one tile's
  int64_t kg = 0;          // taps per group (the layouts' stride; a multiple of MR in the input grad)
  int64_t chunk = 1;     // forward: samples per item; weight grad: channels per item
  int64_t splits = 1;    // items per tile (forward, weight grad)
  int64_t kc = 1;        // patch elements per cache block (a multiple of MR in the backward passes)
  int64_t oc = 1;        // input grad: channels per cache block of the sum over o
  int64_t panel = 1;     // backward: samples per packed panel
  bool zero_gx = false;  // input grad: the first group zeroes its samples of grad_x
};

// Forward items [i0, i1): item = (tile t0 + item / splits, samples [s * chunk, ...) with s = item % splits).
// Operands: xp[k][i][q] (NR samples' patches, k in the cache block), mt[o / MR][k][o % MR][q] (C_out
// padded to MR). The k blocks (kc) run outermost, so that the tile's matrix rows of one block stay in
// the L2 cache for all the item's samples; partial sums wait in acc[n][o][q] between blocks.
template <typename T, int NR, int MR>
BIOPLAUS_INLINE void direct_forward_items(const DirectArgs<T>& d, int64_t i0, int64_t i1) {
  constexpr int64_t L = kLanes<T>;
  const Lc2dGeometry& g = d.g;
  const int64_t K = d.K, C_out = g.C_out, Cp = round_up(C_out, MR), ld = d.ld, kc = d.kc;
  std::vector<int64_t> off(K * L);
  const at::Tensor buf = at::empty({(NR * kc + (kc < d.kg ? d.chunk * Cp : 0)) * L}, cpu_options<T>());
  T* xp = buf.mutable_data_ptr<T>();
  T* acc = xp + NR * kc * L;
  for (int64_t item = i0; item < i1; ++item) {
    const int64_t t = d.t0 + item / d.splits;
    const int64_t n_begin = item % d.splits * d.chunk, n_end = std::min(g.N, n_begin + d.chunk);
    const int64_t p0 = d.tiles.start(t), lo = d.tiles.lo(t), hi = d.tiles.hi(t), row0 = d.staged ? 0 : p0;
    window_offsets(g, p0, L, d.xs1, d.xs2, d.xs3, off.data());
    const T* mt = d.mt + (t - d.t0) * d.tile_size;
    for (int64_t k0 = d.kb; k0 < d.kb + d.kn; k0 += kc) {
      const int64_t kn = std::min(kc, d.kb + d.kn - k0);
      // The first block of the group starts from the bias (first group) or from y (the earlier groups'
      // sum; one tile per group then, so no other thread writes these rows); the last one writes y.
      const bool first = k0 == d.kb, last = k0 + kn == d.kb + d.kn;
      for (int64_t n = n_begin; n < n_end; n += NR) {
        const int64_t na = std::min<int64_t>(NR, n_end - n);
        gather_patches_packed(d.x + n * d.xs0, d.xs0, na, off.data() + k0 * L, kn, 1, NR, 0, xp);
        T* an = acc + (n - n_begin) * Cp * L;
        for (int64_t o = 0; o < C_out; o += MR) {
          const T* a = xp;
          const T* b = mt + (o * d.kg + (k0 - d.kb) * MR) * L;
          const int64_t nb = std::min<int64_t>(MR, C_out - o);
          const T* bias = d.kb > 0 ? d.y + (n * C_out + o) * ld + row0 : d.bias ? d.bias + o * ld + row0 : nullptr;
          const int64_t bias_i = d.kb > 0 ? C_out * ld : 0;
          if (first && last) {
            direct_block<T, NR, MR>(kn, a, L, NR * L, na, b, MR * L, nb, bias, bias_i, ld, d.y + (n * C_out + o) * ld + row0,
                                    C_out * ld, ld, lo, hi);
          } else if (first) {
            direct_block<T, NR, MR>(kn, a, L, NR * L, na, b, MR * L, nb, bias, bias_i, ld, an + o * L, Cp * L, L, 0, L);
          } else if (last) {
            direct_block<T, NR, MR>(kn, a, L, NR * L, na, b, MR * L, nb, an + o * L, Cp * L, L,
                                    d.y + (n * C_out + o) * ld + row0, C_out * ld, ld, lo, hi);
          } else {
            direct_block<T, NR, MR>(kn, a, L, NR * L, na, b, MR * L, nb, an + o * L, Cp * L, L, an + o * L, Cp * L, L,
                                    0, L);
          }
        }
      }
    }
  }
}

// Input-grad samples [n_begin, n_end) over the group's tiles [t0, t0 + count).
// Operands: dyp[n / NR][o][n % NR][q] (grad_y of a panel of samples, packed once per tile), mt[k / MR][o]
// [k % MR][q] (K padded to MR); dcol[i][k][q] for the k of one cache block (kc), whose matrix rows stay in
// the L2 cache for all the panel's samples; the sum over o runs in blocks of oc channels (whose dyp rows
// stay in the L1 cache), partial sums kept in dcol.
template <typename T, int NR, int MR>
BIOPLAUS_INLINE void direct_backward_input_items(const DirectArgs<T>& d, int64_t count, int64_t n_begin,
                                                 int64_t n_end) {
  constexpr int64_t L = kLanes<T>;
  const Lc2dGeometry& g = d.g;
  const int64_t K = d.K, C_out = g.C_out, ld = d.ld, kc = d.kc, oc = d.oc, image = g.C_in * g.H * g.W;
  if (d.zero_gx) std::fill(d.gx + n_begin * image, d.gx + n_end * image, T(0));
  std::vector<int64_t> off(K * L), src(K * L), dst(K * L), first_of(K + 1);
  const int64_t panel = round_up(std::min(d.panel, n_end - n_begin), NR);
  const at::Tensor buf = at::empty({(NR * kc + C_out * panel) * L}, cpu_options<T>());
  T* dcol = buf.mutable_data_ptr<T>();
  T* dyp_all = dcol + NR * kc * L;
  for (int64_t t = d.t0; t < d.t0 + count; ++t) {
    const int64_t p0 = d.tiles.start(t), lo = d.tiles.lo(t), hi = d.tiles.hi(t), row0 = d.staged ? 0 : p0;
    // The tile's scatter list, in (k, q) order: dcol[i][src[e]] goes to grad_x[n + i] at dst[e]; tap k's
    // entries are [first_of[k], first_of[k + 1]).
    window_offsets(g, p0, L, g.H * g.W, g.W, 1, off.data());
    int64_t m = 0;
    for (int64_t k = 0; k < K; ++k) {
      first_of[k] = m;
      for (int64_t q = lo; q < hi; ++q)
        if (off[k * L + q] >= 0) {
          src[m] = k * L + q;
          dst[m++] = off[k * L + q];
        }
    }
    first_of[K] = m;
    const T* mt = d.mt + (t - d.t0) * d.tile_size;
    for (int64_t s0 = n_begin; s0 < n_end; s0 += panel) {
      const int64_t s1 = std::min(n_end, s0 + panel);
      for (int64_t n = s0; n < s1; ++n)
        for (int64_t o = 0; o < C_out; ++o) {
          const int64_t i = (n - s0) % NR;
          std::memcpy(dyp_all + (((n - s0) / NR * C_out + o) * NR + i) * L, d.dy + (n * C_out + o) * ld + row0,
                      L * sizeof(T));
        }
      for (int64_t k0 = d.kb; k0 < d.kb + d.kn; k0 += kc) {
        const int64_t kn = std::min(kc, d.kb + d.kn - k0), shift = k0 * L;
        for (int64_t n = s0; n < s1; n += NR) {
          const int64_t na = std::min<int64_t>(NR, s1 - n);
          const T* dyp = dyp_all + (n - s0) * C_out * L;
          for (int64_t o0 = 0; o0 < C_out; o0 += oc) {
            const int64_t on = std::min(oc, C_out - o0);
            for (int64_t k = k0; k < k0 + kn; k += MR) {
              T* dc = dcol + (k - k0) * L;
              direct_block<T, NR, MR>(on, dyp + o0 * NR * L, L, NR * L, na, mt + ((k - d.kb) * C_out + o0 * MR) * L, MR * L,
                                      std::min<int64_t>(MR, K - k), o0 == 0 ? nullptr : dc, kc * L, L, dc, kc * L, L, 0,
                                      L);
            }
          }
          T* gxn = d.gx + n * image;
          const int64_t e0 = first_of[k0], e1 = first_of[k0 + kn];
          if (na == NR) {
            for (int64_t e = e0; e < e1; ++e) {
              const int64_t to = dst[e], from = src[e] - shift;
  #pragma GCC unroll 8
              for (int i = 0; i < NR; ++i) gxn[i * image + to] += dcol[i * kc * L + from];
            }
          } else {
            for (int64_t e = e0; e < e1; ++e)
              for (int64_t i = 0; i < na; ++i) gxn[i * image + dst[e]] += dcol[i * kc * L + src[e] - shift];
          }
        }
      }
    }
  }
}

// Weight-grad items [i0, i1): item = (tile item / splits, channels [s * chunk, ...) with s = item % splits).
// The batch is reduced panel by panel of samples, in order. Operands per panel of nn samples:
// dyp[o / NR][n][o % NR][q] (the item's channels) and xp[k / MR][n][k % MR][q] (the k of one cache block,
// kc); each NR x MR block of grad_w is summed over the panel in registers into acc[o][k][q] (the k of the
// block), which then goes into grad_w's layout (and comes from there after the first panel) in runs of k.
template <typename T, int NR, int MR>
BIOPLAUS_INLINE void direct_backward_weight_items(const DirectArgs<T>& d, int64_t i0, int64_t i1) {
  using V = typename LaneVec<T>::type;
  constexpr int64_t L = kLanes<T>;
  const Lc2dGeometry& g = d.g;
  const int64_t K = d.K, C_out = g.C_out, ld = d.ld, P = g.positions(), N = g.N, kc = d.kc;
  std::vector<int64_t> off(K * L);
  const at::Tensor buf = at::empty({(d.panel * (round_up(d.chunk, NR) + kc) + d.chunk * kc) * L}, cpu_options<T>());
  T* dyp = buf.mutable_data_ptr<T>();
  T* xp = dyp + d.panel * round_up(d.chunk, NR) * L;
  T* acc = xp + d.panel * kc * L;
  for (int64_t item = i0; item < i1; ++item) {
    const int64_t t = item / d.splits;
    const int64_t o_begin = item % d.splits * d.chunk, o_end = std::min(C_out, o_begin + d.chunk);
    const int64_t p0 = d.tiles.start(t), lo = d.tiles.lo(t), hi = d.tiles.hi(t), row0 = d.staged ? 0 : p0;
    T* gw = d.gw + p0 * C_out * K;  // grad_w[p0 + q, o, k] at gw[q * C_out * K + o * K + k]
    window_offsets(g, p0, L, d.xs1, d.xs2, d.xs3, off.data());
    for (int64_t n0 = 0; n0 < N; n0 += d.panel) {
      const int64_t nn = std::min(d.panel, N - n0);
      for (int64_t n = 0; n < nn; ++n)
        for (int64_t o = o_begin; o < o_end; ++o) {
          const int64_t r = o - o_begin;
          std::memcpy(dyp + ((r / NR * nn + n) * NR + r % NR) * L, d.dy + ((n0 + n) * C_out + o) * ld + row0,
                      L * sizeof(T));
        }
      for (int64_t k0 = 0; k0 < K; k0 += kc) {
        const int64_t kn = std::min(kc, K - k0);
        for (int64_t n = 0; n < nn; ++n)
          gather_patches_packed(d.x + (n0 + n) * d.xs0, d.xs0, 1, off.data() + k0 * L, kn, MR, nn, n, xp);
        if (n0 > 0) {  // acc[o][k - k0][q] = the previous panels' sum, lanes [lo, hi)
          for (int64_t q = lo; q < hi; ++q)
            for (int64_t o = o_begin; o < o_end; ++o)
              for (int64_t k = 0; k < kn; ++k) acc[((o - o_begin) * kc + k) * L + q] = gw[q * C_out * K + o * K + k0 + k];
        }
        for (int64_t o = o_begin; o < o_end; o += NR) {
          const int64_t na = std::min<int64_t>(NR, o_end - o);
          for (int64_t k = k0; k < k0 + kn; k += MR) {
            T* a = acc + ((o - o_begin) * kc + k - k0) * L;
            direct_block<T, NR, MR>(nn, dyp + (o - o_begin) * nn * L, L, NR * L, na, xp + (k - k0) * nn * L, MR * L,
                                    std::min<int64_t>(MR, K - k), n0 > 0 ? a : nullptr, kc * L, L, a, kc * L, L, 0, L);
          }
        }
        for (int64_t q = lo; q < hi; ++q)
          for (int64_t o = o_begin; o < o_end; ++o)
            for (int64_t k = 0; k < kn; ++k) gw[q * C_out * K + o * K + k0 + k] = acc[((o - o_begin) * kc + k) * L + q];
      }
    }
    // grad_b[o, p0 + q] = sum_n grad_y[n, o, p0 + q], n in order.
    for (int64_t o = o_begin; o < o_end; ++o) {
      V s{}, v;
      for (int64_t n = 0; n < N; ++n) {
        std::memcpy(&v, d.dy + (n * C_out + o) * ld + row0, sizeof(V));
        s += v;
      }
      alignas(64) T lanes[L];
      std::memcpy(lanes, &s, sizeof(V));
      for (int64_t q = lo; q < hi; ++q) d.gb[o * P + p0 + q] = lanes[q];
    }
  }
}

// The kernels above for one instruction set: NR is what its registers hold (NR x MR accumulator rows of 64
// bytes plus the NR + MR operand rows), MR is 3 or 4 (DirectArgs::mr).
#define BIOPLAUS_DIRECT_ISA(isa, attr, NR)                                                                    \
  template <typename T>                                                                                       \
  attr void direct_forward_##isa(const DirectArgs<T>& d, int64_t i0, int64_t i1) {                           \
    d.mr == 3 ? direct_forward_items<T, NR, 3>(d, i0, i1) : direct_forward_items<T, NR, 4>(d, i0, i1);        \
  }                                                                                                           \
  template <typename T>                                                                                       \
  attr void direct_backward_input_##isa(const DirectArgs<T>& d, int64_t count, int64_t n0, int64_t n1) {     \
    d.mr == 3 ? direct_backward_input_items<T, NR, 3>(d, count, n0, n1)                                       \
              : direct_backward_input_items<T, NR, 4>(d, count, n0, n1);                                      \
  }                                                                                                           \
  template <typename T>                                                                                       \
  attr void direct_backward_weight_##isa(const DirectArgs<T>& d, int64_t i0, int64_t i1) {                   \
    d.mr == 3 ? direct_backward_weight_items<T, NR, 3>(d, i0, i1)                                             \
              : direct_backward_weight_items<T, NR, 4>(d, i0, i1);                                            \
  }

BIOPLAUS_DIRECT_ISA(base, , 2)
#if defined(__GNUC__) && defined(__x86_64__)
#define BIOPLAUS_DIRECT_X86 1
BIOPLAUS_DIRECT_ISA(avx2, __attribute__((target("avx2,fma"))), 2)
BIOPLAUS_DIRECT_ISA(avx512, __attribute__((target("avx512f"))), 4)
#else
#define BIOPLAUS_DIRECT_X86 0
#endif

enum class DirectIsa { kBase, kAvx2, kAvx512 };

// The widest instruction set of this CPU that the direct kernels are built for (read once).
DirectIsa direct_isa() {
#if BIOPLAUS_DIRECT_X86
  static const DirectIsa isa = __builtin_cpu_supports("avx512f")                                   ? DirectIsa::kAvx512
                               : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? DirectIsa::kAvx2
                                                                                                   : DirectIsa::kBase;
  return isa;
#else
  return DirectIsa::kBase;
#endif
}

// NR of the kernels direct_isa() runs.
int direct_nr() { return direct_isa() == DirectIsa::kAvx512 ? 4 : 2; }

#if BIOPLAUS_DIRECT_X86
#define BIOPLAUS_DIRECT_CALL(kernel, ...) \
  switch (direct_isa()) {                 \
    case DirectIsa::kAvx512:              \
      kernel##_avx512(__VA_ARGS__);       \
      break;                              \
    case DirectIsa::kAvx2:                \
      kernel##_avx2(__VA_ARGS__);         \
      break;                              \
    default:                              \
      kernel##_base(__VA_ARGS__);         \
  }
#else
#define BIOPLAUS_DIRECT_CALL(kernel, ...) kernel##_base(__VA_ARGS__)
#endif

// MR for a blocked extent: 3 when it divides the extent and 4 does not (K = 9, 27, 75, ...), else 4, so
// that fewer padded or repeated rows are computed.
int block_extent(int64_t extent) { return extent % 4 != 0 && extent % 3 == 0 ? 3 : 4; }

// Elements of B per transpose item (build_group), at least one channel's.
constexpr int64_t kTransposeChunk = 4096;

// Transposes the group's part of B's position blocks (w, or the feedback matrix, built in `run` first),
// channels [o0, o1) and taps [kb, kb + kn), into the lanes of the group's tile tt = t - t0:
//   mt[tt * tile_size + idx(o, k - kb) * L + q] = B[start(t) + q, o, k]   (0 for lanes without a position)
// idx(o, k) = (o / R * kg + k) * R + o % R when o_blocked (the forward's layout), else
// (k / R * C_out + o) * R + k % R (the input grad's). The padding rows of the layouts are not written.
template <typename T>
void transpose_tile_rows(const DirectArgs<T>& d, bool o_blocked, const T* w, const FeedbackSpec* f, int64_t tt,
                         int64_t o0, int64_t o1, T* mt, T* run) {
  constexpr int64_t L = kLanes<T>;
  const int64_t C_out = d.g.C_out, K = d.K, R = d.mr, kb = d.kb, kg = d.kg, kn = d.kn, block = C_out * K;
  const int64_t p0 = d.tiles.start(d.t0 + tt), lanes = std::min(L, d.tiles.P - p0);  // lanes with a position
  const bool build = f && f->mode != FeedbackMode::kWeight;
  T* tile = mt + tt * d.tile_size;
  // One run of B's elements per lane: all the channels when the group has every tap, else one channel.
  for (int64_t o = o0; o < o1;) {
    const int64_t rows = kn == K ? o1 - o : 1, len = rows * kn;
    const T* src[L];
    for (int64_t q = 0; q < lanes; ++q) {
      const int64_t e = (p0 + q) * block + o * K + kb;
      if (build) fill_feedback<T>(*f, w ? w + e : nullptr, e, len, run + q * len);
      src[q] = build ? run + q * len : w + e;
    }
    int64_t oo = o, k = 0, o_hi = o / R, o_lo = o % R, k_hi = 0, k_lo = 0;
    for (int64_t r = 0; r < len; ++r) {
      const int64_t idx = o_blocked ? (o_hi * kg + k) * R + o_lo : (k_hi * C_out + oo) * R + k_lo;
      T* dst = tile + idx * L;
      for (int64_t q = 0; q < lanes; ++q) dst[q] = src[q][r];
      for (int64_t q = lanes; q < L; ++q) dst[q] = T(0);
      if (++k_lo == R) k_lo = 0, ++k_hi;
      if (++k == kn) {
        k = k_hi = k_lo = 0;
        ++oo;
        if (++o_lo == R) o_lo = 0, ++o_hi;
      }
    }
    o += rows;
  }
}

// The transposed matrices of the group (tiles [t0, t0 + count), taps [kb, kb + kn)), built by all threads.
template <typename T>
void build_group(const DirectArgs<T>& d, bool o_blocked, const T* w, const FeedbackSpec* f, int64_t count, T* mt) {
  const int64_t rows = std::max<int64_t>(kTransposeChunk / d.kg, 1), chunks = (d.g.C_out + rows - 1) / rows;
  at::parallel_for(0, count * chunks, 1, [&](int64_t j0, int64_t j1) {
    std::vector<T> run(f && f->mode != FeedbackMode::kWeight ? kLanes<T> * rows * d.kg : 0);
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t o0 = j % chunks * rows;
      transpose_tile_rows(d, o_blocked, w, f, j / chunks, o0, std::min(d.g.C_out, o0 + rows), mt, run.data());
    }
  });
}

// The block length that splits `extent` into equal blocks of at most max(limit, unit) (rounded down to a
// multiple of `unit`), rounded up to a multiple of `unit`.
int64_t even_blocks(int64_t extent, int64_t limit, int64_t unit) {
  const int64_t most = std::max(limit / unit * unit, unit), blocks = (extent + most - 1) / most;
  return std::min(round_up((extent + blocks - 1) / blocks, unit), round_up(extent, unit));
}

// Groups: whole tiles within kDirectMatrixBytes, or, where one tile's matrix does not fit, one tile and
// taps in blocks of kg (a multiple of `unit`) within it; `rows` = the matrix's rows per tap (C_out padded).
// Sets d.kg and d.tile_size; returns the tiles per group.
template <typename T>
int64_t plan_groups(DirectArgs<T>& d, int64_t rows, int64_t unit) {
  const int64_t per_tap = rows * kLanes<T> * int64_t(sizeof(T));
  d.kg = d.K * per_tap <= kDirectMatrixBytes ? d.K : even_blocks(d.K, kDirectMatrixBytes / per_tap, unit);
  d.tile_size = rows * round_up(d.kg, unit) * kLanes<T>;
  return d.kg == d.K ? std::clamp<int64_t>(kDirectMatrixBytes / (d.tile_size * int64_t(sizeof(T))), 1, d.tiles.count)
                     : 1;
}

// rows[r][q] = src[r * P + q] for q < P, 0 for P <= q < L: [rows, P] staged as [rows, L] (only when P < L).
template <typename T>
at::Tensor stage_rows(const T* src, int64_t rows, int64_t P, int64_t L) {
  at::Tensor buf = at::zeros({rows, L}, cpu_options<T>());
  T* dst = buf.mutable_data_ptr<T>();
  for (int64_t r = 0; r < rows; ++r) std::copy(src + r * P, src + (r + 1) * P, dst + r * L);
  return buf;
}

// The fields every pass sets alike.
template <typename T>
DirectArgs<T> direct_args(const Lc2dGeometry& g, int64_t mr_extent) {
  DirectArgs<T> d;
  d.g = g;
  d.tiles = LaneTiles(g.positions(), kLanes<T>);
  d.K = g.patch();
  d.mr = block_extent(mr_extent);
  d.staged = g.positions() < kLanes<T>;
  d.ld = d.staged ? kLanes<T> : g.positions();
  return d;
}

template <typename T>
void direct_forward(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias, at::Tensor& y,
                    const Lc2dGeometry& g) {
  constexpr int64_t L = kLanes<T>;
  const int64_t P = g.positions(), K = g.patch();
  DirectArgs<T> d = direct_args<T>(g, g.C_out);
  d.x = x.const_data_ptr<T>();
  d.xs0 = x.stride(0), d.xs1 = x.stride(1), d.xs2 = x.stride(2), d.xs3 = x.stride(3);
  at::Tensor bias_rows, y_rows = d.staged ? at::empty({g.N * g.C_out, L}, y.options()) : y;
  if (bias.defined()) {
    bias_rows = d.staged ? stage_rows(bias.const_data_ptr<T>(), g.C_out, P, L) : bias;
    d.bias = bias_rows.const_data_ptr<T>();
  }
  d.y = y_rows.mutable_data_ptr<T>();
  const int64_t group = plan_groups(d, round_up(g.C_out, d.mr), 1);
  // Items (tile, sample chunk): as few chunks as balance the threads (every item re-reads the tile's
  // matrix, a chunk's samples share each read); chunks of whole blocks of samples.
  const int64_t nr = direct_nr(), blocks = (g.N + nr - 1) / nr, threads = at::get_num_threads();
  int64_t splits = 1;
  while (splits < blocks && (group * splits) % threads != 0 && group * splits < 4 * threads) ++splits;
  d.chunk = (blocks + splits - 1) / splits * nr;
  d.splits = (g.N + d.chunk - 1) / d.chunk;
  // k blocks: a block's rows of the tile's matrix, [C_out][kc] lanes, within kDirectL2Bytes.
  d.kc = even_blocks(d.kg, kDirectL2Bytes / (round_up(g.C_out, d.mr) * L * int64_t(sizeof(T))), 1);
  const at::Tensor mt = at::empty({group * d.tile_size}, y.options());
  d.mt = mt.const_data_ptr<T>();
  for (int64_t t0 = 0; t0 < d.tiles.count; t0 += group) {
    const int64_t count = std::min(group, d.tiles.count - t0);
    for (int64_t kb = 0; kb < K; kb += d.kg) {
      d.t0 = t0;
      d.kb = kb;
      d.kn = std::min(d.kg, K - kb);
      build_group<T>(d, /*o_blocked=*/true, w.const_data_ptr<T>(), nullptr, count, mt.mutable_data_ptr<T>());
      at::parallel_for(0, count * d.splits, 1,
                       [&](int64_t i0, int64_t i1) { BIOPLAUS_DIRECT_CALL(direct_forward, d, i0, i1); });
    }
  }
  if (d.staged) {
    const T* src = y_rows.const_data_ptr<T>();
    T* dst = y.mutable_data_ptr<T>();
    for (int64_t r = 0; r < g.N * g.C_out; ++r) std::copy(src + r * L, src + r * L + P, dst + r * P);
  }
}

// grad_x is written whole (the first group zeroes each thread's samples).
template <typename T>
void direct_backward_input(const at::Tensor& grad_y, const at::Tensor& w, at::Tensor& gx, const Lc2dGeometry& g,
                           const FeedbackSpec& f) {
  constexpr int64_t L = kLanes<T>;
  DirectArgs<T> d = direct_args<T>(g, g.patch());
  const at::Tensor dy_rows =
      d.staged ? stage_rows(grad_y.const_data_ptr<T>(), g.N * g.C_out, g.positions(), L) : grad_y;
  d.dy = dy_rows.const_data_ptr<T>();
  d.gx = gx.mutable_data_ptr<T>();
  const int64_t group = plan_groups(d, g.C_out, d.mr);
  // k blocks: their rows of the tile's matrix, [C_out][kc] lanes, within kDirectL2Bytes; channel blocks:
  // the NR samples' grad_y rows of oc channels within kDirectL1Bytes.
  d.kc = even_blocks(d.kg, kDirectL2Bytes / (g.C_out * L * int64_t(sizeof(T))), d.mr);
  d.oc = even_blocks(g.C_out, kDirectL1Bytes / (direct_nr() * L * int64_t(sizeof(T))), 1);
  // Panels: a panel's packed grad_y within kDirectL2Bytes.
  d.panel = std::max<int64_t>(kDirectL2Bytes / (g.C_out * L * int64_t(sizeof(T))), 1);
  const at::Tensor mt = at::empty({group * d.tile_size}, grad_y.options());
  d.mt = mt.const_data_ptr<T>();
  // "random" never reads w (it may be an expanded zero-stride tensor).
  const T* wp = f.reads_weight() ? w.const_data_ptr<T>() : nullptr;
  for (int64_t t0 = 0; t0 < d.tiles.count; t0 += group) {
    const int64_t count = std::min(group, d.tiles.count - t0);
    for (int64_t kb = 0; kb < d.K; kb += d.kg) {
      d.t0 = t0;
      d.kb = kb;
      d.kn = std::min(d.kg, d.K - kb);
      d.zero_gx = t0 == 0 && kb == 0;
      build_group<T>(d, /*o_blocked=*/false, wp, &f, count, mt.mutable_data_ptr<T>());
      at::parallel_for(0, g.N, 1, [&](int64_t n0, int64_t n1) {
        BIOPLAUS_DIRECT_CALL(direct_backward_input, d, count, n0, n1);
      });
    }
  }
}

template <typename T>
void direct_backward_weight(const at::Tensor& grad_y, const at::Tensor& x, at::Tensor& gw, at::Tensor& gb,
                            const Lc2dGeometry& g) {
  constexpr int64_t L = kLanes<T>;
  DirectArgs<T> d = direct_args<T>(g, g.patch());
  d.x = x.const_data_ptr<T>();
  d.xs0 = x.stride(0), d.xs1 = x.stride(1), d.xs2 = x.stride(2), d.xs3 = x.stride(3);
  const at::Tensor dy_rows =
      d.staged ? stage_rows(grad_y.const_data_ptr<T>(), g.N * g.C_out, g.positions(), L) : grad_y;
  d.dy = dy_rows.const_data_ptr<T>();
  d.gw = gw.mutable_data_ptr<T>();
  d.gb = gb.mutable_data_ptr<T>();
  // Items (tile, channel chunk): channel chunks only where the tiles alone leave threads idle, since each
  // chunk gathers the tile's patches again.
  const int64_t nr = direct_nr(), blocks = (g.C_out + nr - 1) / nr;
  const int64_t splits = std::clamp<int64_t>((4 * at::get_num_threads() + d.tiles.count - 1) / d.tiles.count, 1, blocks);
  d.chunk = (blocks + splits - 1) / splits * nr;
  d.splits = (g.C_out + d.chunk - 1) / d.chunk;
  // Panels: the item's packed grad_y rows within kDirectL2Bytes; k blocks: the panel's packed patches of
  // kc elements within kDirectL2Bytes.
  d.panel = even_blocks(g.N, kDirectL2Bytes / (round_up(d.chunk, nr) * L * int64_t(sizeof(T))), 1);
  d.kc = even_blocks(d.K, kDirectL2Bytes / (d.panel * L * int64_t(sizeof(T))), d.mr);
  at::parallel_for(0, d.tiles.count * d.splits, 1,
                   [&](int64_t i0, int64_t i1) { BIOPLAUS_DIRECT_CALL(direct_backward_weight, d, i0, i1); });
}

// The CPU algorithms of every pass, in preference order (lc2d_selection.h), and the autotuner's timer.
// "direct" first: the faster full training step on every CPU shape of the paper's networks (MNIST and
// CIFAR LC layers, batch 128); "library" is the faster input gradient from K of a few hundred up, which
// is for the default table's rows to pick.
const std::vector<std::string> kAlgorithms{"direct", "library"};

// Whether `algorithm` (a name select_lc2d_algorithm returned) is "direct" rather than "library".
bool is_direct(const std::string& algorithm) {
  TORCH_INTERNAL_ASSERT(algorithm == "direct" || algorithm == "library", "lc2d: unknown CPU algorithm ", algorithm);
  return algorithm == "direct";
}

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
  const auto run = [&](const std::string& algorithm) {
    const bool direct = is_direct(algorithm);
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lc2d_forward_cpu", [&] {
      direct ? direct_forward<scalar_t>(x, w, b, y, g) : forward_kernel<scalar_t>(x, w, b, y, g);
    });
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
  at::Tensor gx = at::empty({g.N, g.C_in, g.H, g.W}, grad_y.options().memory_format(at::MemoryFormat::Contiguous));
  if (g.N == 0) return gx;
  const at::Tensor w = f.reads_weight() ? weight.contiguous() : weight;  // "random": shape only
  const at::Tensor dy = grad_y.contiguous();
  const auto run = [&](const std::string& algorithm) {
    const bool direct = is_direct(algorithm);
    // "library" adds into grad_x; "direct" zeroes it itself (an autotuned call runs a kernel more than once).
    if (!direct) gx.zero_();
    AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "lc2d_backward_input_cpu", [&] {
      direct ? direct_backward_input<scalar_t>(dy, w, gx, g, f) : backward_input_kernel<scalar_t>(dy, w, gx, g, f);
    });
  };
  run(select_lc2d_algorithm(Lc2dPass::kBackwardInput, g, dy.scalar_type(), dy.device(), kAlgorithms,
                            [&](const std::string& a) { return time_ms([&] { run(a); }); },
                            f.generates() ? "generated feedback" : ""));
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
  const auto run = [&](const std::string& algorithm) {
    const bool direct = is_direct(algorithm);
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lc2d_backward_weight_cpu", [&] {
      direct ? direct_backward_weight<scalar_t>(dy, x, gw, gb, g) : backward_weight_kernel<scalar_t>(dy, x, gw, gb, g);
    });
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
