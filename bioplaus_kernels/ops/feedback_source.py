"""The feedback spec of every input-gradient op, and ``feedback_source``: the matrix B it names, materialised.

An input-gradient op (``linear_backward_input``, ``lc2d_backward_input``) takes ``weight`` plus the spec
``feedback="weight", seed=0, stream=0, step=0, distribution="uniform", scale=1.0`` and multiplies by B, of
weight's shape, element ``e`` being the row-major flat index (csrc/common/feedback.h)::

    "weight":      B = weight                       (backprop, a stored FA matrix, TP's inverse weight)
    "random":      B = R                            (weight's values are never read)
    "sign":        B = sign(weight) * scale         (sign(0) = 0)
    "random_sign": B = |R| * sign(weight)

where ``R = philox_fill(weight, seed, stream, step, distribution, scale)`` (see ``ops.philox``). The kernels
build B tile by tile on the fly; ``feedback_source`` materialises it (for Conv2d's backward, tests, metrics
and ``feedback_weight()``) with the op ``bioplaus::feedback_source`` on weight's device, in one pass.
"""
from __future__ import annotations

import torch

from ._checks import check_same, check_seed_stream_step, dtype_name, shape_str

_ops = torch.ops.bioplaus

FEEDBACK_MODES = ("weight", "random", "sign", "random_sign")
FEEDBACK_DISTRIBUTIONS = ("uniform", "normal")


def check_feedback_spec(op: str, feedback: str, seed: int, stream: int, step: int, distribution: str) -> None:
    """The Python mirror of check_feedback_spec (csrc/feedback_source.cpp): same checks, same messages."""
    if (feedback in FEEDBACK_MODES and distribution in FEEDBACK_DISTRIBUTIONS and type(seed) is int
            and type(stream) is int and type(step) is int and seed >= 0 and stream >= 0 and step >= 0):
        # the common case in plain Python: torch._check's machinery is slow per call (docs/performance.md section 7)
        return
    torch._check(feedback in FEEDBACK_MODES,
                 lambda: f"{op}: feedback must be 'weight', 'random', 'sign' or 'random_sign', got '{feedback}'")
    torch._check(distribution in FEEDBACK_DISTRIBUTIONS,
                 lambda: f"{op}: distribution must be 'uniform' or 'normal', got '{distribution}'")
    check_seed_stream_step(op, seed, stream, step)


def check_feedback_matrix(op: str, feedback: str, matrix, weight: torch.Tensor) -> None:
    """The Python mirror of check_feedback_matrix (csrc/feedback_source.cpp): a layer op's stored matrix (when
    given) has weight's shape, device and dtype, with feedback "weight"."""
    if matrix is None:
        return
    torch._check(feedback == "weight", lambda: f"{op}: a matrix is the feedback itself; feedback must be "
                                               f"'weight' with it, got '{feedback}'")
    torch._check(matrix.shape == weight.shape, lambda: f"{op}: matrix must have weight's shape "
                                                       f"{shape_str(weight.shape)}, got {shape_str(matrix.shape)}")
    check_same(op, "matrix", matrix, "weight", weight)


_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


# Fake kernel: check_feedback_source_inputs (csrc/feedback_source.cpp), same order and messages.
@torch.library.register_fake("bioplaus::feedback_source")
def _feedback_source_fake(weight, feedback="weight", seed=0, stream=0, step=0, distribution="uniform", scale=1.0):
    check_feedback_spec("feedback_source", feedback, seed, stream, step, distribution)
    torch._check(weight.dtype in _FLOAT_DTYPES, lambda: f"feedback_source: weight must be float32, float64, float16 "
                                                        f"or bfloat16, got {dtype_name(weight.dtype)}")
    return torch.empty_like(weight, memory_format=torch.contiguous_format)


def feedback_source(weight: torch.Tensor, feedback: str, seed: int = 0, stream: int = 0, step: int = 0,
                    distribution: str = "uniform", scale: float = 1.0) -> torch.Tensor:
    """B of the spec, materialised on weight's device in weight's dtype (a new tensor, except that
    ``"weight"`` returns ``weight`` itself, detached), by the op ``torch.ops.bioplaus.feedback_source`` in one
    pass. Not differentiable: B is a feedback matrix."""
    check_feedback_spec("feedback_source", feedback, seed, stream, step, distribution)
    w = weight.detach()
    if feedback == "weight":
        return w
    return _ops.feedback_source(w, feedback, int(seed), int(stream), int(step), distribution, float(scale))
