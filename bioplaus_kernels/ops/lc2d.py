"""Locally connected 2D: functional API and fake kernels of ``torch.ops.bioplaus.lc2d`` (the layer, with its C++
autograd: csrc/lc2d_autograd.cpp) and of its kernel ops ``torch.ops.bioplaus.lc2d_forward`` /
``lc2d_backward_input`` / ``lc2d_backward_weight``.

Shapes (see csrc/lc2d.h for the index maps)::

    x      [N, C_in, H, W]
    weight [H_out, W_out, C_out, C_in, kH, kW]
    bias   [C_out, H_out, W_out] or None
    y      [N, C_out, H_out, W_out]

The input gradient is ``lc2d_backward_input(grad_y, weight, ..., feedback=..., seed=..., ...)``: it multiplies
by the matrix B of weight's shape that the feedback spec names (``ops.feedback_source``), so the same kernel
serves backprop and stored feedback matrices (``feedback="weight"``: B = weight), regenerated random and
sign-symmetric feedback (B built on the fly, never stored) and the transposed LC layers of target
propagation.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from .._geometry import IntPair, Padding, pair, resolve_padding
from ._checks import (check_dim, check_float_dtype, check_int_list, check_lc2d_grid,
                      check_lc2d_weight, check_same, resolve_lc2d_output, shape_str)
from .feedback_source import check_feedback_matrix, check_feedback_spec

_ops = torch.ops.bioplaus

# ---------------------------------------------------------------------------------------------------
# Fake kernels: the same checks and messages as csrc/lc2d.cpp, so that torch.compile and FakeTensor
# tracing reject exactly what the real kernels reject.
# ---------------------------------------------------------------------------------------------------
@torch.library.register_fake("bioplaus::lc2d_forward")
def _lc2d_forward_fake(x, weight, bias, stride, padding, dilation):
    op = "lc2d_forward"
    check_dim(op, "x", x, 4, "[N, C_in, H, W]")
    check_lc2d_weight(op, "weight", weight)
    check_same(op, "x", x, "weight", weight)
    H_out, W_out, C_out, C_in, kH, kW = weight.shape
    torch._check(x.shape[1] == C_in, lambda: f"{op}: x has {x.shape[1]} channels but weight expects C_in={C_in}")
    out = resolve_lc2d_output(op, x.shape[2:], (kH, kW), stride, padding, dilation)
    check_lc2d_grid(op, out, x.shape[2:], (kH, kW), stride, dilation, (H_out, W_out), "weight")
    if bias is not None:
        check_same(op, "bias", bias, "weight", weight)
        want = (C_out, out[0], out[1])
        torch._check(tuple(bias.shape) == want,
                     lambda: f"{op}: bias must have shape [C_out, H_out, W_out] = {shape_str(want)}, got {shape_str(bias.shape)}")
    return x.new_empty((x.shape[0], C_out, out[0], out[1]))


@torch.library.register_fake("bioplaus::lc2d_backward_input")
def _lc2d_backward_input_fake(grad_y, weight, input_size, stride, padding, dilation, feedback="weight", seed=0,
                              stream=0, step=0, distribution="uniform", scale=1.0):
    op = "lc2d_backward_input"
    check_feedback_spec(op, feedback, seed, stream, step, distribution)
    check_int_list(op, "input_size", input_size, 2, 1)
    check_dim(op, "grad_y", grad_y, 4, "[N, C_out, H_out, W_out]")
    check_lc2d_weight(op, "weight", weight)
    check_same(op, "grad_y", grad_y, "weight", weight)
    H_out, W_out, C_out, C_in, kH, kW = weight.shape
    out = resolve_lc2d_output(op, input_size, (kH, kW), stride, padding, dilation)
    check_lc2d_grid(op, out, input_size, (kH, kW), stride, dilation, (H_out, W_out), "weight")
    torch._check(grad_y.shape[1] == C_out,
                 lambda: f"{op}: grad_y has {grad_y.shape[1]} channels but weight expects C_out={C_out}")
    check_lc2d_grid(op, out, input_size, (kH, kW), stride, dilation, grad_y.shape[2:], "grad_y")
    return grad_y.new_empty((grad_y.shape[0], C_in, input_size[0], input_size[1]))


@torch.library.register_fake("bioplaus::lc2d_backward_weight")
def _lc2d_backward_weight_fake(grad_y, x, kernel_size, stride, padding, dilation):
    op = "lc2d_backward_weight"
    check_int_list(op, "kernel_size", kernel_size, 2, 1)
    check_dim(op, "grad_y", grad_y, 4, "[N, C_out, H_out, W_out]")
    check_dim(op, "x", x, 4, "[N, C_in, H, W]")
    check_float_dtype(op, "x", x)
    check_same(op, "grad_y", grad_y, "x", x)
    torch._check(grad_y.shape[0] == x.shape[0],
                 lambda: f"{op}: grad_y has batch size {grad_y.shape[0]} but x has batch size {x.shape[0]}")
    torch._check(x.shape[1] >= 1 and grad_y.shape[1] >= 1,
                 lambda: f"{op}: channel counts must be positive, got C_in={x.shape[1]} and C_out={grad_y.shape[1]}")
    out = resolve_lc2d_output(op, x.shape[2:], kernel_size, stride, padding, dilation)
    check_lc2d_grid(op, out, x.shape[2:], kernel_size, stride, dilation, grad_y.shape[2:], "grad_y")
    C_out, C_in = grad_y.shape[1], x.shape[1]
    gw = x.new_empty((out[0], out[1], C_out, C_in, kernel_size[0], kernel_size[1]))
    gb = x.new_empty((C_out, out[0], out[1]))
    return gw, gb


# Fake kernel of the layer op: the checks of lc2d_layer (csrc/lc2d.cpp), then lc2d_forward's. Its autograd
# kernel is C++ (csrc/lc2d_autograd.cpp).
@torch.library.register_fake("bioplaus::lc2d")
def _lc2d_fake(x, weight, bias, stride, padding, dilation, feedback="weight", seed=0, stream=0, step=0,
               distribution="uniform", scale=1.0, matrix=None):
    op = "lc2d"
    check_feedback_spec(op, feedback, seed, stream, step, distribution)
    check_feedback_matrix(op, feedback, matrix, weight)
    return _lc2d_forward_fake(x, weight, bias, stride, padding, dilation)


# ---------------------------------------------------------------------------------------------------
# Public functional API
# ---------------------------------------------------------------------------------------------------
def _hparams(input_size, kernel_size, stride: IntPair, padding: Padding, dilation: IntPair
             ) -> Tuple[List[int], List[int], List[int]]:
    s, d = pair(stride, "stride"), pair(dilation, "dilation")
    return list(s), list(resolve_padding(padding, input_size, kernel_size, s, d)), list(d)


def lc2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, stride: IntPair = 1,
         padding: Padding = 0, dilation: IntPair = 1, *, feedback: str = "weight", seed: int = 0, stream: int = 0,
         step: int = 0, distribution: str = "uniform", scale: float = 1.0,
         matrix: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Locally connected 2D layer: a convolution whose every output position has its own filter bank.

    ``y[n, o, i, j] = bias[o, i, j] + sum_{c,r,s} weight[i, j, o, c, r, s] * x[n, c, i*sH - pT + r*dH, j*sW - pL + s*dW]``

    padding: int, (h, w), (top, bottom, left, right), "valid", or "same" (TensorFlow semantics).
    Differentiable in x, weight and bias; no im2col buffer for the whole batch is ever built. The feedback
    spec (``ops.feedback_source``) picks the matrix B the input gradient goes through, or ``matrix`` is B
    itself (a stored matrix of weight's shape, with ``feedback="weight"``); weight and bias always get their
    true gradients. ``feedback="weight"`` without a matrix is backprop.
    """
    s, p, d = _hparams(tuple(x.shape[-2:]), tuple(weight.shape[-2:]), stride, padding, dilation)
    return _ops.lc2d(x, weight, bias, s, p, d, feedback, int(seed), int(stream), int(step), distribution,
                     float(scale), matrix)


