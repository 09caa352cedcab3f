"""Learned approximate inverses g_l(h_l) = act(V_l h_l + c_l) of target propagation (docs/papers.md section 1).

Each inverse owns its own, untied parameters and applies them through the TP kernels:
``difference_target`` (both applications of g in one pass over V) and ``inverse_loss`` (g and the
reconstruction error in one pass). The activation is that of the layer *below* (the one whose output g reconstructs).

Decisions where the paper is silent:

* LinearInverse: V has the forward weight's transposed shape ``[in, out]``, Glorot-uniform like every layer
  of the paper; c ``[in]``, zeros.
* LocallyConnected2dInverse: a transposed LC layer with V of the forward weight's shape
  ``[H_out, W_out, C_out, C_in, kH, kW]`` (the sparsity of W^T, untied), computed with the LC input-gradient
  kernel. Bias layout: one untied bias per input unit, c ``[C_in, H, W]`` (the LC layers' biases are
  untied too). Padding of strided layers: the inverse uses exactly the forward layer's stride, dilation and
  resolved padding (TensorFlow SAME, the odd pad row/column at the bottom/right), so each output position
  feeds back exactly the input pixels it read; an input pixel that no window reads gets act(c) alone.
  V is Glorot-uniform with the forward layer's bound, c zeros.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import nn

from .. import ops
from ..nn import LocallyConnected2d
from ..ops.inverse_loss import parameter_grads


class LinearInverse(nn.Module):
    """g(y) = act(y @ V.T + c) from ``out_features`` (the layer above) to ``in_features`` (the layer below)."""

    def __init__(self, in_features: int, out_features: int, activation: str = "tanh", device=None, dtype=None):
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.empty(in_features, out_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(in_features, device=device, dtype=dtype))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return _act(self.activation, torch.nn.functional.linear(y, self.weight, self.bias))

    def difference_target(self, h_below, t_above, h_above):
        return ops.difference_target(h_below, t_above, h_above, self.weight, self.bias, self.activation)

    def inverse_loss(self, y, target) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return ops.inverse_loss(y, target, self.weight, self.bias, self.activation)

    def parameter_grads(self, y, x_hat, residual) -> Tuple[torch.Tensor, torch.Tensor]:
        """(d loss / d weight, d loss / d bias) of the inverse loss that returned x_hat and residual for y."""
        return parameter_grads(y, self.weight, x_hat, residual, self.activation)

    def extra_repr(self) -> str:
        return f"in={self.weight.shape[0]}, out={self.weight.shape[1]}, activation={self.activation!r}"


class LocallyConnected2dInverse(nn.Module):
    """Transposed locally connected layer inverting ``layer``: [N, C_out, H_out, W_out] -> [N, C_in, H, W]."""

    def __init__(self, layer: LocallyConnected2d, activation: str = "tanh"):
        super().__init__()
        self.activation = activation
        self.input_size = tuple(layer.input_size)
        self.stride, self.padding4, self.dilation = tuple(layer.stride), tuple(layer.padding4), tuple(layer.dilation)
        w = layer.weight
        self.weight = nn.Parameter(torch.empty_like(w, memory_format=torch.contiguous_format))
        self.bias = nn.Parameter(torch.zeros(layer.in_channels, *self.input_size, device=w.device, dtype=w.dtype))
        receptive = layer.kernel_size[0] * layer.kernel_size[1]
        bound = math.sqrt(6.0 / ((layer.in_channels + layer.out_channels) * receptive))
        nn.init.uniform_(self.weight, -bound, bound)

    def _geometry(self):
        return list(self.stride), list(self.padding4), list(self.dilation)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        s, p, d = self._geometry()
        x = torch.ops.bioplaus.lc2d_backward_input(y, self.weight, list(self.input_size), s, p, d)
        return _act(self.activation, x + self.bias)

    def difference_target(self, h_below, t_above, h_above):
        return ops.difference_target_lc2d(h_below, t_above, h_above, self.weight, self.bias, self.stride,
                                          self.padding4, self.dilation, self.activation)

    def inverse_loss(self, y, target):
        return ops.inverse_loss_lc2d(y, target, self.weight, self.bias, self.stride, self.padding4, self.dilation,
                                     self.activation)

    def parameter_grads(self, y, x_hat, residual) -> Tuple[torch.Tensor, torch.Tensor]:
        """(d loss / d weight, d loss / d bias) of the inverse loss that returned x_hat and residual for y."""
        return parameter_grads(y, self.weight, x_hat, residual, self.activation, self._geometry())

    def extra_repr(self) -> str:
        return f"weight={tuple(self.weight.shape)}, bias={tuple(self.bias.shape)}, activation={self.activation!r}"


def _act(name: str, x: torch.Tensor) -> torch.Tensor:
    if name == "tanh":
        return torch.tanh(x)
    if name == "sigmoid":
        return torch.sigmoid(x)
    if name == "relu":
        return torch.relu(x)
    return x
