"""Inverse losses in plain PyTorch: the ground truth of tests/test_inverse_loss.py (autograd gives the
gradients). The noise is the reference Philox's normal sample, as the kernels draw it."""
from __future__ import annotations

import torch

from . import philox
from .difference_target import lc2d_inverse, linear_inverse


def _noise(h, sigma, seed, stream, step):
    return philox.philox(tuple(h.shape), seed, stream, step, "normal", sigma).to(h.dtype)


def _loss(x_hat, h, sigma, seed, stream, step, preserve_noise):
    target = h + _noise(h, sigma, seed, stream, step) if preserve_noise else h
    residual = x_hat - target
    return residual.pow(2).sum() / max(h.shape[0], 1), x_hat, residual


def inverse_loss(y, h, weight, bias, *, sigma, seed, stream, step, preserve_noise, activation="tanh"):
    """(loss, x_hat, residual): x_hat = act(y V^T + c), residual = x_hat - (h [+ eps])."""
    return _loss(linear_inverse(y, weight, bias, activation), h, sigma, seed, stream, step, preserve_noise)


def inverse_loss_lc2d(y, h, weight, bias, stride=1, padding=0, dilation=1, *, sigma, seed, stream, step,
                      preserve_noise, activation="tanh"):
    x_hat = lc2d_inverse(y, weight, bias, stride, padding, dilation, activation)
    return _loss(x_hat, h, sigma, seed, stream, step, preserve_noise)


def noisy(h, sigma, seed, stream, step):
    """h + eps with the reference noise."""
    return h + _noise(h, sigma, seed, stream, step)
