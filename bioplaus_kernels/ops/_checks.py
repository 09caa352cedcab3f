"""Host-side input-check helpers shared by the fake kernels and functional forms of every op: the Python
mirror of csrc/common/checks.h, with the same messages (c10's dtype names, shapes as "[2, 3, 4]")."""
from __future__ import annotations

from typing import Sequence

import torch

from .._geometry import output_size

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


def check_seed_stream_step(op: str, seed: int, stream: int, step: int) -> None:
    """The counter arguments of every op that draws Philox numbers: the key's seed and stream (an independent
    sequence per stream, not a CUDA stream) and the step of the counter."""
    torch._check(seed >= 0, lambda: f"{op}: seed must be >= 0, got {seed}")
    torch._check(stream >= 0, lambda: f"{op}: stream must be >= 0, got {stream}")
    torch._check(step >= 0, lambda: f"{op}: step must be >= 0, got {step}")


# ---------------------------------------------------------------------------------------------------
# The geometry of a locally connected 2D layer (mirror of csrc/common/lc2d_geometry.h): the lc2d ops and the
# transposed LC inverses of target propagation.
# ---------------------------------------------------------------------------------------------------
def check_lc2d_hyper(op: str, stride, padding, dilation) -> None:
    check_int_list(op, "stride", stride, 2, 1)
    check_int_list(op, "padding", padding, 4, 0)
    check_int_list(op, "dilation", dilation, 2, 1)


def check_lc2d_weight(op: str, name: str, w: torch.Tensor) -> None:
    check_dim(op, name, w, 6, "[H_out, W_out, C_out, C_in, kH, kW]")
    torch._check(all(s >= 1 for s in w.shape), lambda: f"{op}: {name} sizes must be positive, got {shape_str(w.shape)}")
    check_float_dtype(op, name, w)


def resolve_lc2d_output(op: str, hw, k, stride, padding, dilation):
    """(H_out, W_out) of an input H x W under a kH x kW kernel; checks the hyper-parameters and that the dilated
    kernel fits the padded input."""
    check_lc2d_hyper(op, stride, padding, dilation)
    (H, W), (kH, kW) = hw, k
    torch._check(H >= 1 and W >= 1, lambda: f"{op}: input spatial size must be positive, got {H}x{W}")
    torch._check(kH >= 1 and kW >= 1, lambda: f"{op}: kernel size must be positive, got {kH}x{kW}")
    ph, pw = H + padding[0] + padding[1], W + padding[2] + padding[3]
    sh, sw = dilation[0] * (kH - 1) + 1, dilation[1] * (kW - 1) + 1
    torch._check(sh <= ph and sw <= pw,
                 lambda: f"{op}: the kernel spans {sh}x{sw} (size {kH}x{kW}, dilation {dilation[0]}x{dilation[1]}) "
                         f"which is larger than the padded input {ph}x{pw}")
    return output_size(hw, k, stride, padding, dilation)


def check_lc2d_grid(op: str, out, hw, k, stride, dilation, got, who: str) -> None:
    """``who`` (a weight or an output-side tensor) has the output grid ``out`` of the geometry."""
    torch._check(tuple(got) == tuple(out),
                 lambda: f"{op}: input {hw[0]}x{hw[1]} with kernel {k[0]}x{k[1]}, stride {stride[0]}x{stride[1]} and "
                         f"dilation {dilation[0]}x{dilation[1]} gives a {out[0]}x{out[1]} output, but {who} has "
                         f"{got[0]}x{got[1]} output positions")
