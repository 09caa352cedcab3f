"""Checks shared by the target-propagation ops' fake kernels (mirror of csrc/common/tp.h, same messages)."""
from __future__ import annotations

from typing import Sequence

import torch

from ._checks import check_float_dtype, dtype_name, shape_str

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
    torch._check(weight.dim() == 6,
                 lambda: f"{op}: weight must be 6-D [H_out, W_out, C_out, C_in, kH, kW], got shape {shape_str(weight.shape)}")
    torch._check(all(s >= 1 for s in weight.shape),
                 lambda: f"{op}: weight sizes must be positive, got {shape_str(weight.shape)}")
    torch._check(len(stride) == 2 and len(padding) == 4 and len(dilation) == 2,
                 lambda: f"{op}: stride, padding and dilation must have 2, 4 and 2 values, got {len(stride)}, "
                         f"{len(padding)} and {len(dilation)}")
    torch._check(min(stride) >= 1, lambda: f"{op}: stride values must be >= 1, got {shape_str(stride)}")
    torch._check(min(dilation) >= 1, lambda: f"{op}: dilation values must be >= 1, got {shape_str(dilation)}")
    torch._check(min(padding) >= 0, lambda: f"{op}: padding values must be >= 0, got {shape_str(padding)}")
    torch._check(below.dim() == 4,
                 lambda: f"{op}: {below_name} must be 4-D [N, C_in, H, W], got shape {shape_str(below.shape)}")
    N, H, W = below.shape[0], below.shape[2], below.shape[3]
    H_out, W_out, C_out, C_in, kH, kW = weight.shape
    torch._check(H >= 1 and W >= 1, lambda: f"{op}: {below_name} spatial size must be positive, got {H}x{W}")
    check_shape(op, below_name, below, (N, C_in, H, W), "[N, C_in, H, W]")
    check_shape(op, above_name, above, (N, C_out, H_out, W_out), "[N, C_out, H_out, W_out]")
    check_shape(op, "bias", bias, (C_in, H, W), "[C_in, H, W]")
    spans = (dilation[0] * (kH - 1) + 1, dilation[1] * (kW - 1) + 1)
    padded = (H + padding[0] + padding[1], W + padding[2] + padding[3])
    torch._check(spans[0] <= padded[0] and spans[1] <= padded[1],
                 lambda: f"{op}: the kernel spans {spans[0]}x{spans[1]} which is larger than the padded input "
                         f"{padded[0]}x{padded[1]}")
    got = ((padded[0] - spans[0]) // stride[0] + 1, (padded[1] - spans[1]) // stride[1] + 1)
    torch._check(got == (H_out, W_out),
                 lambda: f"{op}: input {H}x{W} with this kernel, stride and padding gives a {got[0]}x{got[1]} output, "
                         f"but weight has {H_out}x{W_out} output positions")


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
