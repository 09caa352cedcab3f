// linear_backward_input on the CPU: float32 and float64, all threads, B never materialised.
//
// grad_x[M, in] = grad_y[M, out] * B[out, in] is split into column tiles of B (and of grad_x):
//   grad_x[:, c0 : c0 + tw] = grad_y * B[:, c0 : c0 + tw]
// one GEMM per tile (at::mm, torch's BLAS with all its threads), one tile at a time. Each element of
// grad_x is one dot product over `out` inside one GEMM, so the result needs no reduction and is
// bit-identical run to run (for a given thread count, which sets the tile width and the BLAS's split).
// The modes differ only in where the tile comes from: "weight" passes a view of weight; "random" /
// "sign" / "random_sign" build the tile (out x tw, within kTileBytes per thread) in a kept buffer, all
// threads filling rows of it (fill_feedback), just before its GEMM. Every mode runs the same GEMMs on the
// same tile shapes, so a spec run equals a "weight" run on the materialised B bit for bit. A small layer
// is one tile: its whole B in one contiguous run, and one GEMM exactly as backprop's.
#include "linear.h"

#include "cpu/fill_feedback.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

namespace bioplaus {
namespace {

constexpr int64_t kTileBytes = int64_t{1} << 20;  // B tile bytes per thread: stays in L2 from fill to GEMM
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

// Columns per tile: all of them if B fits the threads' budget, else the most that do, in whole kColAlign.
int64_t tile_width(int64_t out, int64_t in, int64_t elem_size) {
  const int64_t budget = kTileBytes * at::get_num_threads();
  const int64_t by_budget = std::max<int64_t>(budget / (elem_size * std::max<int64_t>(out, 1)) / kColAlign, 1);
  return std::min(by_budget * kColAlign, in);
}

// A tile row of weight is a short run (a few cache lines) at a large stride, a new page per row: the
// hardware prefetcher barely ramps up on one before the next, so reading weight's tile rows cost as much
// as ~1 ns per element on large layers. Fetching the row kPrefetchRows ahead hides it.
constexpr int64_t kPrefetchRows = 4;

template <typename scalar_t>
void prefetch_run(const scalar_t* p, int64_t count) {
  const char* c = reinterpret_cast<const char*>(p);
  for (int64_t b = 0; b < count * int64_t(sizeof(scalar_t)); b += 64) __builtin_prefetch(c + b);
}

template <typename scalar_t>
void backward_input_kernel(const at::Tensor& gy, const at::Tensor& weight, at::Tensor& gx, const LinearDims& d) {
  const int64_t tw = tile_width(d.out, d.in, sizeof(scalar_t));
  const int64_t tiles = (d.in + tw - 1) / tw;
  const FeedbackSpec& f = d.feedback;
  // "sign" / "random_sign" read weight row by row (element (o, i) at o * in + i): a contiguous weight.
  const bool transforms_weight = f.reads_weight() && f.mode != FeedbackMode::kWeight;
  const at::Tensor w = transforms_weight ? weight.contiguous() : weight;
  const scalar_t* wp = transforms_weight ? w.const_data_ptr<scalar_t>() : nullptr;
  scalar_t* tp = f.mode == FeedbackMode::kWeight ? nullptr : tile_scratch<scalar_t>(d.out * tw);
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t c0 = t * tw, cw = std::min(tw, d.in - c0);
    at::Tensor gx_t = gx.narrow(1, c0, cw);
    if (f.mode == FeedbackMode::kWeight) {
      at::mm_out(gx_t, gy, weight.narrow(1, c0, cw));
      continue;
    }
    // tp[o * cw + k] = B[o, c0 + k]: row o of the tile is the run of elements o * in + c0 .. + cw; the
    // threads take blocks of rows, and a tile of whole rows (cw == in) gives each one contiguous run.
    at::parallel_for(0, d.out, std::max<int64_t>(1, kFillGrain / cw), [&](int64_t o0, int64_t o1) {
      if (cw == d.in) {
        const int64_t e0 = o0 * d.in;
        fill_feedback<scalar_t>(f, wp ? wp + e0 : nullptr, e0, (o1 - o0) * d.in, tp + e0);
        return;
      }
      for (int64_t o = o0; o < o1; ++o) {
        const int64_t e0 = o * d.in + c0;
        if (wp && o + kPrefetchRows < o1) prefetch_run(wp + e0 + kPrefetchRows * d.in, cw);
        fill_feedback<scalar_t>(f, wp ? wp + e0 : nullptr, e0, cw, tp + o * cw);
      }
    });
    at::mm_out(gx_t, gy, at::from_blob(tp, {d.out, cw}, gy.options()));
  }
}

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
  AT_DISPATCH_FLOATING_TYPES(grad_y.scalar_type(), "linear_backward_input_cpu",
                             [&] { backward_input_kernel<scalar_t>(gy, weight, gx, d); });
  return gx.view(shape);
}

}  // namespace

TORCH_LIBRARY_IMPL(bioplaus, CPU, m) {
  m.impl("linear_backward_input", linear_backward_input_cpu);
}

}  // namespace bioplaus
