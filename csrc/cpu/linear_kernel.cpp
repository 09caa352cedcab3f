// linear_backward_input on the CPU: float32 and float64, all threads, B never materialised.
//
// Two paths, chosen per call from the shapes, the dtype and the CPU alone, never from the mode, so that
// every mode runs the same arithmetic and a spec run equals a "weight" run on the materialised B bit for
// bit. The modes differ only in where B's values come from: "weight" reads weight, the others build them
// (fill_feedback) into a kept buffer just before they are used, or (small-batch "sign") form them in
// registers.
//
// Tile path (the general case): grad_x[M, in] = grad_y[M, out] * B[out, in] is split into tiles of B (the
// whole B, or blocks of whole rows, or column tiles of all rows: tile_shape), one GEMM per tile (at::mm,
// torch's BLAS with all its threads), one tile at a time; a block of rows adds its share (addmm):
//   grad_x[:, c0 : c0 + cw] (+)= grad_y[:, r0 : r0 + rh] * B[r0 : r0 + rh, c0 : c0 + cw]
// A spec mode builds the tile (within kTileBytes per thread) first, all threads filling rows of it. The
// result is bit-identical run to run (for a given thread count, which sets the tiles and the BLAS's split).
// A small layer is one tile: its whole B in one contiguous run, and one GEMM exactly as backprop's. A block
// of whole rows is one contiguous run too: weight is read in order and the generator's groups stay whole.
// Column tiles are the fallback for the widest layers only: their rows are short runs far apart, read more
// slowly than weight in order, and each run that starts or ends inside a generator group generates all of
// it (measurements: docs/performance.md section 5.2).
//
// Small-batch path (float32, M <= kSmallBatch, AVX-512): with a few rows of grad_y the GEMM streams B
// (8 FMAs per element of B at M = 8), and the tile path's cost is writing and re-reading its tile, which
// can take as long as the GEMM itself (docs/performance.md section 5.1). Here no tile exists: "weight" and
// "sign" read weight in place (sign(w) * scale formed in registers), "random" / "random_sign" build at most
// kSmallRows rows of B at a time into a 256 KB block, and a register-blocked kernel consumes them at once:
//   grad_x[m, i] = fma(grad_y[m, o], B[o, i], acc) for o = 0, 1, ..., out - 1, in that order.
// Each element is that one sequential sum, so the result does not depend on the thread count or on how
// columns are blocked.
#include "linear.h"

#include "cpu/fill_feedback.h"
#include "cpu/philox_generator.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define BIOPLAUS_X86_SIMD 1
#endif

