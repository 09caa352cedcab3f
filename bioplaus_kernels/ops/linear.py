"""Fully connected layer whose input gradient goes through a feedback matrix: ``linear`` and the op
``torch.ops.bioplaus.linear_backward_input`` (its fake kernel and functional form).

``linear(x, weight, bias, *, feedback=..., ...)`` computes ``F.linear(x, weight, bias)``; its backward returns
the true local gradients of weight and bias and, for x, ``grad_y @ B`` with B the feedback matrix of the spec
(see ``ops.feedback_source``), which the kernels build tile by tile on the fly and never store.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .feedback_source import check_feedback_spec
from .lc2d import _check_dtype, _check_same, _shape

_ops = torch.ops.bioplaus


# Fake kernel: the checks and messages of check_linear_backward_input_inputs (csrc/linear.cpp), in its order.
@torch.library.register_fake("bioplaus::linear_backward_input")
def _linear_backward_input_fake(grad_y, weight, feedback="weight", seed=0, stream=0, step=0, distribution="uniform",
                                scale=1.0):
    op = "linear_backward_input"
    check_feedback_spec(op, feedback, seed, stream, step, distribution)
    torch._check(weight.dim() == 2, lambda: f"{op}: weight must be 2-D [out_features, in_features], got a "
                                            f"{weight.dim()}-D tensor of shape {_shape(weight.shape)}")
    torch._check(grad_y.dim() >= 1,
                 lambda: f"{op}: grad_y must have at least 1 dimension [..., out_features], got a 0-D tensor")
    _check_dtype(op, "weight", weight)
    _check_same(op, "grad_y", grad_y, "weight", weight)
    out_features, in_features = weight.shape
    torch._check(grad_y.shape[-1] == out_features,
                 lambda: f"{op}: grad_y has {grad_y.shape[-1]} features in its last dimension but weight expects "
                         f"out_features={out_features}")
    return grad_y.new_empty((*grad_y.shape[:-1], in_features))


def linear_backward_input(grad_y: torch.Tensor, weight: torch.Tensor, *, feedback: str = "weight", seed: int = 0,
                          stream: int = 0, step: int = 0, distribution: str = "uniform",
                          scale: float = 1.0) -> torch.Tensor:
    """``grad_x[..., i] = sum_o grad_y[..., o] * B[o, i]`` with B the feedback matrix of the spec
    (``weight`` [out, in] itself for ``feedback="weight"``). grad_y is [..., out]; returns [..., in]."""
    return _ops.linear_backward_input(grad_y, weight, feedback, int(seed), int(stream), int(step), distribution,
                                      float(scale))


class _LinearFeedback(torch.autograd.Function):
    """F.linear forward; backward with the input gradient through B and the true weight/bias gradients.
    (The ctx-in-forward form: a separate setup_context costs ~30 us per call in argument binding.)"""

    @staticmethod
    def forward(ctx, x, weight, bias, feedback, seed, stream, step, distribution, scale):
        ctx.save_for_backward(x, weight)
        ctx.spec = (feedback, seed, stream, step, distribution, scale)
        ctx.has_bias = bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_y):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _ops.linear_backward_input(grad_y, weight, *ctx.spec)
        if ctx.needs_input_grad[1]:
            grad_w = grad_y.reshape(-1, grad_y.shape[-1]).t() @ x.reshape(-1, x.shape[-1])
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_y.reshape(-1, grad_y.shape[-1]).sum(0)
        return grad_x, grad_w, grad_b, None, None, None, None, None, None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *, feedback: str = "weight",
           seed: int = 0, stream: int = 0, step: int = 0, distribution: str = "uniform",
           scale: float = 1.0) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` whose backward sends ``grad_y @ B`` to x (B of the feedback spec, see
    ``ops.feedback_source``) and the true gradients to weight and bias. ``feedback="weight"`` is backprop."""
    check_feedback_spec("linear", feedback, seed, stream, step, distribution)
    return _LinearFeedback.apply(x, weight, bias, feedback, int(seed), int(stream), int(step), distribution,
                                 float(scale))
