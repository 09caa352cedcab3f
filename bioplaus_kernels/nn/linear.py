"""Linear with a feedback rule: a drop-in subclass of torch.nn.Linear."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..feedback import Fans, Scale
from ._autograd import LinearWithoutInputGrad
from ._feedback import FeedbackMixin, autocast_inputs

# The op's overload, resolved once: calling the packet resolves it on every call (a few us in a step).
_LINEAR = torch.ops.bioplaus.linear.default


class Linear(FeedbackMixin, nn.Linear):
    """``torch.nn.Linear`` (same arguments, parameters, initialisation and forward) whose backward sends the
    output gradient to the input through a feedback matrix B instead of W (bioplaus_kernels.feedback lists
    the rules and scales). The weight and bias gradients are always the true local gradients.

    Keyword-only args:
        feedback: "bp" (default), "fa", "usf", "frsf" or "brsf".
        seed: None, or an int: see below. stream: the layer id mixed into the generator's key.
        scale: "glorot" (default), "xiao", or a positive float.

    Paths:
        "bp": torch's own F.linear and its backward.
        "fa", seed=None: B is a buffer ``feedback_matrix`` (saved in the state dict), passed to the op
            ``bioplaus::linear`` as its ``matrix``; the input gradient is ``grad_y @ B``, the same BLAS GEMM that
            backprop runs with W.
        "fa" with a seed, "usf", "frsf", "brsf": the op ``bioplaus::linear`` (``ops.linear``) with the rule's
            spec: the kernel computes B from (seed, stream, step) and/or sign(W) as it goes; no B or sign
            tensor is materialised.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None, *,
                 feedback: str = "bp", seed: Optional[int] = None, stream: int = 0, scale: Scale = "glorot") -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._init_feedback(feedback, seed, stream, scale)

    def _fans(self) -> Fans:
        return Fans.linear(self.in_features, self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._uses_backprop():
            return F.linear(x, self.weight, self.bias)
        x, weight, bias, matrix = autocast_inputs(x, self.weight, self.bias, self.feedback_matrix)
        if self.feedback == "dfa":  # no input gradient: DFA sends the output error there
            return LinearWithoutInputGrad.apply(x, weight, bias)
        if matrix is not None:  # stored B: the op's C++ autograd, grad_y @ B by torch's GEMM
            return _LINEAR(x, weight, bias, "weight", 0, 0, 0, "uniform", 1.0, matrix)
        # the op itself, positionally: the functional wrapper's keyword handling is a few us per step
        return _LINEAR(x, weight, bias, *self._forward_args())

    def extra_repr(self) -> str:
        return super().extra_repr() + self._feedback_repr()
