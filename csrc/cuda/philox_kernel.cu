// philox_fill on CUDA: one thread per counter block (one Philox call; its 8 uniform or 4 bits/normal
// elements, see common/philox.h), grid-stride loop with 64-bit indices. The generator code is the host code of
// common/philox.h compiled for the device, so uniform and bits outputs equal the CPU's bit for bit.
#include "philox.h"

#include "cuda/launch.cuh"

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>

namespace bioplaus {
namespace {

constexpr int kThreads = 256;

// Counter blocks the elements [0, numel) read (common/philox.h): 8 uniform or 4 bits/normal elements each.
int64_t blocks_for(int64_t numel, philox::Distribution d) {
  if (d == philox::Distribution::kUniform) {
    return (numel + philox::kGroupElems - 1) / philox::kGroupElems * philox::kGroupBlocks;
  }
  return (numel + 3) / 4;
}

template <typename scalar_t>
__global__ void philox_fill_kernel(scalar_t* __restrict__ out, int64_t numel, int64_t blocks, philox::Key key,
                                   uint64_t step, philox::Distribution d, float scale) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; b < blocks; b += stride) {
    const philox::Words v = philox::block_words(key, static_cast<uint64_t>(b), step);
    if (d == philox::Distribution::kUniform) {
      // Block b = 16 g + l holds elements 128 g + 16 s + l, s < 8: a warp's 16 lanes of one group write
      // 16 consecutive elements per slot.
      const int64_t e0 = (b / philox::kGroupBlocks) * philox::kGroupElems + b % philox::kGroupBlocks;
#pragma unroll
      for (int s = 0; s < 8; ++s) {
        const int64_t e = e0 + philox::kGroupBlocks * s;
        if (e < numel) out[e] = static_cast<scalar_t>(philox::mul_rn(scale, philox::uniform_half(v.w[s >> 1], s & 1)));
      }
      continue;
    }
    const int64_t e0 = 4 * b;
    const int n = static_cast<int>(min(int64_t{4}, numel - e0));
    for (int j = 0; j < n; ++j) {
      if (d == philox::Distribution::kBits) {
        out[e0 + j] = static_cast<scalar_t>(v.w[j]);
      } else {
        out[e0 + j] = static_cast<scalar_t>(philox::mul_rn(scale, philox::normal_sample(v, j)));
      }
    }
  }
}

template <typename scalar_t>
void launch(scalar_t* out, int64_t numel, philox::Key key, uint64_t step, philox::Distribution d, float scale,
            int device) {
  const int64_t blocks = blocks_for(numel, d);
  launch_kernel(philox_fill_kernel<scalar_t>, grid_stride_blocks(blocks, kThreads, device), kThreads, 0, out, numel,
                blocks, key, step, d, scale);
}

at::Tensor philox_fill_cuda(const at::Tensor& like, int64_t seed, int64_t stream, int64_t step,
                            c10::string_view distribution, double scale) {
  const philox::Distribution d = check_philox_fill_inputs(like, seed, stream, step, distribution);
  const DeviceGuard guard(like.device());
  at::Tensor out = at::empty(like.sizes(), like.options().memory_format(at::MemoryFormat::Contiguous));
  const int64_t numel = out.numel();
  if (numel == 0) return out;
  const philox::Key key = philox::make_key(static_cast<uint64_t>(seed), static_cast<uint64_t>(stream));
  const float scale_f = static_cast<float>(scale);
  const int device = like.get_device();
  if (d == philox::Distribution::kBits) {
    launch(out.mutable_data_ptr<int64_t>(), numel, key, static_cast<uint64_t>(step), d, scale_f, device);
  } else {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "philox_fill_cuda", [&] {
      launch(out.mutable_data_ptr<scalar_t>(), numel, key, static_cast<uint64_t>(step), d, scale_f, device);
    });
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(bioplaus, BIOPLAUS_KERNEL_KEY, m) {
  m.impl("philox_fill", philox_fill_cuda);
}

}  // namespace bioplaus
