"""Difference targets in plain PyTorch: the ground truth of tests/test_difference_target.py.

``t_below = h_below + g(t_above) - g(h_above)``, g(y) = act(V y + c), computed as two separate
applications of g (what the fused op does in one pass). The transposed LC layer is written with F.fold:
each output position's filter bank maps its activations to a patch, and overlapping patches add up.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._geometry import IntPair, Padding, pair, resolve_padding

ACTIVATIONS = {"tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": torch.relu, "identity": lambda x: x}


def linear_inverse(y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, activation: str = "tanh") -> torch.Tensor:
    """act(y @ V.T + c), V [D_in, D_out]."""
    return ACTIVATIONS[activation](y @ weight.t() + bias)


def lc2d_transposed(y: torch.Tensor, weight: torch.Tensor, input_size: IntPair, stride: IntPair = 1,
                    padding: Padding = 0, dilation: IntPair = 1) -> torch.Tensor:
    """x[n, c, p, q] = sum over (i, j, o, r, s) with i*sH - pT + r*dH = p, j*sW - pL + s*dW = q of
    weight[i, j, o, c, r, s] * y[n, o, i, j]."""
    H_out, W_out, C_out, C_in, kH, kW = weight.shape
    hw, s, d = pair(input_size, "input_size"), pair(stride, "stride"), pair(dilation, "dilation")
    p = resolve_padding(padding, hw, (kH, kW), s, d)
    cols = torch.einsum("nop,pok->nkp", y.reshape(y.shape[0], C_out, -1),
                        weight.reshape(H_out * W_out, C_out, C_in * kH * kW))
    padded = (hw[0] + p[0] + p[1], hw[1] + p[2] + p[3])
    x = F.fold(cols, padded, (kH, kW), dilation=d, stride=s)
    return x[:, :, p[0]:p[0] + hw[0], p[2]:p[2] + hw[1]]


def lc2d_inverse(y, weight, bias, stride=1, padding=0, dilation=1, activation="tanh"):
    """act(LC^T(y; V) + c), c [C_in, H, W]."""
    return ACTIVATIONS[activation](lc2d_transposed(y, weight, bias.shape[-2:], stride, padding, dilation) + bias)


def difference_target(h_below, t_above, h_above, weight, bias, activation="tanh"):
    return (h_below + linear_inverse(t_above, weight, bias, activation)
            - linear_inverse(h_above, weight, bias, activation))


def difference_target_lc2d(h_below, t_above, h_above, weight, bias, stride=1, padding=0, dilation=1,
                           activation="tanh"):
    g = lambda y: lc2d_inverse(y, weight, bias, stride, padding, dilation, activation)  # noqa: E731
    return h_below + g(t_above) - g(h_above)
