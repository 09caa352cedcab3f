"""Element-wise comparison of a kernel's result with its float64 reference, and stable case seeds.

A result in dtype T accumulated in A (float32 for float16/bfloat16/float32, float64 for float64) may differ
from the exact value by the rounding to T (at most one ulp of T at the rounded reference, allowing for a
rounding that goes the other way once the accumulation error is added) plus the accumulation error, at most
`terms` * eps(A) * sum |products| (the reference of the same op on absolute values). Every element must pass
on its own: a whole-tensor norm would let a handful of wrong elements through.
"""
import zlib

import torch

# Significand bits (with the implicit one) and the smallest subnormal's exponent.
_FORMAT = {torch.float16: (11, -24), torch.bfloat16: (8, -133), torch.float32: (24, -149),
           torch.float64: (53, -1074)}


def stable_seed(*parts) -> int:
    """A seed from the case's description, the same in every process (Python's hash() is salted)."""
    return zlib.crc32(repr(parts).encode())


def ulp(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The spacing of dtype's numbers at |values| (float64), subnormals included."""
    bits, min_exp = _FORMAT[dtype]
    _, e = torch.frexp(values.double().abs())  # |v| in [2^(e-1), 2^e)
    return torch.ldexp(torch.ones_like(values, dtype=torch.float64), (e - bits).clamp_min(min_exp))


def accumulation_eps(dtype: torch.dtype) -> float:
    return torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps


def assert_elementwise_close(got, want, dtype, *, magnitude=None, terms=1, ulps=1, extra=None, what="result"):
    """got (any device, dtype) against the float64 reference `want`: every element within `ulps` ulp of dtype
    at want rounded to dtype, plus terms * eps(accumulation type) * magnitude (the reference on absolute values;
    |want| when not given), plus `extra` (an element-wise allowance for a documented input difference). NaNs
    must match."""
    want = want.detach().cpu().double()
    got = got.detach().cpu().double()
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    rounded = want.to(dtype).double()
    magnitude = want.abs() if magnitude is None else magnitude.detach().cpu().double()
    tol = ulps * ulp(rounded, dtype) + terms * accumulation_eps(dtype) * magnitude
    if extra is not None:
        tol = tol + extra.detach().cpu().double()
    err = (got - rounded).abs()
    bad = ~((err <= tol) | (got.isnan() & want.isnan()))
    if bad.any():
        idx = bad.nonzero()[0].tolist()
        at = tuple(idx)
        raise AssertionError(f"{what}: {int(bad.sum())} of {bad.numel()} elements ({dtype}) off; first at {at}: "
                             f"got {got[at].item()!r}, reference {want[at].item()!r} (rounded "
                             f"{rounded[at].item()!r}), tolerance {tol[at].item():.3g}")
