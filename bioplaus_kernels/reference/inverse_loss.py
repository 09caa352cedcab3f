"""Inverse losses in plain PyTorch: the ground truth of tests/test_inverse_loss.py (autograd gives the
gradients). The noise is the reference Philox's normal sample, as the kernels draw it."""
from __future__ import annotations

from . import philox
from .difference_target import lc2d_inverse, linear_inverse


def _loss(x_hat, target):
    residual = x_hat - target
    return residual.pow(2).sum() / max(target.shape[0], 1), x_hat, residual


def inverse_loss(y, target, weight, bias, activation="tanh"):
    """(loss, x_hat, residual): x_hat = act(y V^T + c), residual = x_hat - target."""
    return _loss(linear_inverse(y, weight, bias, activation), target)


def inverse_loss_lc2d(y, target, weight, bias, stride=1, padding=0, dilation=1, activation="tanh"):
    return _loss(lc2d_inverse(y, weight, bias, stride, padding, dilation, activation), target)


def inverse_loss_noisy_input(h, sigma, seed, stream, step):
    """h + eps with the reference noise."""
    return h + philox.philox(tuple(h.shape), seed, stream, step, "normal", sigma).to(h.dtype)
