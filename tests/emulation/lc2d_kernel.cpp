// The CUDA kernels and launchers of lc2d, compiled as host C++ for the CPU execution layer
// (docs/emulation.md): cuda_emu.h first, then the very file nvcc compiles.
#include "cuda_emu.h"

#include "cuda/lc2d_kernel.cu"