namespace bioplaus {
namespace {

constexpr int64_t kTileBytes = int64_t{1} << 20;  // B tile bytes per thread: stays in L2 from fill to GEMM
constexpr int64_t kMinBlockRows = 64;              // rows of a block of whole rows at least (its GEMM's depth)
constexpr int64_t kFillGrain = int64_t{1} << 15;  // elements: the smallest share of a tile's fill
// Tile widths are multiples of the uniform generator's group (common/philox.h), so when in % 128 == 0
// every tile row is whole groups, generated straight into the tile.
constexpr int64_t kColAlign = philox::kGroupElems;

// The tile buffer, kept between calls (per calling thread): a fresh allocation of a tile is an mmap whose
// page faults and zeroing cost as much as building a small layer's B.
template <typename scalar_t>
scalar_t* tile_scratch(int64_t elems) {
  thread_local std::vector<scalar_t> scratch;
  if (static_cast<int64_t>(scratch.size()) < elems) scratch.resize(static_cast<size_t>(elems));
  return scratch.data();
}

// A tile of B: `rows` consecutive rows by `cols` consecutive columns.
struct TileShape {
  int64_t rows, cols;
};

// The tiles: the whole B if it fits the threads' budget; else blocks of whole rows, the most that fit, if
// that is at least kMinBlockRows (each block one run of B: weight read in order, the generator's groups
// whole); else column tiles of all rows, the most whole kColAlign columns that fit (the widest layers,
// where a block of whole rows would be too thin a GEMM).
TileShape tile_shape(int64_t out, int64_t in, int64_t elem_size) {
  const int64_t budget = kTileBytes * at::get_num_threads() / elem_size;  // elements
  if (out * in <= budget) return {out, in};
  if (budget / in >= kMinBlockRows) return {budget / in, in};
  const int64_t by_budget = std::max<int64_t>(budget / std::max<int64_t>(out, 1) / kColAlign, 1);
  return {out, std::min(by_budget * kColAlign, in)};
}

// A tile row of weight is a short run (a few cache lines) at a large stride, a new page per row: the
// hardware prefetcher barely ramps up on one before the next, so on large layers every row would wait for
// memory. Fetching the row kPrefetchRows ahead hides it.
constexpr int64_t kPrefetchRows = 4;

template <typename scalar_t>
void prefetch_run(const scalar_t* p, int64_t count) {
  const char* c = reinterpret_cast<const char*>(p);
  for (int64_t b = 0; b < count * int64_t(sizeof(scalar_t)); b += 64) __builtin_prefetch(c + b);
}

template <typename scalar_t>
void backward_input_kernel(const at::Tensor& gy, const at::Tensor& weight, at::Tensor& gx, const LinearDims& d) {
  const TileShape ts = tile_shape(d.out, d.in, sizeof(scalar_t));
  const FeedbackSpec& f = d.feedback;
  // "sign" / "random_sign" read weight row by row (element (o, i) at o * in + i): a contiguous weight.
  const bool transforms_weight = f.reads_weight() && f.mode != FeedbackMode::kWeight;
  const at::Tensor w = transforms_weight ? weight.contiguous() : weight;
  const scalar_t* wp = transforms_weight ? w.const_data_ptr<scalar_t>() : nullptr;
  scalar_t* tp = f.mode == FeedbackMode::kWeight ? nullptr : tile_scratch<scalar_t>(ts.rows * ts.cols);
  for (int64_t r0 = 0; r0 < d.out; r0 += ts.rows) {
    const int64_t rh = std::min(ts.rows, d.out - r0);
    const at::Tensor gy_r = gy.narrow(1, r0, rh);
    for (int64_t c0 = 0; c0 < d.in; c0 += ts.cols) {
      const int64_t cw = std::min(ts.cols, d.in - c0);
      at::Tensor gx_t = gx.narrow(1, c0, cw);
      // grad_x[:, c0 : c0 + cw] (+)= grad_y[:, r0 : r0 + rh] * tile: the first row block writes, the others add.
      const auto gemm = [&](const at::Tensor& tile) {
        if (r0 == 0) {
          at::mm_out(gx_t, gy_r, tile);
        } else {
          gx_t.addmm_(gy_r, tile);
        }
      };
      if (f.mode == FeedbackMode::kWeight) {
        gemm(weight.narrow(0, r0, rh).narrow(1, c0, cw));
        continue;
      }
      // tp[k * cw + j] = B[r0 + k, c0 + j]: row k of the tile is the run of elements (r0 + k) * in + c0 .. + cw;
      // the threads take blocks of rows, and a tile of whole rows (cw == in) gives each one contiguous run.
      at::parallel_for(0, rh, std::max<int64_t>(1, kFillGrain / cw), [&](int64_t k0, int64_t k1) {
        if (cw == d.in) {
          const int64_t e0 = (r0 + k0) * d.in;
          fill_feedback<scalar_t>(f, wp ? wp + e0 : nullptr, e0, (k1 - k0) * d.in, tp + k0 * d.in);
          return;
        }
        for (int64_t k = k0; k < k1; ++k) {
          const int64_t e0 = (r0 + k) * d.in + c0;
          if (wp && k + kPrefetchRows < k1) prefetch_run(wp + e0 + kPrefetchRows * d.in, cw);
          fill_feedback<scalar_t>(f, wp ? wp + e0 : nullptr, e0, cw, tp + k * cw);
        }
      });
      gemm(at::from_blob(tp, {rh, cw}, gy.options()));
    }
  }
}

#if defined(BIOPLAUS_X86_SIMD)
// Rows of grad_y up to which the small-batch path runs, all of them in one register block (beyond that
// torch's BLAS on the tile path is faster in "weight" and "random" mode; docs/performance.md section 5.1).
constexpr int64_t kSmallBatch = 8;
constexpr int64_t kSmallRows = 64;              // rows of B per block at most
constexpr int64_t kBuiltElems = 64 * 1024;      // elements of a built block at most (256 KB: it stays in L2)
constexpr int kStripVectors = 3;                // 16-float vectors per row of a register block (24 accumulators)
constexpr int64_t kStrip = 16 * kStripVectors;  // columns of a register block
constexpr int64_t kBlockAhead = 16;             // rows of B a register block prefetches ahead

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC's AVX-512 headers (see feedback_source_kernel.cpp)
#pragma GCC diagnostic ignored "-Wuninitialized"

// Lanes [0, n) of a 16-lane vector, n clamped to [0, 16].
__attribute__((target("avx512f"))) inline __mmask16 first_lanes(int64_t n) {
  return n >= 16 ? __mmask16(0xFFFF) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1u);
}

// "sign" mode's three values, sign_of(w) * scale for w > 0, w < 0 and otherwise (0 and NaN), computed as
// fill_feedback computes them, so the block's B equals the materialised B bit for bit.
struct SignValues {
  float pos, neg, zero;
};

// B's values from 16 lanes of b: the values themselves, or (kSign) sign(w) * scale of the weights w.
template <bool kSign>
__attribute__((target("avx512f"))) inline __m512 block_values(__m512 v, const SignValues& sv) {
  if constexpr (!kSign) {
    return v;
  } else {
    const __mmask16 pos = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_GT_OQ);
    const __mmask16 neg = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_LT_OQ);
    const __m512 p = _mm512_mask_mov_ps(_mm512_set1_ps(sv.zero), pos, _mm512_set1_ps(sv.pos));
    return _mm512_mask_mov_ps(p, neg, _mm512_set1_ps(sv.neg));
  }
}

