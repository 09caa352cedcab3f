"""Difference targets of target propagation: ``torch.ops.bioplaus.difference_target[_lc2d]``.

``t_below = h_below + g(t_above) - g(h_above)`` with the inverse ``g(y) = act(V y + c)`` applied to both
inputs in one pass over V (csrc/difference_target.h has the index maps):

* Linear inverse: V ``[D_in, D_out]`` (the forward weight's transposed shape), c ``[D_in]``, activations 2-D.
* Locally connected inverse: a transposed LC layer, V of the forward weight's shape
  ``[H_out, W_out, C_out, C_in, kH, kW]`` and sparsity, c ``[C_in, H, W]`` over the input grid, the forward
  layer's stride, padding and dilation.

Targets are constants of the local losses, so the ops have no gradient (asking for one is an error).
"""
from __future__ import annotations

import torch

from .._geometry import IntPair, Padding, pair, resolve_padding
from . import _tp

_ops = torch.ops.bioplaus


@torch.library.register_fake("bioplaus::difference_target")
def _difference_target_fake(h_below, t_above, h_above, weight, bias, activation="tanh"):
    op = "difference_target"
    _tp.check_activation(op, activation)
    _tp.check_like_weight(op, weight, (("h_below", h_below), ("t_above", t_above), ("h_above", h_above),
                                       ("bias", bias)))
    _tp.check_linear_inverse_geometry(op, h_below, "h_below", h_above, "h_above", weight, bias)
    _tp.check_shape(op, "t_above", t_above, h_above.shape, "h_above's shape")
    return h_below.new_empty(h_below.shape)


@torch.library.register_fake("bioplaus::difference_target_lc2d")
def _difference_target_lc2d_fake(h_below, t_above, h_above, weight, bias, stride, padding, dilation,
                                 activation="tanh"):
    op = "difference_target_lc2d"
    _tp.check_activation(op, activation)
    _tp.check_like_weight(op, weight, (("h_below", h_below), ("t_above", t_above), ("h_above", h_above),
                                       ("bias", bias)))
    _tp.check_lc2d_inverse_geometry(op, h_below, "h_below", h_above, "h_above", weight, bias, stride, padding,
                                    dilation)
    _tp.check_shape(op, "t_above", t_above, h_above.shape, "h_above's shape")
    return h_below.new_empty(h_below.shape)


def _refuse_backward(name):
    def setup(ctx, inputs, output):
        pass

    def backward(ctx, grad):
        raise RuntimeError(f"bioplaus::{name}: targets are constants of the local losses and have no gradient; "
                           "compute them under torch.no_grad() or from detached tensors")

    torch.library.register_autograd(f"bioplaus::{name}", backward, setup_context=setup)


_refuse_backward("difference_target")
_refuse_backward("difference_target_lc2d")


def difference_target(h_below: torch.Tensor, t_above: torch.Tensor, h_above: torch.Tensor, weight: torch.Tensor,
                      bias: torch.Tensor, activation: str = "tanh") -> torch.Tensor:
    """``h_below + act(t_above @ V.T + c) - act(h_above @ V.T + c)`` for a Linear inverse (V ``[D_in, D_out]``)."""
    return _ops.difference_target(h_below, t_above, h_above, weight, bias, activation)


def difference_target_lc2d(h_below: torch.Tensor, t_above: torch.Tensor, h_above: torch.Tensor,
                           weight: torch.Tensor, bias: torch.Tensor, stride: IntPair = 1, padding: Padding = 0,
                           dilation: IntPair = 1, activation: str = "tanh") -> torch.Tensor:
    """The difference target through a transposed LC inverse (V of the forward LC weight's shape, c
    ``[C_in, H, W]``); stride, padding and dilation are the forward layer's (padding as in ``ops.lc2d``)."""
    s, d = pair(stride, "stride"), pair(dilation, "dilation")
    p = resolve_padding(padding, tuple(h_below.shape[-2:]), tuple(weight.shape[-2:]), s, d)
    return _ops.difference_target_lc2d(h_below, t_above, h_above, weight, bias, list(s), list(p), list(d),
                                       activation)
