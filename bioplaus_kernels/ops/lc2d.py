"""Locally connected 2D: functional API, autograd formula and fake kernels of ``torch.ops.bioplaus.lc2d_*``.

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

from typing import List, Optional, Sequence, Tuple

import torch

from .._geometry import IntPair, Padding, output_size, pair, resolve_padding
from .feedback_source import check_feedback_spec

_ops = torch.ops.bioplaus

# ---------------------------------------------------------------------------------------------------
# Fake kernels: the same checks and messages as csrc/lc2d.cpp, so that torch.compile and FakeTensor
# tracing reject exactly what the real kernels reject.
# ---------------------------------------------------------------------------------------------------
# c10's names, as the C++ messages print them.
_DTYPE_NAMES = {torch.float32: "Float", torch.float64: "Double", torch.float16: "Half", torch.bfloat16: "BFloat16",
                torch.int8: "Char", torch.uint8: "Byte", torch.int16: "Short", torch.int32: "Int",
                torch.int64: "Long", torch.bool: "Bool", torch.complex64: "ComplexFloat",
                torch.complex128: "ComplexDouble"}


def _dtype_name(dtype: torch.dtype) -> str:
    return _DTYPE_NAMES.get(dtype, str(dtype).replace("torch.", ""))


def _shape(s: Sequence[int]) -> str:
    return "[" + ", ".join(str(v) for v in s) + "]"


def _check_int_list(op: str, name: str, v: Sequence[int], length: int, minimum: int) -> None:
    torch._check(len(v) == length, lambda: f"{op}: {name} must have {length} values, got {len(v)} ({_shape(v)})")
    for e in v:
        torch._check(e >= minimum, lambda: f"{op}: {name} values must be >= {minimum}, got {_shape(v)}")


def _check_hyper(op, stride, padding, dilation):
    _check_int_list(op, "stride", stride, 2, 1)
    _check_int_list(op, "padding", padding, 4, 0)
    _check_int_list(op, "dilation", dilation, 2, 1)


def _check_dtype(op: str, name: str, t: torch.Tensor) -> None:
    cpu_ok = t.dtype in (torch.float32, torch.float64)
    if t.device.type == "cuda":
        torch._check(cpu_ok or t.dtype in (torch.float16, torch.bfloat16),
                     lambda: f"{op}: {name} must be float32, float64, float16 or bfloat16 on CUDA, got "
                             f"{_dtype_name(t.dtype)}")
    else:
        torch._check(cpu_ok, lambda: f"{op}: {name} must be float32 or float64 on the CPU, got {_dtype_name(t.dtype)}")


def _check_same(op, a_name, a, b_name, b):
    torch._check(a.device == b.device,
                 lambda: f"{op}: {a_name} is on {a.device} but {b_name} is on {b.device}; they must be on the same device")
    torch._check(a.dtype == b.dtype,
                 lambda: f"{op}: {a_name} has dtype {_dtype_name(a.dtype)} but {b_name} has dtype "
                         f"{_dtype_name(b.dtype)}; they must match")


def _check_dim(op, name, t, dim, layout):
    torch._check(t.dim() == dim,
                 lambda: f"{op}: {name} must be {dim}-D {layout}, got a {t.dim()}-D tensor of shape {_shape(t.shape)}")


def _check_weight(op, name, w):
    _check_dim(op, name, w, 6, "[H_out, W_out, C_out, C_in, kH, kW]")
    torch._check(all(s >= 1 for s in w.shape), lambda: f"{op}: {name} sizes must be positive, got {_shape(w.shape)}")
    _check_dtype(op, name, w)


def _resolve_spatial(op, hw, k, stride, padding, dilation) -> Tuple[int, int]:
    H, W = hw
    kH, kW = k
    torch._check(H >= 1 and W >= 1, lambda: f"{op}: input spatial size must be positive, got {H}x{W}")
    torch._check(kH >= 1 and kW >= 1, lambda: f"{op}: kernel size must be positive, got {kH}x{kW}")
    ph, pw = H + padding[0] + padding[1], W + padding[2] + padding[3]
    sh, sw = dilation[0] * (kH - 1) + 1, dilation[1] * (kW - 1) + 1
    torch._check(sh <= ph and sw <= pw,
                 lambda: f"{op}: the kernel spans {sh}x{sw} (size {kH}x{kW}, dilation {dilation[0]}x{dilation[1]}) "
                         f"which is larger than the padded input {ph}x{pw}")
    return output_size(hw, k, stride, padding, dilation)


def _check_grid(op, out, hw, k, stride, dilation, got, who):
    torch._check(tuple(got) == tuple(out),
                 lambda: f"{op}: input {hw[0]}x{hw[1]} with kernel {k[0]}x{k[1]}, stride {stride[0]}x{stride[1]} and "
                         f"dilation {dilation[0]}x{dilation[1]} gives a {out[0]}x{out[1]} output, but {who} has "
                         f"{got[0]}x{got[1]} output positions")


@torch.library.register_fake("bioplaus::lc2d_forward")
def _lc2d_forward_fake(x, weight, bias, stride, padding, dilation):
    op = "lc2d_forward"
    _check_hyper(op, stride, padding, dilation)
    _check_dim(op, "x", x, 4, "[N, C_in, H, W]")
    _check_weight(op, "weight", weight)
    _check_same(op, "x", x, "weight", weight)
    H_out, W_out, C_out, C_in, kH, kW = weight.shape
    torch._check(x.shape[1] == C_in, lambda: f"{op}: x has {x.shape[1]} channels but weight expects C_in={C_in}")
    out = _resolve_spatial(op, x.shape[2:], (kH, kW), stride, padding, dilation)
    _check_grid(op, out, x.shape[2:], (kH, kW), stride, dilation, (H_out, W_out), "weight")
    if bias is not None:
        _check_same(op, "bias", bias, "weight", weight)
        want = (C_out, out[0], out[1])
        torch._check(tuple(bias.shape) == want,
                     lambda: f"{op}: bias must have shape [C_out, H_out, W_out] = {_shape(want)}, got {_shape(bias.shape)}")
    return x.new_empty((x.shape[0], C_out, out[0], out[1]))


@torch.library.register_fake("bioplaus::lc2d_backward_input")
def _lc2d_backward_input_fake(grad_y, weight, input_size, stride, padding, dilation, feedback="weight", seed=0,
                              stream=0, step=0, distribution="uniform", scale=1.0):
    op = "lc2d_backward_input"
    check_feedback_spec(op, feedback, seed, stream, step, distribution)
    _check_hyper(op, stride, padding, dilation)
    _check_int_list(op, "input_size", input_size, 2, 1)
    _check_dim(op, "grad_y", grad_y, 4, "[N, C_out, H_out, W_out]")
    _check_weight(op, "weight", weight)
    _check_same(op, "grad_y", grad_y, "weight", weight)
    H_out, W_out, C_out, C_in, kH, kW = weight.shape
    out = _resolve_spatial(op, input_size, (kH, kW), stride, padding, dilation)
    _check_grid(op, out, input_size, (kH, kW), stride, dilation, (H_out, W_out), "weight")
    torch._check(grad_y.shape[1] == C_out,
                 lambda: f"{op}: grad_y has {grad_y.shape[1]} channels but weight expects C_out={C_out}")
    _check_grid(op, out, input_size, (kH, kW), stride, dilation, grad_y.shape[2:], "grad_y")
    return grad_y.new_empty((grad_y.shape[0], C_in, input_size[0], input_size[1]))


@torch.library.register_fake("bioplaus::lc2d_backward_weight")
def _lc2d_backward_weight_fake(grad_y, x, kernel_size, stride, padding, dilation):
    op = "lc2d_backward_weight"
    _check_hyper(op, stride, padding, dilation)
    _check_int_list(op, "kernel_size", kernel_size, 2, 1)
    _check_dim(op, "grad_y", grad_y, 4, "[N, C_out, H_out, W_out]")
    _check_dim(op, "x", x, 4, "[N, C_in, H, W]")
    _check_dtype(op, "x", x)
    _check_same(op, "grad_y", grad_y, "x", x)
    torch._check(grad_y.shape[0] == x.shape[0],
                 lambda: f"{op}: grad_y has batch size {grad_y.shape[0]} but x has batch size {x.shape[0]}")
    torch._check(x.shape[1] >= 1 and grad_y.shape[1] >= 1,
                 lambda: f"{op}: channel counts must be positive, got C_in={x.shape[1]} and C_out={grad_y.shape[1]}")
    out = _resolve_spatial(op, x.shape[2:], kernel_size, stride, padding, dilation)
    _check_grid(op, out, x.shape[2:], kernel_size, stride, dilation, grad_y.shape[2:], "grad_y")
    C_out, C_in = grad_y.shape[1], x.shape[1]
    gw = x.new_empty((out[0], out[1], C_out, C_in, kernel_size[0], kernel_size[1]))
    gb = x.new_empty((C_out, out[0], out[1]))
    return gw, gb


# ---------------------------------------------------------------------------------------------------
# Autograd: the backward calls the two gradient ops. Weight and bias gradients are the true local
# gradients; the input gradient multiplies by the saved weight (backprop).
# ---------------------------------------------------------------------------------------------------
def _setup_context(ctx, inputs, output):
    x, weight, bias, stride, padding, dilation = inputs
    ctx.save_for_backward(x, weight)
    ctx.hparams = (list(stride), list(padding), list(dilation))
    ctx.input_size = list(x.shape[2:])
    ctx.kernel_size = list(weight.shape[4:])


def _backward(ctx, grad_y):
    x, weight = ctx.saved_tensors
    stride, padding, dilation = ctx.hparams
    grad_x = grad_w = grad_b = None
    if ctx.needs_input_grad[0]:
        grad_x = _ops.lc2d_backward_input(grad_y, weight, ctx.input_size, stride, padding, dilation)
    if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
        grad_w, grad_b = _ops.lc2d_backward_weight(grad_y, x, ctx.kernel_size, stride, padding, dilation)
        grad_w = grad_w if ctx.needs_input_grad[1] else None
        grad_b = grad_b if ctx.needs_input_grad[2] else None
    return grad_x, grad_w, grad_b, None, None, None


torch.library.register_autograd("bioplaus::lc2d_forward", _backward, setup_context=_setup_context)


def _no_double_backward(name):
    def setup(ctx, inputs, output):
        pass

    def backward(ctx, *grads):
        raise RuntimeError(f"bioplaus::{name}: double backward (a gradient of the gradient) is not supported; "
                           "compute first-order gradients only (create_graph=False)")

    torch.library.register_autograd(f"bioplaus::{name}", backward, setup_context=setup)


_no_double_backward("lc2d_backward_input")
_no_double_backward("lc2d_backward_weight")


class _Lc2dFeedback(torch.autograd.Function):
    """lc2d with a feedback spec other than "weight": the forward op; backward with the input gradient
    through B and the true weight/bias gradients."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, spec):
        # ctx-in-forward form: a separate setup_context costs ~30 us per call in argument binding
        _setup_context(ctx, (x, weight, bias, stride, padding, dilation), None)
        ctx.spec = spec
        return _ops.lc2d_forward(x, weight, bias, stride, padding, dilation)

    @staticmethod
    def backward(ctx, grad_y):
        x, weight = ctx.saved_tensors
        stride, padding, dilation = ctx.hparams
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _ops.lc2d_backward_input(grad_y, weight, ctx.input_size, stride, padding, dilation, *ctx.spec)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            grad_w, grad_b = _ops.lc2d_backward_weight(grad_y, x, ctx.kernel_size, stride, padding, dilation)
            grad_w = grad_w if ctx.needs_input_grad[1] else None
            grad_b = grad_b if ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None, None, None, None


