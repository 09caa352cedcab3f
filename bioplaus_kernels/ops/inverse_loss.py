"""Inverse losses of target propagation: ``torch.ops.bioplaus.inverse_loss[_lc2d]`` and the noisy input
``torch.ops.bioplaus.inverse_loss_noisy_input`` (contract in csrc/inverse_loss.h; docs/papers.md section 1).

With ``y = f(h~)`` computed by the caller's forward layer from the noisy input ``h~ = h + eps``
(``inverse_loss_noisy_input(h, sigma, seed, stream, step)``: Philox normals, element e of h's row-major order,
the generator, key, counter and conversions of ``torch.ops.bioplaus.philox_fill(h, seed, stream, step,
"normal", sigma)``, equal to it up to the last ulp of the float32 log/cos/sin, which the CPU kernel
vectorises)::

    x_hat    = act(V y + c)                      (the inverse layer, as in difference_target)
    residual = x_hat - target                    (DTP, noise-preserving: target = h~;  SDTP, de-noising: h)
    loss     = sum(residual ** 2) / N           (sum over a sample's units, mean over the batch)

Returns ``(loss, x_hat, residual)``; loss is differentiable in y, target, V and c (registered autograd), x_hat
and residual are not.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch

from .._geometry import IntPair, Padding, pair, resolve_padding
from . import _tp
from ._checks import check_float_dtype, check_seed_stream_step


_ops = torch.ops.bioplaus


def _outputs(h):
    return h.new_empty(()), h.new_empty(h.shape), h.new_empty(h.shape)


@torch.library.register_fake("bioplaus::inverse_loss")
def _inverse_loss_fake(y, target, weight, bias, activation="tanh"):
    op = "inverse_loss"
    _tp.check_activation(op, activation)
    _tp.check_like_weight(op, weight, (("y", y), ("target", target), ("bias", bias)))
    _tp.check_linear_inverse_geometry(op, target, "target", y, "y", weight, bias)
    return _outputs(target)


@torch.library.register_fake("bioplaus::inverse_loss_lc2d")
def _inverse_loss_lc2d_fake(y, target, weight, bias, stride, padding, dilation, activation="tanh"):
    op = "inverse_loss_lc2d"
    _tp.check_activation(op, activation)
    _tp.check_like_weight(op, weight, (("y", y), ("target", target), ("bias", bias)))
    _tp.check_lc2d_inverse_geometry(op, target, "target", y, "y", weight, bias, stride, padding, dilation)
    return _outputs(target)


@torch.library.register_fake("bioplaus::inverse_loss_noisy_input")
def _inverse_loss_noisy_input_fake(h, sigma, seed, stream, step):
    op = "inverse_loss_noisy_input"
    torch._check(math.isfinite(sigma) and sigma >= 0, lambda: f"{op}: sigma must be a finite number >= 0, got {sigma}")
    check_seed_stream_step(op, seed, stream, step)
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
# The registered backward and parameter_grads (the trainer's graph-free call) share _inverse_grads.
# ---------------------------------------------------------------------------------------------------
def _inverse_grads(y, weight, x_hat, residual, activation, lc_geometry, grad_loss=1.0,
                   need=(False, False, True, True)):
    """(grad y, grad target, grad V, grad c) of grad_loss * loss, each None where need is False."""
    d_res = residual * (grad_loss * (2.0 / max(residual.shape[0], 1)))
    d_pre = _tp.pre_grad(activation, x_hat, d_res)
    grad_y = grad_target = grad_w = grad_b = None
    if need[0]:
        grad_y = d_pre @ weight if lc_geometry is None else _ops.lc2d_forward(d_pre, weight, None, *lc_geometry)
    if need[1]:
        grad_target = -d_res
    if need[2]:
        if lc_geometry is None:
            grad_w = d_pre.t() @ y
        else:
            grad_w = _ops.lc2d_backward_weight(y, d_pre, list(weight.shape[4:]), *lc_geometry)[0]
    if need[3]:
        grad_b = d_pre.sum(0)
    return grad_y, grad_target, grad_w, grad_b


def _setup_context(ctx, inputs, output):
    _, x_hat, residual = output
    ctx.mark_non_differentiable(x_hat, residual)
    ctx.set_materialize_grads(False)  # x_hat and residual get no gradient: no zero tensors for them
    ctx.save_for_backward(inputs[0], inputs[2], x_hat, residual)
    ctx.lc_geometry = tuple(list(v) for v in inputs[4:7]) if len(inputs) == 8 else None
    ctx.activation = inputs[-1]


def _backward(ctx, grad_loss, grad_x_hat, grad_residual):
    nones = (None,) * (4 if ctx.lc_geometry else 1)
    if grad_loss is None:  # grads are not materialised: an unused loss gives its inputs no gradient
        return (None,) * 4 + nones
    y, weight, x_hat, residual = ctx.saved_tensors
    return _inverse_grads(y, weight, x_hat, residual, ctx.activation, ctx.lc_geometry, grad_loss,
                          ctx.needs_input_grad[:4]) + nones


torch.library.register_autograd("bioplaus::inverse_loss", _backward, setup_context=_setup_context)
torch.library.register_autograd("bioplaus::inverse_loss_lc2d", _backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------------------
# Public functional API
# ---------------------------------------------------------------------------------------------------
def inverse_loss_noisy_input(h: torch.Tensor, sigma: float, seed: int, stream: int, step: int) -> torch.Tensor:
    """``h + eps``: the noisy input h~ whose forward image the inverse losses reconstruct (see the module doc),
    i.e. ``h + philox_fill(h, seed, stream, step, "normal", sigma)`` up to the last ulp of the transcendentals.
    Its gradient is the identity (eps is a constant)."""
    return _ops.inverse_loss_noisy_input(h, float(sigma), int(seed), int(stream), int(step))


def parameter_grads(y: torch.Tensor, weight: torch.Tensor, x_hat: torch.Tensor, residual: torch.Tensor,
                    activation: str = "tanh", lc_geometry=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(d loss / d V, d loss / d c) of an inverse loss from the op's own outputs ``x_hat`` and ``residual``: what
    ``loss.backward()`` gives the inverse's weight and bias (the registered backward's function), without
    building a graph. For a trainer that differentiates nothing else through the inverse (tp.Trainer);
    ``lc_geometry`` is ``(stride, padding, dilation)`` of an LC inverse (resolved padding, as the op takes it),
    None for a Linear inverse."""
    return _inverse_grads(y, weight, x_hat, residual, activation, lc_geometry)[2:]


def inverse_loss(y: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                 activation: str = "tanh") -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, x_hat, residual) of a Linear inverse (V ``[D_in, D_out]``, c ``[D_in]``); see the module doc."""
    return _ops.inverse_loss(y, target, weight, bias, activation)


def inverse_loss_lc2d(y: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                      stride: IntPair = 1, padding: Padding = 0, dilation: IntPair = 1, activation: str = "tanh"
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, x_hat, residual) of a transposed LC inverse (V of the forward weight's shape, c ``[C_in, H, W]``)."""
    s, d = pair(stride, "stride"), pair(dilation, "dilation")
    p = resolve_padding(padding, tuple(target.shape[-2:]), tuple(weight.shape[-2:]), s, d)
    return _ops.inverse_loss_lc2d(y, target, weight, bias, list(s), list(p), list(d), activation)