def lc2d_backward_input(grad_y: torch.Tensor, weight: torch.Tensor, input_size: IntPair, stride: IntPair = 1,
                        padding: Padding = 0, dilation: IntPair = 1, *, feedback: str = "weight", seed: int = 0,
                        stream: int = 0, step: int = 0, distribution: str = "uniform",
                        scale: float = 1.0) -> torch.Tensor:
    """Input gradient of lc2d through the feedback matrix B of the spec (``ops.feedback_source``): with
    ``feedback="weight"``, B = ``weight``, the layer's weight for backprop or any matrix of its shape (a stored
    feedback matrix, the weight V of a transposed LC layer). Returns [N, C_in, H, W]."""
    hw = pair(input_size, "input_size")
    s, p, d = _hparams(hw, tuple(weight.shape[-2:]), stride, padding, dilation)
    return _ops.lc2d_backward_input(grad_y, weight, list(hw), s, p, d, feedback, int(seed), int(stream), int(step),
                                    distribution, float(scale))


def lc2d_backward_weight(grad_y: torch.Tensor, x: torch.Tensor, kernel_size: IntPair, stride: IntPair = 1,
                         padding: Padding = 0, dilation: IntPair = 1) -> Tuple[torch.Tensor, torch.Tensor]:
    """(grad_weight, grad_bias) of lc2d from the output gradient and the forward input."""
    k = pair(kernel_size, "kernel_size")
    s, p, d = _hparams(tuple(x.shape[-2:]), k, stride, padding, dilation)
    return _ops.lc2d_backward_weight(grad_y, x, list(k), s, p, d)
