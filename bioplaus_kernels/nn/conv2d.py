"""Conv2d with a feedback rule: a drop-in subclass of torch.nn.Conv2d."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..feedback import Fans, Scale
from ._autograd import Conv2dFeedback
from ._feedback import FeedbackMixin, autocast_inputs


class Conv2d(FeedbackMixin, nn.Conv2d):
    """``torch.nn.Conv2d`` (same arguments, parameters, initialisation and forward) whose backward sends the
    output gradient to the input through a feedback matrix B of W's shape instead of W
    (bioplaus_kernels.feedback lists the rules and scales). Weight and bias gradients stay the true ones.

    Keyword-only args: feedback ("bp" default, "fa", "usf", "frsf", "brsf"), seed, stream, scale (as for
    bioplaus_kernels.nn.Linear).

    Path: "bp" is torch's own forward and backward (any padding_mode). Every other rule runs torch's
    forward and, in the backward, materialises B (the stored ``feedback_matrix`` of "fa" with seed=None;
    otherwise ``ops.feedback_source`` from the seed and/or sign(W), a temporary that lives only during the
    backward and that the caching allocator hands back on the next step) and calls the library's
    convolution backward (``aten.convolution_backward``: cuDNN / oneDNN) once for the input with B and
    once for the weight and bias with W. B is small next to the activations of a convolution, so this costs
    little; Linear and LocallyConnected2d generate B inside their kernels instead.
    Supported with a rule: any stride, dilation and groups, integer padding or "same"/"valid", and
    padding_mode "zeros" (others raise a ValueError).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None, *,
                 feedback: str = "bp", seed: Optional[int] = None, stream: int = 0, scale: Scale = "glorot") -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device=device, dtype=dtype)
        if feedback != "bp" and padding_mode != "zeros":
            raise ValueError(f"Conv2d: feedback={feedback!r} supports padding_mode='zeros' only, got "
                             f"{padding_mode!r} (use feedback='bp' or zero padding)")
        self._init_feedback(feedback, seed, stream, scale)

    def _fans(self) -> Fans:
        return Fans.conv(self.in_channels // self.groups, self.out_channels, self.kernel_size)

    def _explicit_padding(self) -> Tuple[Tuple[int, int], Tuple[int, int]]:
        """((pad_h, pad_w) on both sides, (extra_bottom, extra_right)): torch's 'same' puts the odd pad row
        and column at the bottom/right."""
        if self.padding == "valid":
            return (0, 0), (0, 0)
        if self.padding == "same":
            total = [d * (k - 1) for k, d in zip(self.kernel_size, self.dilation)]
            return (total[0] // 2, total[1] // 2), (total[0] % 2, total[1] % 2)
        return tuple(self.padding), (0, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._uses_backprop():
            return super().forward(x)
        if self.padding_mode != "zeros":
            raise ValueError(f"Conv2d: feedback={self.feedback!r} supports padding_mode='zeros' only, got "
                             f"{self.padding_mode!r}")
        pad, extra = self._explicit_padding()
        if extra != (0, 0):
            x = F.pad(x, [0, extra[1], 0, extra[0]])
        x, weight, bias, matrix = autocast_inputs(x, self.weight, self.bias, self.feedback_matrix)
        if self.feedback == "dfa":
            feedback = None
        elif matrix is not None:
            feedback = matrix
        else:
            feedback = self._forward_args()
        return Conv2dFeedback.apply(x, weight, bias, feedback, self.stride, pad, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return super().extra_repr() + self._feedback_repr()