# ---------------------------------------------------------------------------------------------------
# Public functional API
# ---------------------------------------------------------------------------------------------------
def _hparams(input_size, kernel_size, stride: IntPair, padding: Padding, dilation: IntPair
             ) -> Tuple[List[int], List[int], List[int]]:
    s, d = pair(stride, "stride"), pair(dilation, "dilation")
    return list(s), list(resolve_padding(padding, input_size, kernel_size, s, d)), list(d)


def lc2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, stride: IntPair = 1,
         padding: Padding = 0, dilation: IntPair = 1, *, feedback: str = "weight", seed: int = 0, stream: int = 0,
         step: int = 0, distribution: str = "uniform", scale: float = 1.0) -> torch.Tensor:
    """Locally connected 2D layer: a convolution whose every output position has its own filter bank.

    ``y[n, o, i, j] = bias[o, i, j] + sum_{c,r,s} weight[i, j, o, c, r, s] * x[n, c, i*sH - pT + r*dH, j*sW - pL + s*dW]``

    padding: int, (h, w), (top, bottom, left, right), "valid", or "same" (TensorFlow semantics).
    Differentiable in x, weight and bias; no im2col buffer for the whole batch is ever built. The feedback
    spec (``ops.feedback_source``) picks the matrix B the input gradient goes through; weight and bias always
    get their true gradients. ``feedback="weight"`` is backprop.
    """
    s, p, d = _hparams(tuple(x.shape[-2:]), tuple(weight.shape[-2:]), stride, padding, dilation)
    check_feedback_spec("lc2d", feedback, seed, stream, step, distribution)
    if feedback == "weight":  # backprop: the forward op's own autograd formula
        return _ops.lc2d_forward(x, weight, bias, s, p, d)
    spec = (feedback, int(seed), int(stream), int(step), distribution, float(scale))
    return _Lc2dFeedback.apply(x, weight, bias, s, p, d, spec)


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
