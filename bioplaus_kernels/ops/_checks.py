"""Host-side input-check helpers shared by the fake kernels and functional forms of every op: the Python
mirror of csrc/common/checks.h, with the same messages (c10's dtype names, shapes as "[2, 3, 4]")."""
from __future__ import annotations

from typing import Sequence

import torch

# c10's names, as the C++ messages print them.
_DTYPE_NAMES = {torch.float32: "Float", torch.float64: "Double", torch.float16: "Half", torch.bfloat16: "BFloat16",
                torch.int8: "Char", torch.uint8: "Byte", torch.int16: "Short", torch.int32: "Int",
                torch.int64: "Long", torch.bool: "Bool", torch.complex64: "ComplexFloat",
                torch.complex128: "ComplexDouble"}


def dtype_name(dtype: torch.dtype) -> str:
    return _DTYPE_NAMES.get(dtype, str(dtype).replace("torch.", ""))


def shape_str(s: Sequence[int]) -> str:
    return "[" + ", ".join(str(v) for v in s) + "]"


def check_int_list(op: str, name: str, v: Sequence[int], length: int, minimum: int) -> None:
    torch._check(len(v) == length, lambda: f"{op}: {name} must have {length} values, got {len(v)} ({shape_str(v)})")
    for e in v:
        torch._check(e >= minimum, lambda: f"{op}: {name} values must be >= {minimum}, got {shape_str(v)}")


def check_float_dtype(op: str, name: str, t: torch.Tensor) -> None:
    cpu_ok = t.dtype in (torch.float32, torch.float64)
    if t.device.type == "cuda":
        torch._check(cpu_ok or t.dtype in (torch.float16, torch.bfloat16),
                     lambda: f"{op}: {name} must be float32, float64, float16 or bfloat16 on CUDA, got "
                             f"{dtype_name(t.dtype)}")
    else:
        torch._check(cpu_ok, lambda: f"{op}: {name} must be float32 or float64 on the CPU, got {dtype_name(t.dtype)}")


def check_same(op, a_name, a, b_name, b):
    torch._check(a.device == b.device,
                 lambda: f"{op}: {a_name} is on {a.device} but {b_name} is on {b.device}; they must be on the same device")
    torch._check(a.dtype == b.dtype,
                 lambda: f"{op}: {a_name} has dtype {dtype_name(a.dtype)} but {b_name} has dtype "
                         f"{dtype_name(b.dtype)}; they must match")


def check_dim(op, name, t, dim, layout):
    torch._check(t.dim() == dim,
                 lambda: f"{op}: {name} must be {dim}-D {layout}, got a {t.dim()}-D tensor of shape {shape_str(t.shape)}")
