"""Locally connected 2D in plain PyTorch.

``lc2d`` is the readable definition (pad, unfold, one einsum over positions), differentiable by autograd:
the tests compare the kernels against it in float64. ``lc2d_unfold_bmm`` is what users write today and the
named baseline of the benchmarks: unfold -> (P, N, K) contiguous -> torch.bmm with a (P, K, C_out) weight ->
back to NCHW. Both materialise the whole im2col matrix (kH*kW/(sH*sW) times the input), which is what the
kernels avoid.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .._geometry import IntPair, Padding, pair, resolve_padding


def _unfold(x: torch.Tensor, kernel_size, stride, padding, dilation) -> torch.Tensor:
    """[N, K, P] patches, k = (c * kH + r) * kW + s, p = i * W_out + j."""
    s, d = pair(stride, "stride"), pair(dilation, "dilation")
    p = resolve_padding(padding, x.shape[-2:], kernel_size, s, d)
    xp = F.pad(x, (p[2], p[3], p[0], p[1]))
    return F.unfold(xp, kernel_size, dilation=d, stride=s)


def lc2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, stride: IntPair = 1,
         padding: Padding = 0, dilation: IntPair = 1) -> torch.Tensor:
    """y[n, o, i, j] = bias[o, i, j] + sum_{c,r,s} weight[i, j, o, c, r, s] * x_padded[n, c, i*sH + r*dH, j*sW + s*dW]."""
    H_out, W_out, C_out, C_in, kH, kW = weight.shape
    cols = _unfold(x, (kH, kW), stride, padding, dilation)
    y = torch.einsum("nkp,pok->nop", cols, weight.reshape(H_out * W_out, C_out, C_in * kH * kW))
    y = y.reshape(x.shape[0], C_out, H_out, W_out)
    return y if bias is None else y + bias


def lc2d_unfold_bmm(x: torch.Tensor, weight_pkc: torch.Tensor, bias: Optional[torch.Tensor] = None,
                    stride: IntPair = 1, padding: Padding = 0, dilation: IntPair = 1,
                    kernel_size: IntPair = 3, output_size: IntPair = 1) -> torch.Tensor:
    """The unfold + bmm baseline. weight_pkc is [P, K, C_out] (the layout this formulation wants)."""
    k, (H_out, W_out) = pair(kernel_size, "kernel_size"), pair(output_size, "output_size")
    cols = _unfold(x, k, stride, padding, dilation)          # [N, K, P]
    cols = cols.permute(2, 0, 1).contiguous()                # [P, N, K]
    y = torch.bmm(cols, weight_pkc)                          # [P, N, C_out]
    y = y.permute(1, 2, 0).reshape(x.shape[0], -1, H_out, W_out)
    return y if bias is None else y + bias


def weight_to_pkc(weight: torch.Tensor) -> torch.Tensor:
    """Our [H_out, W_out, C_out, C_in, kH, kW] weight in the baseline's [P, K, C_out] layout (a copy)."""
    H_out, W_out, C_out = weight.shape[:3]
    return weight.reshape(H_out * W_out, C_out, -1).transpose(1, 2).contiguous()