// gx[m, 0 : nv) for m < MR (row stride ldx) = (first ? 0 : gx) + sum over k < K of gy[m, k] * B[k, 0 : nv)
// with B[k, :] = block_values(b[k, :]), the terms added in order of k, each with one FMA; nv <= kStrip
// columns, masked lanes never touch memory. Rows k < `rows` (>= K) of b exist and may be prefetched.
template <int MR, bool kSign>
__attribute__((target("avx512f"))) void small_batch_block(const float* gy, int64_t ldg, const float* b, int64_t ldb,
                                                          int64_t K, int64_t rows, float* gx, int64_t ldx, int64_t nv,
                                                          bool first, const SignValues& sv) {
  __mmask16 lanes[kStripVectors];
  for (int v = 0; v < kStripVectors; ++v) lanes[v] = first_lanes(nv - 16 * v);
  // Plain arrays, every loop unrolled: GCC then keeps all MR x kStripVectors accumulators in registers.
  __m512 acc[kStripVectors][MR];
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m) {
#pragma GCC unroll 4
    for (int v = 0; v < kStripVectors; ++v) acc[v][m] = _mm512_maskz_loadu_ps(first ? 0 : lanes[v], gx + m * ldx + 16 * v);
  }
  for (int64_t k = 0; k < K; ++k) {
    // B's rows are short runs at a large stride (weight read in place), each on a new page for large
    // layers: without a prefetch every row would wait for memory.
    if (k + kBlockAhead < rows) {
      const char* ahead = reinterpret_cast<const char*>(b + (k + kBlockAhead) * ldb);
      _mm_prefetch(ahead, _MM_HINT_T0);
      if (nv > 16) _mm_prefetch(ahead + 64, _MM_HINT_T0);
      if (nv > 32) _mm_prefetch(ahead + 128, _MM_HINT_T0);
    }
    __m512 bv[kStripVectors];
#pragma GCC unroll 4
    for (int v = 0; v < kStripVectors; ++v) bv[v] = block_values<kSign>(_mm512_maskz_loadu_ps(lanes[v], b + k * ldb + 16 * v), sv);
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      const __m512 g = _mm512_set1_ps(gy[m * ldg + k]);
#pragma GCC unroll 4
      for (int v = 0; v < kStripVectors; ++v) acc[v][m] = _mm512_fmadd_ps(g, bv[v], acc[v][m]);
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m) {
#pragma GCC unroll 4
    for (int v = 0; v < kStripVectors; ++v) _mm512_mask_storeu_ps(gx + m * ldx + 16 * v, lanes[v], acc[v][m]);
  }
}

using SmallBatchBlock = void (*)(const float*, int64_t, const float*, int64_t, int64_t, int64_t, float*, int64_t,
                                 int64_t, bool, const SignValues&);

// The register block for mr rows of grad_x (1 .. kSmallBatch).
template <bool kSign>
SmallBatchBlock small_batch_block_for(int64_t mr) {
  static_assert(kSmallBatch == 8, "one entry per row count");
  static const SmallBatchBlock blocks[kSmallBatch] = {
      small_batch_block<1, kSign>, small_batch_block<2, kSign>, small_batch_block<3, kSign>,
      small_batch_block<4, kSign>, small_batch_block<5, kSign>, small_batch_block<6, kSign>,
      small_batch_block<7, kSign>, small_batch_block<8, kSign>};
  return blocks[mr - 1];
}

// "weight" and "sign" read weight in place ("sign" with its transform in registers); the others build B.
bool reads_weight_in_place(FeedbackMode mode) { return mode == FeedbackMode::kWeight || mode == FeedbackMode::kSign; }
#pragma GCC diagnostic pop

