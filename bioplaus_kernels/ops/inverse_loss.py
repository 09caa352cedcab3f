"""Inverse losses of target propagation: ``torch.ops.bioplaus.inverse_loss[_lc2d]``, noise drawn in the kernel.

With ``eps = noise(h, sigma, seed, stream, step)`` (Philox normals, element e of h's row-major order: the
generator, key, counter and conversions of ``torch.ops.bioplaus.philox_fill(h, seed, stream, step, "normal",
sigma)``, equal to it up to the last ulp of the float32 log/cos/sin, which the CPU kernels vectorise) and ``y = f(h + eps)`` computed by
the caller's forward layer::

    x_hat    = act(V y + c)                      (the inverse layer, as in difference_target)
    residual = x_hat - (h + eps)  if preserve_noise   (DTP, noise-preserving:  ||g(f(h~)) - h~||^2)
             = x_hat - h          otherwise            (SDTP, de-noising:       ||g(f(h + eps)) - h||^2)
    loss     = sum(residual ** 2) / N           (sum over a sample's units, mean over the batch)

Returns ``(loss, x_hat, residual)``; loss is differentiable in y, h, V and c (registered autograd, the
gradient wrt h being that of a constant-noise target), x_hat and residual are not. ``noisy(h, ...)``
(``torch.ops.bioplaus.inverse_loss_noisy_input``) returns ``h + eps`` with the same eps in one fused pass.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch

from .._geometry import IntPair, Padding, pair, resolve_padding
from . import _tp
from ._checks import check_float_dtype


_ops = torch.ops.bioplaus


def _check_noise(op, activation, sigma, seed, stream, step):
    _tp.check_activation(op, activation)
    torch._check(math.isfinite(sigma) and sigma >= 0, lambda: f"{op}: sigma must be a finite number >= 0, got {sigma}")
    torch._check(seed >= 0, lambda: f"{op}: seed must be >= 0, got {seed}")
    torch._check(stream >= 0, lambda: f"{op}: stream must be >= 0, got {stream}")
    torch._check(step >= 0, lambda: f"{op}: step must be >= 0, got {step}")


def _outputs(h):
    return h.new_empty(()), h.new_empty(h.shape), h.new_empty(h.shape)


@torch.library.register_fake("bioplaus::inverse_loss")
def _inverse_loss_fake(y, h, weight, bias, activation, sigma, seed, stream, step, preserve_noise):
    op = "inverse_loss"
    _check_noise(op, activation, sigma, seed, stream, step)
    _tp.check_like_weight(op, weight, (("y", y), ("h", h), ("bias", bias)))
    _tp.check_linear_inverse_geometry(op, h, "h", y, "y", weight, bias)
    return _outputs(h)


@torch.library.register_fake("bioplaus::inverse_loss_lc2d")
def _inverse_loss_lc2d_fake(y, h, weight, bias, stride, padding, dilation, activation, sigma, seed, stream, step,
                            preserve_noise):
    op = "inverse_loss_lc2d"
    _check_noise(op, activation, sigma, seed, stream, step)
    _tp.check_like_weight(op, weight, (("y", y), ("h", h), ("bias", bias)))
    _tp.check_lc2d_inverse_geometry(op, h, "h", y, "y", weight, bias, stride, padding, dilation)
    return _outputs(h)


@torch.library.register_fake("bioplaus::inverse_loss_noisy_input")
def _inverse_loss_noisy_input_fake(h, sigma, seed, stream, step):
    op = "inverse_loss_noisy_input"
    _check_noise(op, "identity", sigma, seed, stream, step)
    check_float_dtype(op, "h", h)
    return h.new_empty(h.shape)


def _noisy_backward(ctx, grad):
    return grad, None, None, None, None


torch.library.register_autograd("bioplaus::inverse_loss_noisy_input", _noisy_backward,
                                setup_context=lambda ctx, inputs, output: None)


# ---------------------------------------------------------------------------------------------------
# Autograd: d loss / d residual = (2/N) residual; d loss / d pre = that times act'(x_hat). From there the
# Linear inverse's gradients are GEMMs, the LC inverse's are the LC forward (grad y: the transpose of a
# transposed LC layer) and lc2d_backward_weight with the roles swapped (grad_y := y, x := d loss / d pre).
# ---------------------------------------------------------------------------------------------------
def _lc_geometry(inputs):
    return tuple(list(v) for v in inputs[4:7]) if len(inputs) == 13 else None


def _setup_context(ctx, inputs, output):
    _, x_hat, residual = output
    ctx.mark_non_differentiable(x_hat, residual)
    ctx.set_materialize_grads(False)  # x_hat and residual get no gradient: no zero tensors for them
    ctx.save_for_backward(inputs[0], inputs[2], x_hat, residual)
    ctx.lc_geometry = _lc_geometry(inputs)
    ctx.activation = inputs[7] if ctx.lc_geometry else inputs[4]


def _weight_grad(y, d_pre, weight, lc_geometry):
    if lc_geometry is None:
        return d_pre.t() @ y
    stride, padding, dilation = lc_geometry
    return _ops.lc2d_backward_weight(y, d_pre, list(weight.shape[4:]), stride, padding, dilation)[0]


def _backward(ctx, grad_loss, grad_x_hat, grad_residual):
    nones = (None,) * (9 if ctx.lc_geometry else 6)
    if grad_loss is None:  # grads are not materialised: an unused loss gives its inputs no gradient
        return (None,) * 4 + nones
    y, weight, x_hat, residual = ctx.saved_tensors
    d_res = residual * (grad_loss * (2.0 / max(residual.shape[0], 1)))
    d_pre = _tp.pre_grad(ctx.activation, x_hat, d_res)
    need = ctx.needs_input_grad
    grad_y = grad_h = grad_w = grad_b = None
    if need[0]:
        grad_y = d_pre @ weight if ctx.lc_geometry is None else _ops.lc2d_forward(d_pre, weight, None, *ctx.lc_geometry)
    if need[2]:
        grad_w = _weight_grad(y, d_pre, weight, ctx.lc_geometry)
    if need[1]:
        grad_h = -d_res
    if need[3]:
        grad_b = d_pre.sum(0)
    return (grad_y, grad_h, grad_w, grad_b) + nones


torch.library.register_autograd("bioplaus::inverse_loss", _backward, setup_context=_setup_context)
torch.library.register_autograd("bioplaus::inverse_loss_lc2d", _backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------------------
# Public functional API
# ---------------------------------------------------------------------------------------------------
def noisy(h: torch.Tensor, sigma: float, seed: int, stream: int, step: int) -> torch.Tensor:
    """``h + eps``: the noisy input whose forward image the inverse losses reconstruct, with the eps their
    kernels draw on the same device (bit for bit), i.e. ``h + philox_fill(h, seed, stream, step, "normal",
    sigma)`` up to the last ulp of the transcendentals."""
    return _ops.inverse_loss_noisy_input(h, float(sigma), int(seed), int(stream), int(step))


def parameter_grads(y: torch.Tensor, weight: torch.Tensor, x_hat: torch.Tensor, residual: torch.Tensor,
                    activation: str = "tanh", lc_geometry=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(d loss / d V, d loss / d c) of an inverse loss from the op's own outputs ``x_hat`` and ``residual``: the
    gradients ``loss.backward()`` gives the inverse's weight and bias (the same expressions as the registered
    autograd), without building a graph. For a trainer that differentiates nothing else through the inverse
    (tp.Trainer); ``lc_geometry`` is ``(stride, padding, dilation)`` of an LC inverse (resolved padding, as the
    op takes it), None for a Linear inverse."""
    d_pre = _tp.pre_grad(activation, x_hat, residual * (2.0 / max(residual.shape[0], 1)))
    return _weight_grad(y, d_pre, weight, lc_geometry), d_pre.sum(0)


def inverse_loss(y: torch.Tensor, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *, sigma: float,
                 seed: int, stream: int, step: int, preserve_noise: bool, activation: str = "tanh"
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, x_hat, residual) of a Linear inverse (V ``[D_in, D_out]``, c ``[D_in]``); see the module doc."""
    return _ops.inverse_loss(y, h, weight, bias, activation, float(sigma), int(seed), int(stream), int(step),
                             bool(preserve_noise))


def inverse_loss_lc2d(y: torch.Tensor, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                      stride: IntPair = 1, padding: Padding = 0, dilation: IntPair = 1, *, sigma: float, seed: int,
                      stream: int, step: int, preserve_noise: bool, activation: str = "tanh"
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, x_hat, residual) of a transposed LC inverse (V of the forward weight's shape, c ``[C_in, H, W]``)."""
    s, d = pair(stride, "stride"), pair(dilation, "dilation")
    p = resolve_padding(padding, tuple(h.shape[-2:]), tuple(weight.shape[-2:]), s, d)
    return _ops.inverse_loss_lc2d(y, h, weight, bias, list(s), list(p), list(d), activation, float(sigma),
                                  int(seed), int(stream), int(step), bool(preserve_noise))
