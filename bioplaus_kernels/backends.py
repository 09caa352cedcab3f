"""Which algorithm computes each pass of the LC layer, in the manner of ``torch.backends.cudnn``.

Every pass (forward, input gradient, weight gradient) has several algorithms with the same semantics
(docs/algorithms.md):

    device   algorithms
    cuda     fused (hand-written implicit-GEMM kernels, FFMA), library (gather kernels + cuBLAS batched
             GEMMs in a bounded workspace), fused_tc (the fused kernels on tensor cores; float16, bfloat16,
             and float32 as TF32 while torch.backends.cuda.matmul.allow_tf32 is on)
    cpu      direct (position-vectorised loops, 16 positions a SIMD vector: small patches and channel counts),
             library (gathered patches + the CPU BLAS in per-thread buffers)

A call takes, in this order: the forced algorithm of its pass; with ``autotune`` on (and
``torch.use_deterministic_algorithms`` off), the fastest candidate, timed on the first call of its (pass,
geometry, dtype, device) and cached for the process; otherwise the default table of measured winners per
shape class (csrc/lc2d_selection.cpp), else the device's first algorithm.

    import bioplaus_kernels
    bioplaus_kernels.backends.lc2d.autotune = True            # or BIOPLAUS_LC2D_AUTOTUNE=1
    with bioplaus_kernels.backends.lc2d.force("library"):      # or BIOPLAUS_LC2D_ALGORITHM=library
        ...
    with bioplaus_kernels.backends.lc2d.force(backward_input="library"):
        ...
    bioplaus_kernels.backends.lc2d.workspace_limit = 256 << 20  # bytes; or BIOPLAUS_LC2D_WORKSPACE_MB=256

The state is process-wide (like cuDNN's flags) and lives in the extension, so it also governs direct
``torch.ops.bioplaus.lc2d_*`` calls.
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List, Optional

import torch

__all__ = ["lc2d", "Lc2dBackend", "ALGORITHMS", "PASSES", "candidates"]

ALGORITHMS = {"cuda": ("fused", "library", "fused_tc"), "cpu": ("direct", "library")}
PASSES = ("forward", "backward_input", "backward_weight")


def candidates(device: str, dtype: torch.dtype, pass_: str) -> tuple:
    """The algorithms a call of `pass_` ("forward", "backward_input", "backward_weight") may take on `device`
    ("cpu" or "cuda") in `dtype`, in preference order: fused_tc runs in float16 and bfloat16, and in float32 while
    ``torch.backends.cuda.matmul.allow_tf32`` is on."""
    if pass_ not in PASSES:
        raise ValueError(f"backends.lc2d: pass must be one of {', '.join(PASSES)}, got {pass_!r}")
    tensor_cores = dtype in (torch.float16, torch.bfloat16) or (
        dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32)
    return tuple(a for a in ALGORITHMS[device] if a != "fused_tc" or tensor_cores)


class Lc2dBackend:
    """The selection state of one operator library (``torch.ops.bioplaus``; the tests also drive the CPU
    execution layer's ``torch.ops.bioplaus_emu`` through this class)."""

    def __init__(self, namespace) -> None:
        self._ops = namespace

    @property
    def autotune(self) -> bool:
        """Time every candidate on the first call of a (pass, geometry, dtype, device) and keep the winner."""
        return bool(self._ops.lc2d_selection_autotune())

    @autotune.setter
    def autotune(self, enabled: bool) -> None:
        self._ops.lc2d_selection_set_autotune(bool(enabled))

    @property
    def workspace_limit(self) -> int:
        """Bytes the library algorithms may gather into per call (at least one position always fits)."""
        return int(self._ops.lc2d_selection_workspace_limit())

    @workspace_limit.setter
    def workspace_limit(self, nbytes: int) -> None:
        self._ops.lc2d_selection_set_workspace_limit(int(nbytes))

    def forced(self) -> Dict[str, Optional[str]]:
        """The forced algorithm of each pass (None: not forced)."""
        return {p: (a or None) for p, a in zip(PASSES, self._ops.lc2d_selection_forced())}

    def set_forced(self, algorithm: Optional[str] = None, *, forward: Optional[str] = None,
                   backward_input: Optional[str] = None, backward_weight: Optional[str] = None) -> None:
        """Forces `algorithm` on every pass, or the named passes' algorithms (None: choose as usual). A name
        the call's device lacks is an error at that call, naming the device's algorithms."""
        names = [algorithm if p is None else p for p in (forward, backward_input, backward_weight)]
        known = sorted({a for algos in ALGORITHMS.values() for a in algos})
        for n in names:
            if n is not None and n not in known:
                raise ValueError(f"backends.lc2d: algorithm must be one of {known}, got {n!r}")
        self._ops.lc2d_selection_set_forced(*[n or "" for n in names])

    @contextlib.contextmanager
    def force(self, algorithm: Optional[str] = None, *, forward: Optional[str] = None,
              backward_input: Optional[str] = None, backward_weight: Optional[str] = None) -> Iterator[None]:
        """set_forced for the duration of a ``with`` block; the previous setting comes back afterwards."""
        previous = self._ops.lc2d_selection_forced()
        self.set_forced(algorithm, forward=forward, backward_input=backward_input, backward_weight=backward_weight)
        try:
            yield
        finally:
            self._ops.lc2d_selection_set_forced(*previous)

    def cache(self) -> List[str]:
        """The autotuner's winners, one line per key: "pass geometry dtype device -> algorithm"."""
        return list(self._ops.lc2d_selection_cache())

    def clear_cache(self) -> None:
        self._ops.lc2d_selection_clear_cache()

    def last(self) -> Dict[str, Optional[str]]:
        """The algorithm each pass used at its latest call in this process (None: not called yet)."""
        return {p: (a or None) for p, a in zip(PASSES, self._ops.lc2d_selection_last())}

    @staticmethod
    def shape_class(input_shape, out_channels: int, kernel_size, stride) -> str:
        """The default table's class of a layer: patch length and window overlap, e.g. "mid-high"."""
        two = lambda v: [v, v] if isinstance(v, int) else list(v)  # noqa: E731
        return torch.ops.bioplaus.lc2d_shape_class(list(input_shape), int(out_channels), two(kernel_size), two(stride))


lc2d = Lc2dBackend(torch.ops.bioplaus)
