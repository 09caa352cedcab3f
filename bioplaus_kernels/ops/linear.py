"""Fully connected layer whose input gradient goes through a feedback matrix: the ops ``torch.ops.bioplaus.linear``
(forward; its autograd kernel is C++, csrc/linear_autograd.cpp) and ``torch.ops.bioplaus.linear_backward_input``,
their fake kernels and functional forms.

``linear(x, weight, bias, *, feedback=..., ..., matrix=None)`` computes ``F.linear(x, weight, bias)``; its
backward returns the true local gradients of weight and bias and, for x, ``grad_y @ B`` with B the feedback
matrix of the spec (see ``ops.feedback_source``), which the kernels build tile by tile on the fly and never
store, or the given stored ``matrix``.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ._checks import check_float_dtype, check_same, shape_str
from .feedback_source import check_feedback_matrix, check_feedback_spec

_ops = torch.ops.bioplaus


# Fake kernel: the checks and messages of check_linear_backward_input_inputs (csrc/linear.cpp), in its order.
@torch.library.register_fake("bioplaus::linear_backward_input")
def _linear_backward_input_fake(grad_y, weight, feedback="weight", seed=0, stream=0, step=0, distribution="uniform",
                                scale=1.0):
    op = "linear_backward_input"
    check_feedback_spec(op, feedback, seed, stream, step, distribution)
    torch._check(weight.dim() == 2, lambda: f"{op}: weight must be 2-D [out_features, in_features], got a "
                                            f"{weight.dim()}-D tensor of shape {shape_str(weight.shape)}")
    torch._check(grad_y.dim() >= 1,
                 lambda: f"{op}: grad_y must have at least 1 dimension [..., out_features], got a 0-D tensor")
    check_float_dtype(op, "weight", weight)
    check_same(op, "grad_y", grad_y, "weight", weight)
    out_features, in_features = weight.shape
    torch._check(grad_y.shape[-1] == out_features,
                 lambda: f"{op}: grad_y has {grad_y.shape[-1]} features in its last dimension but weight expects "
                         f"out_features={out_features}")
    return grad_y.new_empty((*grad_y.shape[:-1], in_features))


# Fake kernel of the forward: the checks of linear_forward (csrc/linear.cpp), then F.linear's shapes.
@torch.library.register_fake("bioplaus::linear")
def _linear_fake(x, weight, bias=None, feedback="weight", seed=0, stream=0, step=0, distribution="uniform",
                 scale=1.0, matrix=None):
    op = "linear"
    check_feedback_spec(op, feedback, seed, stream, step, distribution)
    check_feedback_matrix(op, feedback, matrix, weight)
    return F.linear(x, weight, bias)


def linear_backward_input(grad_y: torch.Tensor, weight: torch.Tensor, *, feedback: str = "weight", seed: int = 0,
                          stream: int = 0, step: int = 0, distribution: str = "uniform",
                          scale: float = 1.0) -> torch.Tensor:
    """``grad_x[..., i] = sum_o grad_y[..., o] * B[o, i]`` with B the feedback matrix of the spec
    (``weight`` [out, in] itself for ``feedback="weight"``). grad_y is [..., out]; returns [..., in]."""
    return _ops.linear_backward_input(grad_y, weight, feedback, int(seed), int(stream), int(step), distribution,
                                      float(scale))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *, feedback: str = "weight",
           seed: int = 0, stream: int = 0, step: int = 0, distribution: str = "uniform", scale: float = 1.0,
           matrix: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` whose backward sends ``grad_y @ B`` to x (B of the feedback spec, see
    ``ops.feedback_source``, or ``matrix`` when given: a stored B of weight's shape, with feedback "weight")
    and the true gradients to weight and bias. ``feedback="weight"`` without a matrix is backprop."""
    return _ops.linear(x, weight, bias, feedback, int(seed), int(stream), int(step), distribution, float(scale),
                       matrix)
