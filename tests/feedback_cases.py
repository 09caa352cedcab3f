"""Shared by the input-gradient tests: every feedback mode of the spec, the comparison of two materialised
feedback matrices, and the check that the real kernel and the fake kernel reject a bad input with the same
message."""
import pytest
from torch._subclasses.fake_tensor import FakeTensorMode
import torch

# Every feedback mode, with both distributions where it draws random numbers.
FEEDBACK_SPECS = [
    dict(feedback="weight"),
    dict(feedback="random", distribution="uniform"),
    dict(feedback="random", distribution="normal"),
    dict(feedback="sign"),
    dict(feedback="random_sign", distribution="uniform"),
    dict(feedback="random_sign", distribution="normal"),
]


def spec_id(s):
    return "-".join(v for v in (s["feedback"], s.get("distribution")) if v)


def assert_rejected(op, args, message):
    """op(*args) raises RuntimeError matching message, on real tensors and under FakeTensorMode."""
    with pytest.raises(RuntimeError, match=message):
        op(*args)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        with pytest.raises(RuntimeError, match=message):
            op(*fake_args)


def assert_same_feedback(got, want, spec):
    """Bit for bit, except normal samples: their float32 value may differ in the last ulp between libm, Sleef
    and CUDA's log/cos/sin, and that can move the rounding to float16/bfloat16 by one ulp of that type."""
    if spec.get("distribution") != "normal":
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
        return
    rtol = torch.finfo(want.dtype).eps if want.dtype in (torch.float16, torch.bfloat16) else 4e-7
    torch.testing.assert_close(got, want, rtol=rtol, atol=1e-6, equal_nan=True)
