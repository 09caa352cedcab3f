"""Fully connected layer with a feedback matrix, in plain PyTorch: the float64 ground truth of the tests and
the "dense B rebuilt every step" baseline of the benchmarks."""
from __future__ import annotations

import torch

from .feedback_source import feedback_source


def linear_backward_input(grad_y: torch.Tensor, weight: torch.Tensor, *, feedback: str = "weight", seed: int = 0,
                          stream: int = 0, step: int = 0, distribution: str = "uniform",
                          scale: float = 1.0) -> torch.Tensor:
    """grad_x[..., i] = sum_o grad_y[..., o] * B[o, i], B = reference.feedback_source(weight, spec)."""
    B = feedback_source(weight, feedback, seed, stream, step, distribution, scale)
    return grad_y @ B
