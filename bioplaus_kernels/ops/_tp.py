"""Checks shared by the target-propagation ops' fake kernels (mirror of csrc/common/tp.h, same messages)."""
from __future__ import annotations

from typing import Sequence

import torch

from ._checks import (check_dim, check_float_dtype, check_lc2d_grid, check_lc2d_weight, dtype_name,
                      resolve_lc2d_output, shape_str)

ACTIVATIONS = ("tanh", "sigmoid", "relu", "identity")


def check_activation(op: str, name: str) -> None:
    torch._check(name in ACTIVATIONS,
                 lambda: f"{op}: activation must be 'tanh', 'sigmoid', 'relu' or 'identity', got '{name}'")


def check_like_weight(op: str, weight: torch.Tensor, tensors) -> None:
    check_float_dtype(op, "weight", weight)
    for name, t in tensors:
        torch._check(t.device == weight.device,
                     lambda: f"{op}: {name} is on {t.device} but weight is on {weight.device}; they must be on the "
                             "same device")
        torch._check(t.dtype == weight.dtype,
                     lambda: f"{op}: {name} has dtype {dtype_name(t.dtype)} but weight has dtype "
                             f"{dtype_name(weight.dtype)}; they must match")


def check_shape(op: str, name: str, t: torch.Tensor, want: Sequence[int], layout: str) -> None:
    torch._check(tuple(t.shape) == tuple(want),
                 lambda: f"{op}: {name} must have shape {layout} = {shape_str(want)}, got {shape_str(t.shape)}")


def check_linear_inverse_geometry(op, below, below_name, above, above_name, weight, bias) -> None:
    torch._check(weight.dim() == 2,
                 lambda: f"{op}: weight must be 2-D [D_in, D_out] (the shape of the forward weight's transpose), "
                         f"got shape {shape_str(weight.shape)}")
    torch._check(above.dim() == 2, lambda: f"{op}: {above_name} must be 2-D [N, D_out], got shape {shape_str(above.shape)}")
    N, (D_in, D_out) = above.shape[0], weight.shape
    check_shape(op, above_name, above, (N, D_out), "[N, D_out]")
    check_shape(op, below_name, below, (N, D_in), "[N, D_in]")
    check_shape(op, "bias", bias, (D_in,), "[D_in]")


def check_lc2d_inverse_geometry(op, below, below_name, above, above_name, weight, bias, stride, padding,
                                dilation) -> None:
    check_lc2d_weight(op, "weight", weight)
    check_dim(op, below_name, below, 4, "[N, C_in, H, W]")
    H_out, W_out, C_out, C_in, kH, kW = weight.shape
    N, hw = below.shape[0], tuple(below.shape[2:])
    out = resolve_lc2d_output(op, hw, (kH, kW), stride, padding, dilation)
    check_lc2d_grid(op, out, hw, (kH, kW), stride, dilation, (H_out, W_out), "weight")
    check_shape(op, below_name, below, (N, C_in) + hw, "[N, C_in, H, W]")
    check_shape(op, above_name, above, (N, C_out, H_out, W_out), "[N, C_out, H_out, W_out]")
    check_shape(op, "bias", bias, (C_in,) + hw, "[C_in, H, W]")


def pre_grad(name: str, out: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """d loss / d pre from d loss / d out, written through the output out = act(pre) (csrc/common/tp.h): ATen's
    fused activation-backward kernels (one pass, grad_out * (1 - out^2) for tanh, etc.)."""
    if name == "tanh":
        return torch.ops.aten.tanh_backward(grad_out, out)
    if name == "sigmoid":
        return torch.ops.aten.sigmoid_backward(grad_out, out)
    if name == "relu":
        return torch.ops.aten.threshold_backward(grad_out, out, 0)
    return grad_out
