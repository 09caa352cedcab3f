"""Autograd functions of the module paths that the ops' own autograd does not cover: the forward is the
layer's ordinary forward, the weight and bias gradients are the true local gradients, and the input gradient
goes through B materialised in the backward (Conv2d), or is not computed at all (DFA replaces it; see nn.dfa)."""
from __future__ import annotations

from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F

from .. import ops

_ops = torch.ops.bioplaus


def _linear_weight_grads(g: torch.Tensor, x: torch.Tensor, has_bias: bool):
    g2, x2 = g.reshape(-1, g.shape[-1]), x.reshape(-1, x.shape[-1])
    return g2.t().mm(x2), (g2.sum(0) if has_bias else None)


class LinearWithoutInputGrad(torch.autograd.Function):
    """y = x W^T + b under DFA: no gradient for x (the output error's projection replaces it; see nn.dfa), the
    true weight and bias gradients. (A stored B goes through the op bioplaus::linear's ``matrix``.)"""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x)
        ctx.has_bias = bias is not None
        ctx.set_materialize_grads(False)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        if g is None:
            return None, None, None
        gw, gb = _linear_weight_grads(g, x, ctx.has_bias) if (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]) \
            else (None, None)
        return None, gw, gb


class LC2dWithoutInputGrad(torch.autograd.Function):
    """A locally connected layer under DFA: no gradient for x (the output error's projection replaces it; see
    nn.dfa), the true weight and bias gradients. (A stored B goes through the op bioplaus::lc2d's ``matrix``.)"""

    @staticmethod
    def forward(ctx, x, weight, bias, geometry: Tuple[List[int], List[int], List[int]]):
        ctx.save_for_backward(x)
        ctx.geometry = geometry
        ctx.kernel_size = list(weight.shape[4:])
        ctx.set_materialize_grads(False)
        return _ops.lc2d_forward(x, weight, bias, *geometry)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        if g is None or not (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
            return None, None, None, None
        gw, gb = _ops.lc2d_backward_weight(g, x, ctx.kernel_size, *ctx.geometry)
        return None, gw if ctx.needs_input_grad[1] else None, gb if ctx.needs_input_grad[2] else None, None


# The feedback matrix of a convolution: a stored tensor, the spec's values (feedback, seed, stream, step,
# distribution, scale), materialised from the weight at backward time (seeded rules: nothing outlives the
# backward), or None (no input gradient).
ConvFeedback = Union[None, torch.Tensor, Tuple[str, int, int, int, str, float]]


class Conv2dFeedback(torch.autograd.Function):
    """y = conv2d(x, W, b) with symmetric integer padding; grad_x = conv2d_input(grad_y, B) by the library's
    convolution backward, grad_W and grad_b by the library's convolution backward with W (true gradients)."""

    @staticmethod
    def forward(ctx, x, weight, bias, feedback: ConvFeedback, stride: Tuple[int, int], padding: Tuple[int, int],
                dilation: Tuple[int, int], groups: int):
        stored = feedback if isinstance(feedback, torch.Tensor) else None
        ctx.save_for_backward(x, weight, stored)
        ctx.feedback = None if stored is not None else feedback
        ctx.hparams = (list(stride), list(padding), list(dilation), groups)
        ctx.has_bias = bias is not None
        ctx.set_materialize_grads(False)
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, g):
        x, weight, stored = ctx.saved_tensors
        if g is None:
            return (None,) * 8
        s, p, d, groups = ctx.hparams
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:  # B is built only when an input gradient is wanted (not for a first layer)
            matrix: Optional[torch.Tensor] = stored if stored is not None else (
                ops.feedback_source(weight, *ctx.feedback) if ctx.feedback is not None else None)
            if matrix is not None:
                gx = torch.ops.aten.convolution_backward(g, x, matrix, None, s, p, d, False, [0, 0], groups,
                                                         [True, False, False])[0]
            del matrix
        want_w, want_b = ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]
        if want_w or want_b:
            _, gw, gb = torch.ops.aten.convolution_backward(g, x, weight, [weight.shape[0]] if want_b else None,
                                                            s, p, d, False, [0, 0], groups,
                                                            [False, want_w, want_b])
        return gx, gw, gb, None, None, None, None, None
