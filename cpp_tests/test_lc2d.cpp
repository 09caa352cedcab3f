// C++ (libtorch) test of bioplaus::lc2d_forward, run by ctest. It looks the operator up through the
// dispatcher, as any libtorch user would, checks it against a naive evaluation of the formula in
// csrc/lc2d.h (stride 2, asymmetric padding, dilation; float64 on the CPU, and on CUDA when the CUDA
// kernels are built and a GPU is present), and checks that x with the wrong channel count is rejected.
#include "lc2d.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdio>
#include <exception>
#include <optional>
#include <string>
#include <vector>

namespace {

using Lc2dForward = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                               c10::IntArrayRef, c10::IntArrayRef, c10::IntArrayRef);

// y[n, o, i, j] = bias[o, i, j]
//               + sum_{c,r,s} weight[i, j, o, c, r, s] * x[n, c, i*sH - pT + r*dH, j*sW - pL + s*dW]
at::Tensor naive_lc2d(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                      c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation) {
  const int64_t N = x.size(0), C_in = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t H_out = weight.size(0), W_out = weight.size(1), C_out = weight.size(2);
  const int64_t kH = weight.size(4), kW = weight.size(5);
  auto y = at::zeros({N, C_out, H_out, W_out}, x.options());
  auto xa = x.accessor<double, 4>();
  auto wa = weight.accessor<double, 6>();
  auto ya = y.accessor<double, 4>();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < C_out; ++o)
      for (int64_t i = 0; i < H_out; ++i)
        for (int64_t j = 0; j < W_out; ++j) {
          double acc = bias ? bias->accessor<double, 3>()[o][i][j] : 0.0;
          for (int64_t c = 0; c < C_in; ++c)
            for (int64_t r = 0; r < kH; ++r)
              for (int64_t s = 0; s < kW; ++s) {
                const int64_t h = i * stride[0] - padding[0] + r * dilation[0];
                const int64_t w = j * stride[1] - padding[2] + s * dilation[1];
                if (h >= 0 && h < H && w >= 0 && w < W) acc += wa[i][j][o][c][r][s] * xa[n][c][h][w];
              }
          ya[n][o][i][j] = acc;
        }
  return y;
}

}  // namespace

int main() {
  at::manual_seed(0);
  auto forward = c10::Dispatcher::singleton().findSchemaOrThrow("bioplaus::lc2d_forward", "").typed<Lc2dForward>();

  const std::vector<int64_t> stride{2, 2}, padding{1, 2, 0, 1}, dilation{2, 1};  // padding: T, B, L, R
  const int64_t N = 2, C_in = 3, H = 7, W = 6, C_out = 4, kH = 3, kW = 2;
  const int64_t H_out = bioplaus::lc2d_out_size(H, kH, stride[0], padding[0], padding[1], dilation[0]);
  const int64_t W_out = bioplaus::lc2d_out_size(W, kW, stride[1], padding[2], padding[3], dilation[1]);
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  const auto x = at::randn({N, C_in, H, W}, f64);
  const auto weight = at::randn({H_out, W_out, C_out, C_in, kH, kW}, f64);
  const auto bias = at::randn({C_out, H_out, W_out}, f64);

  int cases = 0, failures = 0;
  double max_diff = 0.0;
  // Runs the operator on `device` (x given on the CPU, in any layout) and compares with naive_lc2d.
  auto check = [&](const char* what, const at::Tensor& xin, const std::optional<at::Tensor>& b, at::Device device) {
    ++cases;
    try {
      // Calls the library directly too (which also keeps it linked): the geometry must match.
      const auto g = bioplaus::check_lc2d_forward_inputs(xin, weight, b, stride, padding, dilation);
      TORCH_CHECK(g.H_out == H_out && g.W_out == W_out, "geometry ", g.H_out, "x", g.W_out, ", expected ",
                  H_out, "x", W_out);
      std::optional<at::Tensor> b_dev;
      if (b) b_dev = b->to(device);
      const at::Tensor y = forward.call(xin.to(device), weight.to(device), b_dev, stride, padding, dilation).cpu();
      const at::Tensor ref = naive_lc2d(xin, weight, b, stride, padding, dilation);
      TORCH_CHECK(y.sizes() == ref.sizes(), "output shape ", y.sizes(), ", expected ", ref.sizes());
      const double diff = (y - ref).abs().max().item<double>();
      max_diff = std::max(max_diff, diff);
      TORCH_CHECK(diff <= 1e-10, "max |y - naive| = ", diff);
    } catch (const c10::Error& e) {
      std::fprintf(stderr, "FAIL %s: %s\n", what, e.what_without_backtrace());
      ++failures;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "FAIL %s: %s\n", what, e.what());
      ++failures;
    }
  };
  check("cpu, bias, contiguous x", x, bias, at::kCPU);
  check("cpu, no bias, channels-last x", x.contiguous(at::MemoryFormat::ChannelsLast), std::nullopt, at::kCPU);
#ifdef BIOPLAUS_WITH_CUDA
  if (at::hasCUDA()) {
    check("cuda, bias, contiguous x", x, bias, at::kCUDA);
    check("cuda, no bias, channels-last x", x.contiguous(at::MemoryFormat::ChannelsLast), std::nullopt, at::kCUDA);
  }
#endif

  // x with the wrong channel count must be rejected with the documented message.
  bool rejected = false;
  try {
    forward.call(at::randn({N, C_in + 1, H, W}, f64), weight, bias, stride, padding, dilation);
    std::fprintf(stderr, "FAIL bad C_in: no error raised\n");
  } catch (const c10::Error& e) {
    rejected = std::string(e.what()).find("channels but weight expects C_in=") != std::string::npos;
    if (!rejected) std::fprintf(stderr, "FAIL bad C_in: unexpected message: %s\n", e.what_without_backtrace());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "FAIL bad C_in: not a c10::Error: %s\n", e.what());
  }
  if (!rejected) ++failures;

  std::printf("test_lc2d: %s (lc2d_forward vs naive: %d cases, max |diff| %.3g; bad C_in %s)\n",
              failures ? "FAILED" : "OK", cases, max_diff, rejected ? "rejected" : "NOT rejected");
  return failures ? 1 : 0;
}
