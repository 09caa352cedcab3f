"""Counter-based random tensors: ``torch.ops.bioplaus.philox_fill`` and its fake kernels.

Element ``e`` (row-major flat index) of ``philox(shape, seed, stream, step)`` is drawn from Philox4x32-10 with
key ``seed ^ mix64(stream)`` (splitmix64 finaliser; stream 0 uses the seed itself); counter block ``b`` is
``(lo32(b), hi32(b), lo32(step), hi32(step))``. csrc/common/philox.h defines the generator, the element
mapping and the conversions once for the CPU and CUDA kernels, and ``bioplaus_kernels.reference.philox``
re-implements them in PyTorch for the tests.

* ``"uniform"``: 8 elements per block, a 16-bit half-word each: ``e = 128 g + 16 s + l`` reads block
  ``16 g + l``, word ``s // 2``, bits ``16 * (s % 2)`` and up (h), and gives ``(h - 2**15) * 2**-15`` in
  [-1, 1): exact, so bit-identical on every device (the layout lets a 16-lane vector fill 128 consecutive
  elements; half the generator calls of a 32-bit sample).
* ``"normal"``: block ``e // 4``; Box-Muller on the word pairs (0, 1) and (2, 3); bit-identical run to run,
  equal across devices to a few ulp (libm ``log``/``cos``/``sin`` differ).
* ``"bits"``: block ``e // 4``, word ``e % 4``, the raw 32-bit word as int64 (``scale`` ignored), for tests.

Values are computed in float32, multiplied by ``float32(scale)`` and then converted to the output dtype. The
op has no differentiable inputs (``like`` only gives shape, dtype and device), so it needs no autograd.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from ._checks import check_seed_stream_step, dtype_name

_ops = torch.ops.bioplaus

DISTRIBUTIONS = ("uniform", "normal", "bits")


def _check_fill(like: torch.Tensor, seed: int, stream: int, step: int, distribution: str) -> None:
    op = "philox_fill"
    torch._check(distribution in DISTRIBUTIONS,
                 lambda: f"{op}: distribution must be 'uniform' or 'normal' (or 'bits' for the raw words), "
                         f"got '{distribution}'")
    check_seed_stream_step(op, seed, stream, step)
    dt = like.dtype
    if distribution == "bits":
        torch._check(dt == torch.int64, lambda: f"{op}: distribution 'bits' needs an int64 tensor, got {dtype_name(dt)}")
    elif like.device.type == "cuda":
        torch._check(dt in (torch.float32, torch.float64, torch.float16, torch.bfloat16),
                     lambda: f"{op}: like must be float32, float64, float16 or bfloat16 on CUDA, got {dtype_name(dt)}")
    else:
        torch._check(dt in (torch.float32, torch.float64),
                     lambda: f"{op}: like must be float32 or float64 on the CPU, got {dtype_name(dt)}")


@torch.library.register_fake("bioplaus::philox_fill")
def _philox_fill_fake(like, seed, stream=0, step=0, distribution="uniform", scale=1.0):
    _check_fill(like, seed, stream, step, distribution)
    return like.new_empty(like.shape)


@torch.library.register_fake("bioplaus::philox4x32_10")
def _philox4x32_10_fake(counter, key):
    torch._check(counter.dim() == 2 and counter.shape[1] == 4 and counter.dtype == torch.int64,
                 lambda: f"philox4x32_10: counter must be an int64 tensor of shape [N, 4], got {tuple(counter.shape)}")
    torch._check(key.dim() == 2 and key.shape[1] == 2 and key.dtype == torch.int64,
                 lambda: f"philox4x32_10: key must be an int64 tensor of shape [N, 2], got {tuple(key.shape)}")
    return counter.new_empty(counter.shape[0], 4)


def philox(shape: Union[int, Sequence[int]], seed: int, stream: int = 0, step: int = 0, distribution: str = "uniform",
           scale: float = 1.0, dtype: Optional[torch.dtype] = None,
           device: Union[str, torch.device] = "cpu") -> torch.Tensor:
    """A new contiguous tensor of ``shape`` whose element ``e`` is ``scale * sample(e)``.

    ``seed``, ``stream`` (e.g. a layer id) and ``step`` (0 for fixed matrices, the training step for per-step
    redraws) are integers in [0, 2**63). ``dtype`` defaults to float32 (int64 for ``"bits"``). The same
    arguments give the same tensor on every call and, for ``"uniform"`` and ``"bits"``, on every device.
    """
    if isinstance(shape, int):
        shape = (shape,)
    if dtype is None:
        dtype = torch.int64 if distribution == "bits" else torch.float32
    # A zero-stride view carries shape, dtype and device without allocating; its values are never read.
    like = torch.empty((), dtype=dtype, device=device).expand(*shape)
    return _ops.philox_fill(like, int(seed), int(stream), int(step), distribution, float(scale))
