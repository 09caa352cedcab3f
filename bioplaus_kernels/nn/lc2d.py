"""LocallyConnected2d: a convolution-shaped layer with untied weights (one filter bank per output position)."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from .._geometry import IntPair, Padding, pair, resolve_padding
from ..feedback import Fans, Scale
from ._autograd import LC2dWithoutInputGrad
from ..ops._checks import resolve_lc2d_output
from ._feedback import FeedbackMixin, autocast_inputs


# The op's overload, resolved once, and the spec values of backprop (B = the weight, or the stored matrix).
_LC2D = torch.ops.bioplaus.lc2d.default
_BACKPROP = ("weight", 0, 0, 0, "uniform", 1.0)


class LocallyConnected2d(FeedbackMixin, nn.Module):
    """Locally connected 2D layer on NCHW inputs of a fixed spatial size.

    Args:
        in_channels, out_channels: C_in and C_out.
        input_size: (H, W) of the input, an int or a pair; an LC layer has one filter bank per output
            position, so the grid is fixed at construction.
        kernel_size, stride, dilation: ints or pairs, as in ``torch.nn.Conv2d``.
        padding: int, pair, (top, bottom, left, right), ``"valid"`` or ``"same"``. ``"same"`` follows
            TensorFlow (output = ceil(input / stride), the odd pad row/column at the bottom/right), as in
            Bartunov et al. 2018, for any stride.
        bias: learn an untied bias of shape [C_out, H_out, W_out].
        feedback, seed, stream, scale (keyword-only): the feedback rule of the input gradient, as for
            bioplaus_kernels.nn.Linear. Every rule goes through the op ``bioplaus::lc2d`` (``ops.lc2d``): "bp"
            and the seeded rules with the rule's spec (the input-gradient kernel computes B from the seed
            and/or sign(W) as it gathers; nothing is materialised), "fa" with seed=None with the stored
            buffer ``feedback_matrix`` as the op's ``matrix``. Weight and bias gradients are the true ones.

    Parameters:
        weight: [H_out, W_out, C_out, C_in, kH, kW], Glorot-uniform with the convolution fans
            (fan_in = C_in*kH*kW, fan_out = C_out*kH*kW), as the reference paper initialises every layer.
        bias: [C_out, H_out, W_out], zeros.

    Example::

        >>> lc = LocallyConnected2d(3, 64, input_size=32, kernel_size=5, stride=2, padding="same")
        >>> lc(torch.randn(8, 3, 32, 32)).shape
        torch.Size([8, 64, 16, 16])
    """

    def __init__(self, in_channels: int, out_channels: int, input_size: IntPair, kernel_size: IntPair,
                 stride: IntPair = 1, padding: Padding = 0, dilation: IntPair = 1, bias: bool = True,
                 device=None, dtype=None, *, feedback: str = "bp", seed: Optional[int] = None, stream: int = 0,
                 scale: Scale = "glorot") -> None:
        super().__init__()
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"LocallyConnected2d: {name} must be a positive int, got {v!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.input_size = pair(input_size, "input_size")
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = pair(stride, "stride")
        self.dilation = pair(dilation, "dilation")
        for name, v in (("input_size", self.input_size), ("kernel_size", self.kernel_size),
                        ("stride", self.stride), ("dilation", self.dilation)):
            if min(v) < 1:
                raise ValueError(f"LocallyConnected2d: {name} must be positive, got {v}")
        self.padding = padding
        self.padding4 = resolve_padding(padding, self.input_size, self.kernel_size, self.stride, self.dilation)
        if min(self.padding4) < 0:
            raise ValueError(f"LocallyConnected2d: padding must be non-negative, got {padding!r}")
        try:  # the ops' geometry check, as a constructor argument error
            self.output_size = resolve_lc2d_output("LocallyConnected2d", self.input_size, self.kernel_size,
                                                   self.stride, self.padding4, self.dilation)
        except RuntimeError as e:
            raise ValueError(str(e)) from None
        # (stride, padding, dilation) as the op takes them: resolved once here, never again per call
        self._geometry = (list(self.stride), list(self.padding4), list(self.dilation))
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(*self.output_size, out_channels, in_channels, *self.kernel_size,
                                               **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, *self.output_size, **factory)) if bias else None
        self.reset_parameters()
        self._init_feedback(feedback, seed, stream, scale)

    def _fans(self) -> Fans:
        return Fans.conv(self.in_channels, self.out_channels, self.kernel_size)

    def reset_parameters(self) -> None:
        receptive = self.kernel_size[0] * self.kernel_size[1]
        fan_in, fan_out = self.in_channels * receptive, self.out_channels * receptive
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, weight, bias, matrix = autocast_inputs(x, self.weight, self.bias, self.feedback_matrix)
        if self.feedback == "dfa" and not self._true_bp:  # no input gradient: DFA sends the output error there
            return LC2dWithoutInputGrad.apply(x, weight, bias, self._geometry)
        # the op itself, positionally, with the geometry resolved at construction and the rule's spec values
        if self._uses_backprop():
            return _LC2D(x, weight, bias, *self._geometry, *_BACKPROP, None)
        if matrix is not None:  # stored B: the op's input gradient in "weight" mode through B
            return _LC2D(x, weight, bias, *self._geometry, *_BACKPROP, matrix)
        return _LC2D(x, weight, bias, *self._geometry, *self._forward_args(), None)

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, input_size={self.input_size}, "
             f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding!r}")
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        return s + f", output_size={self.output_size}, bias={self.bias is not None}" + self._feedback_repr()

    @classmethod
    def from_conv2d(cls, conv: nn.Conv2d, input_size: IntPair, *, feedback: str = "bp", seed: Optional[int] = None,
                    stream: int = 0, scale: Scale = "glorot") -> "LocallyConnected2d":
        """Untie a Conv2d: every output position starts from the conv's shared filter (and bias), so the new
        layer computes the same outputs as ``conv`` at creation. Supports groups=1 and zero padding.
        ``feedback``, ``seed``, ``stream``, ``scale``: the new layer's rule (see the class docstring)."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"LocallyConnected2d.from_conv2d: expected an nn.Conv2d, got {type(conv).__name__}")
        if conv.groups != 1:
            raise ValueError(f"LocallyConnected2d.from_conv2d: groups must be 1, got {conv.groups}")
        if conv.padding_mode != "zeros":
            raise ValueError(f"LocallyConnected2d.from_conv2d: padding_mode must be 'zeros', got {conv.padding_mode!r}")
        padding: Padding
        if conv.padding == "same":  # torch's 'same' (stride 1): the odd pad goes to the bottom/right too
            padding = tuple(p for k, d in zip(conv.kernel_size, conv.dilation)
                            for p in (d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2))
        elif conv.padding == "valid":
            padding = 0
        else:
            padding = tuple(conv.padding)
        w = conv.weight.detach()
        lc = cls(conv.in_channels, conv.out_channels, input_size, conv.kernel_size, conv.stride, padding,
                 conv.dilation, bias=conv.bias is not None, device=w.device, dtype=w.dtype, feedback=feedback,
                 seed=seed, stream=stream, scale=scale)
        with torch.no_grad():
            lc.weight.copy_(w.expand(*lc.output_size, *w.shape))
            if conv.bias is not None:
                lc.bias.copy_(conv.bias.detach()[:, None, None].expand_as(lc.bias))
        return lc