// grad_x[:, c0 : c0 + cw) of the small-batch path, kSmallRows rows of B (fewer when built) at a time: B's
// values for them (weight in place for "weight" and "sign", else built into buf), then the register block
// over all M rows of grad_x, kStrip columns at a time.
void small_batch_columns(SmallBatchBlock block, const float* gyp, const float* wp, float* gxp, const LinearDims& d,
                         int64_t c0, int64_t cw, float* buf) {
  const FeedbackSpec& f = d.feedback;
  const float s = sign_scale<float>(f);
  const SignValues sv{1.0f * s, -1.0f * s, 0.0f * s};
  const bool in_place = reads_weight_in_place(f.mode);
  const int64_t step = in_place ? kSmallRows : std::clamp<int64_t>(kBuiltElems / cw, 1, kSmallRows);
  for (int64_t o0 = 0; o0 < d.out; o0 += step) {
    const int64_t K = std::min(step, d.out - o0);
    const float* b = buf;
    int64_t ldb = cw, rows = K;
    if (in_place) {
      b = wp + o0 * d.in + c0, ldb = d.in, rows = d.out - o0;  // weight[o0 + k, c0 + j]
    } else {
      // buf[k * cw + j] = B[o0 + k, c0 + j]: row k is the run of elements (o0 + k) * in + c0 .. + cw, and
      // a block of whole rows (cw == in) is one run.
      const int64_t runs = cw == d.in ? 1 : K, len = cw == d.in ? K * d.in : cw;
      for (int64_t r = 0; r < runs; ++r) {
        const int64_t e0 = (o0 + r) * d.in + c0;
        fill_feedback<float>(f, f.reads_weight() ? wp + e0 : nullptr, e0, len, buf + r * cw);
      }
    }
    for (int64_t j = 0; j < cw; j += kStrip) {
      block(gyp + o0, d.out, b + j, ldb, K, rows, gxp + c0 + j, d.in, cw - j, o0 == 0, sv);
    }
  }
}

// The small-batch path over all columns: one block of whole rows on one thread (a built block is then one
// run of B, no generator group split), else about one block of whole uniform groups per thread. Each
// element of grad_x is the same sequential sum however the columns are blocked.
void backward_input_small_batch(const at::Tensor& gy, const at::Tensor& weight, at::Tensor& gx, const LinearDims& d) {
  const FeedbackSpec& f = d.feedback;
  const bool reads = f.reads_weight();  // every mode but "random"
  const at::Tensor w = reads ? weight.contiguous() : weight;
  const float* wp = reads ? w.const_data_ptr<float>() : nullptr;
  const float* gyp = gy.const_data_ptr<float>();
  float* gxp = gx.mutable_data_ptr<float>();
  const int64_t groups = (d.in + kColAlign - 1) / kColAlign, threads = at::get_num_threads();
  const int64_t width = std::min(d.in, (groups + threads - 1) / threads * kColAlign);
  const int64_t blocks = (d.in + width - 1) / width;
  const bool in_place = reads_weight_in_place(f.mode);
  const SmallBatchBlock block =
      f.mode == FeedbackMode::kSign ? small_batch_block_for<true>(d.M) : small_batch_block_for<false>(d.M);
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    float* buf = in_place ? nullptr : tile_scratch<float>(std::max(kBuiltElems, width));
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t c0 = blk * width;
      small_batch_columns(block, gyp, wp, gxp, d, c0, std::min(width, d.in - c0), buf);
    }
  });
}

// Whether this call takes the small-batch path: shapes, dtype and CPU only (never the mode).
template <typename scalar_t>
bool takes_small_batch_path(const LinearDims& d) {
  static const bool avx512 = cpu_allows_avx512();
  return std::is_same_v<scalar_t, float> && d.M <= kSmallBatch && avx512;
}
#endif

at::Tensor linear_backward_input_cpu(const at::Tensor& grad_y, const at::Tensor& weight, c10::string_view feedback,
                                     int64_t seed, int64_t stream, int64_t step, c10::string_view distribution,
                                     double scale) {
  // The GEMMs below go through the dispatcher: keep them out of autograd (inputs may require grad).
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const LinearDims d =
      check_linear_backward_input_inputs(grad_y, weight, feedback, seed, stream, step, distribution, scale);
  std::vector<int64_t> shape(grad_y.sizes().begin(), grad_y.sizes().end());
  shape.back() = d.in;
  const auto opts = grad_y.options().memory_format(at::MemoryFormat::Contiguous);
  if (d.M == 0 || d.in == 0) return at::empty(shape, opts);
  if (d.out == 0) return at::zeros(shape, opts);  // an empty sum
  at::Tensor gx = at::empty({d.M, d.in}, opts);
  const at::Tensor gy = grad_y.reshape({d.M, d.out});
  AT_DISPATCH_FLOATING_TYPES(grad_y.scalar_type(), "linear_backward_input_cpu", [&] {
#if defined(BIOPLAUS_X86_SIMD)
    if (takes_small_batch_path<scalar_t>(d)) return backward_input_small_batch(gy.contiguous(), weight, gx, d);
#endif
    backward_input_kernel<scalar_t>(gy, weight, gx, d);
  });
  return gx.view(shape);
}

}  // namespace

TORCH_LIBRARY_IMPL(bioplaus, CPU, m) {
  m.impl("linear_backward_input", linear_backward_input_cpu);
}

}  // namespace bioplaus
