// The CPU execution layer's stand-in for CUDA's warp matrix functions (nvcuda::wmma, <mma.h>), for the
// shapes the kernels use: 16-bit m16n16k16 and TF32 m16n16k8 (test-only; docs/emulation.md).
//
// A fragment holds its whole tile in every thread: the hardware spreads a tile over the 32 lanes of a
// warp in an unspecified layout, and kernels may only touch fragment elements all alike (fill, element-wise
// loops over num_elements), which the full copy honours. load/store/mma are warp-collective on the hardware;
// here each lane does the whole operation on its copy (the same values, 32 times). mma_sync multiplies
// exactly (a product of two 16-bit floats, or of two TF32 values, is exact in float) and adds in k order in
// float. __float_to_tf32 rounds to nearest, ties away from zero, to TF32's 10 fraction bits (cvt.rna.tf32).
// The preconditions the hardware does not check but silently miscomputes on are checked here and fail the
// launch: a tile pointer aligned to 256 bits, and ldm a multiple of 16 bytes.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

namespace cuda_emu {
// Records the first fault of the running launch; launch() throws it once the grid has run.
void fault(const std::string& message);
}  // namespace cuda_emu

namespace nvcuda {
namespace wmma {

namespace precision {
struct tf32 {};
}  // namespace precision

// What a fragment of element type T stores (TF32 lives in float).
template <typename T>
struct storage {
  using type = T;
};
template <>
struct storage<precision::tf32> {
  using type = float;
};

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static constexpr int rows = std::is_same<Use, matrix_b>::value ? K : M;
  static constexpr int cols = std::is_same<Use, matrix_a>::value ? K : N;
  static constexpr int num_elements = rows * cols;
  typename storage<T>::type x[num_elements];  // row-major
};

inline float __float_to_tf32(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  if ((u & 0x7F800000u) != 0x7F800000u) {  // finite: add half a TF32 ulp to the magnitude, then truncate
    u += 0x1000u;
    u &= 0xFFFFE000u;
  }
  std::memcpy(&v, &u, sizeof v);
  return v;
}

namespace detail {
inline void check_tile(const void* p, unsigned ldm, size_t elem, const char* what) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0) {
    cuda_emu::fault(std::string("wmma::") + what + ": the tile pointer is not 256-bit aligned");
  }
  if ((ldm * elem) % 16 != 0) {
    cuda_emu::fault(std::string("wmma::") + what + ": ldm = " + std::to_string(ldm) +
                    " elements is not a multiple of 16 bytes");
  }
}
}  // namespace detail

template <typename Use, int M, int N, int K, typename T, typename Layout>
inline void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const typename storage<T>::type* p, unsigned ldm) {
  using F = fragment<Use, M, N, K, T, Layout>;
  detail::check_tile(p, ldm, sizeof(*p), "load_matrix_sync");
  constexpr bool row = std::is_same<Layout, row_major>::value;
  for (int r = 0; r < F::rows; ++r) {
    for (int c = 0; c < F::cols; ++c) f.x[r * F::cols + c] = row ? p[r * ldm + c] : p[c * ldm + r];
  }
}

// The accumulator's load (layout given at run time, as store_matrix_sync's).
template <int M, int N, int K, typename T>
inline void load_matrix_sync(fragment<accumulator, M, N, K, T>& f, const T* p, unsigned ldm, layout_t layout) {
  detail::check_tile(p, ldm, sizeof(T), "load_matrix_sync");
  for (int r = 0; r < M; ++r) {
    for (int c = 0; c < N; ++c) f.x[r * N + c] = layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r];
  }
}

template <int M, int N, int K, typename T>
inline void store_matrix_sync(T* p, const fragment<accumulator, M, N, K, T>& f, unsigned ldm, layout_t layout) {
  detail::check_tile(p, ldm, sizeof(T), "store_matrix_sync");
  for (int r = 0; r < M; ++r) {
    for (int c = 0; c < N; ++c) (layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.x[r * N + c];
  }
}

template <typename Use, int M, int N, int K, typename T, typename Layout>
inline void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, T v) {
  for (auto& e : f.x) e = v;
}

template <int M, int N, int K, typename AT, typename LA, typename BT, typename LB>
inline void mma_sync(fragment<accumulator, M, N, K, float>& d, const fragment<matrix_a, M, N, K, AT, LA>& a,
                     const fragment<matrix_b, M, N, K, BT, LB>& b, const fragment<accumulator, M, N, K, float>& c) {
  // The operands in float once (a float16 conversion is a software routine on the host), b transposed so
  // that the innermost loop runs over contiguous k; the products and sums are those of the loop over k.
  float af[M * K], bt[N * K];
  for (int e = 0; e < M * K; ++e) af[e] = static_cast<float>(a.x[e]);
  for (int k = 0; k < K; ++k) {
    for (int j = 0; j < N; ++j) bt[j * K + k] = static_cast<float>(b.x[k * N + j]);
  }
  fragment<accumulator, M, N, K, float> out;
  for (int i = 0; i < M; ++i) {
    for (int j = 0; j < N; ++j) {
      float s = c.x[i * N + j];
      for (int k = 0; k < K; ++k) s += af[i * K + k] * bt[j * K + k];
      out.x[i * N + j] = s;
    }
  }
  d = out;
}

}  // namespace wmma
}  // namespace nvcuda
