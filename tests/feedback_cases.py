"""Shared by the input-gradient tests: every feedback mode of the spec, and the check that the real kernel
and the fake kernel reject a bad input with the same message."""
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
