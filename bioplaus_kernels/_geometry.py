"""Padding and size arithmetic shared by the functional ops and the modules.

Padding is resolved to four ints (top, bottom, left, right), the form every kernel takes:
an int, a pair (h, w), a 4-tuple (top, bottom, left, right), or the strings
``"valid"`` (no padding) and ``"same"`` (TensorFlow semantics: out = ceil(in / stride), the odd pad
row/column at the bottom/right).
"""
from __future__ import annotations

from typing import Sequence, Tuple, Union

IntPair = Union[int, Sequence[int]]
Padding = Union[int, str, Sequence[int]]


def pair(value: IntPair, name: str) -> Tuple[int, int]:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        return (value, value)
    vals = tuple(value)
    if len(vals) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return vals  # type: ignore[return-value]


def resolve_padding(padding: Padding, input_size: Sequence[int], kernel_size: Sequence[int],
                    stride: Sequence[int], dilation: Sequence[int]) -> Tuple[int, int, int, int]:
    """(top, bottom, left, right) for the given padding spec."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            pads = []
            for size, k, s, d in zip(input_size, kernel_size, stride, dilation):
                out = -(-size // s)
                total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
                pads += [total // 2, total - total // 2]
            return tuple(pads)  # type: ignore[return-value]
        raise ValueError(f"padding must be an int, a pair, a 4-tuple, 'same' or 'valid', got {padding!r}")
    if isinstance(padding, int) and not isinstance(padding, bool):
        return (padding,) * 4  # type: ignore[return-value]
    vals = tuple(padding)
    if len(vals) == 2:
        return (vals[0], vals[0], vals[1], vals[1])
    if len(vals) == 4:
        return vals  # type: ignore[return-value]
    raise ValueError(f"padding must be an int, a pair, a 4-tuple, 'same' or 'valid', got {padding!r}")


def out_size(size: int, k: int, s: int, lo: int, hi: int, d: int) -> int:
    return (size + lo + hi - d * (k - 1) - 1) // s + 1


def output_size(input_size: Sequence[int], kernel_size: Sequence[int], stride: Sequence[int],
                padding4: Sequence[int], dilation: Sequence[int]) -> Tuple[int, int]:
    return (out_size(input_size[0], kernel_size[0], stride[0], padding4[0], padding4[1], dilation[0]),
            out_size(input_size[1], kernel_size[1], stride[1], padding4[2], padding4[3], dilation[1]))
