"""Reference feedback matrices: B of a feedback spec (see ``bioplaus_kernels.ops.feedback_source``),
materialised with the pure-PyTorch Philox of ``reference.philox``: the ground truth that the kernels'
on-the-fly B and ``ops.feedback_source`` are tested against."""
from __future__ import annotations

import torch

from ..ops.feedback_source import check_feedback_spec
from .philox import philox


def feedback_source(weight: torch.Tensor, feedback: str, seed: int = 0, stream: int = 0, step: int = 0,
                    distribution: str = "uniform", scale: float = 1.0) -> torch.Tensor:
    """B[e] for every element e of weight (row-major), in weight's dtype and on its device."""
    check_feedback_spec("feedback_source", feedback, seed, stream, step, distribution)
    w = weight.detach()
    if feedback == "weight":
        return w.clone()
    if feedback == "sign":
        return torch.sign(w) * scale
    r = philox(tuple(w.shape), seed, stream, step, distribution, scale, dtype=w.dtype).to(w.device)
    return r if feedback == "random" else r.abs() * torch.sign(w)
