"""lc2d: forward, input gradient and weight/bias gradients of the kernels against the float64 reference."""
import random

import pytest
import torch
from torch.library import opcheck

from bioplaus_kernels import ops, reference
from bioplaus_kernels._geometry import output_size, resolve_padding
from bioplaus_kernels.reference import lc2d as ref

from conftest import DEVICES, KERNEL_DEVICES, KERNEL_DTYPES, kernel_ops, tf32_allowance
from feedback_cases import FEEDBACK_SPECS, assert_rejected, spec_id
from tolerance import assert_elementwise_close, stable_seed, ulp



def make_cases(count, seed):
    """Random valid geometries: non-square, stride 1-4, dilation 1-2, every padding form, odd sizes."""
    rng = random.Random(seed)
    cases = []
    while len(cases) < count:
        k = (rng.randint(1, 5), rng.randint(1, 5))
        s = (rng.randint(1, 4), rng.randint(1, 4))
        d = (rng.randint(1, 2), rng.randint(1, 2))
        hw = (rng.randint(3, 13), rng.randint(3, 13))
        padding = rng.choice(["same", "valid", rng.randint(0, 2), (rng.randint(0, 2), rng.randint(0, 2)),
                              tuple(rng.randint(0, 2) for _ in range(4))])
        p4 = resolve_padding(padding, hw, k, s, d)
        if any(dd * (kk - 1) + 1 > h + lo + hi for kk, dd, h, lo, hi in
               zip(k, d, hw, (p4[0], p4[2]), (p4[1], p4[3]))):
            continue
        cases.append(dict(N=rng.choice([1, 2, 3, 5, 7]), C_in=rng.choice([1, 2, 3, 5]),
                          C_out=rng.choice([1, 3, 4, 7]), hw=hw, k=k, stride=s, padding=padding, dilation=d))
    return cases


CASES = make_cases(40, seed=2018)


def case_id(c):
    return (f"n{c['N']}c{c['C_in']}o{c['C_out']}_{c['hw'][0]}x{c['hw'][1]}_k{c['k'][0]}x{c['k'][1]}"
            f"_s{c['stride'][0]}{c['stride'][1]}_d{c['dilation'][0]}{c['dilation'][1]}_p{c['padding']}")


def make_tensors(c, dtype=torch.float64, device="cpu", bias=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    p4 = resolve_padding(c["padding"], c["hw"], c["k"], c["stride"], c["dilation"])
    out = output_size(c["hw"], c["k"], c["stride"], p4, c["dilation"])
    x = torch.randn(c["N"], c["C_in"], *c["hw"], generator=gen, dtype=torch.float64)
    w = torch.randn(*out, c["C_out"], c["C_in"], *c["k"], generator=gen, dtype=torch.float64)
    b = torch.randn(c["C_out"], *out, generator=gen, dtype=torch.float64) if bias else None
    to = dict(dtype=dtype, device=device)
    return x.to(**to), w.to(**to), (b.to(**to) if bias else None), out


def hp(c):
    return dict(stride=c["stride"], padding=c["padding"], dilation=c["dilation"])


def assert_close_to_ref(got, want, dtype, magnitude=None, terms=1):
    """float16/bfloat16 element by element (tolerance.py: `magnitude` is the reference on absolute values,
    `terms` the accumulation length); float32/float64 within a relative tolerance."""
    want = want.to(torch.float64)
    got = got.to(device="cpu", dtype=torch.float64)
    if dtype in (torch.float16, torch.bfloat16):
        assert magnitude is not None, "a low-precision comparison needs the reference's magnitude"
        assert_elementwise_close(got, want, dtype, magnitude=magnitude, terms=terms)
    else:
        tol = 1e-12 if dtype == torch.float64 else 2e-5
        torch.testing.assert_close(got, want, rtol=tol, atol=tol * max(1.0, want.abs().max().item()))


def dtypes_for(device):
    return [torch.float32, torch.float64] + ([torch.float16, torch.bfloat16] if device == "cuda" else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("c", CASES, ids=case_id)
def test_forward_and_gradients_match_reference(c, device):
    for dtype in dtypes_for(device):
        x, w, b, _ = make_tensors(c, dtype, device, seed=stable_seed(case_id(c)) % 1000)
        x.requires_grad_(), w.requires_grad_(), b.requires_grad_()
        y = ops.lc2d(x, w, b, **hp(c))
        g = torch.randn(y.shape, dtype=torch.float64).to(dtype=dtype, device=device)
        grads = torch.autograd.grad(y, (x, w, b), g)
        # The reference runs in float64 on the CPU on the same (rounded) inputs; on absolute values it gives
        # each element's magnitude (the sum of |terms|) for the low-precision comparison.
        x64, w64, b64 = (t.detach().cpu().double().requires_grad_() for t in (x, w, b))
        y64 = ref.lc2d(x64, w64, b64, **hp(c))
        ref_grads = torch.autograd.grad(y64, (x64, w64, b64), g.cpu().double())
        a64 = [t.detach().abs().requires_grad_() for t in (x64, w64, b64)]
        y_mag = ref.lc2d(*a64, **hp(c))
        mag_grads = torch.autograd.grad(y_mag, a64, g.cpu().double().abs())
        K = c["C_in"] * c["k"][0] * c["k"][1]
        terms = (K + 1, c["C_out"] * c["k"][0] * c["k"][1], c["N"], c["N"])  # y, grad_x, grad_w, grad_b
        assert y.dtype == dtype and y.device.type == device and y.is_contiguous()
        assert_close_to_ref(y, y64, dtype, y_mag, terms[0])
        for got, want, mag, n in zip(grads, ref_grads, mag_grads, terms[1:]):
            assert got.shape == want.shape
            assert_close_to_ref(got, want, dtype, mag, n)


@pytest.mark.parametrize("device", DEVICES)
def test_gradient_ops_called_directly(device):
    c = CASES[3]
    x, w, b, out = make_tensors(c, device=device)
    y = ops.lc2d(x, w, b, **hp(c))
    gy = torch.randn_like(y)
    x64, w64, b64 = (t.detach().cpu().requires_grad_() for t in (x, w, b))
    gx_ref, gw_ref, gb_ref = torch.autograd.grad(ref.lc2d(x64, w64, b64, **hp(c)), (x64, w64, b64), gy.cpu())
    assert_close_to_ref(ops.lc2d_backward_input(gy, w, c["hw"], **hp(c)), gx_ref, torch.float64)
    gw, gb = ops.lc2d_backward_weight(gy, x, c["k"], **hp(c))
    assert_close_to_ref(gw, gw_ref, torch.float64)
    assert_close_to_ref(gb, gb_ref, torch.float64)


GRADCHECK_CASES = [
    dict(N=2, C_in=2, C_out=3, hw=(5, 6), k=(3, 2), stride=(1, 2), padding="same", dilation=(1, 1)),
    dict(N=3, C_in=1, C_out=2, hw=(7, 5), k=(2, 3), stride=(2, 1), padding=(1, 0, 2, 1), dilation=(2, 1)),
    dict(N=1, C_in=3, C_out=2, hw=(6, 6), k=(3, 3), stride=(3, 3), padding="valid", dilation=(1, 1)),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("c", GRADCHECK_CASES, ids=case_id)
def test_gradcheck(c, device):
    x, w, b, _ = make_tensors(c, device=device)
    inputs = tuple(t.requires_grad_() for t in (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w, b: ops.lc2d(x, w, b, **hp(c)), inputs)
    assert torch.autograd.gradcheck(lambda x, w: ops.lc2d(x, w, None, **hp(c)), inputs[:2])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("c", GRADCHECK_CASES[:2], ids=case_id)
def test_opcheck(c, device):
    x, w, b, out = make_tensors(c, dtype=torch.float32, device=device)
    p4 = list(resolve_padding(c["padding"], c["hw"], c["k"], c["stride"], c["dilation"]))
    s, d = list(c["stride"]), list(c["dilation"])
    gy = torch.randn(c["N"], c["C_out"], *out, device=device)
    # the layer op (with its autograd), then the kernel ops (formulas without a derivative of their own)
    opcheck(torch.ops.bioplaus.lc2d, (x.requires_grad_(), w.requires_grad_(), b, s, p4, d))
    opcheck(torch.ops.bioplaus.lc2d, (x, w, None, s, p4, d))
    opcheck(torch.ops.bioplaus.lc2d, (x, w, b.requires_grad_(), s, p4, d), dict(matrix=torch.randn_like(w)))
    x, w, b = x.detach(), w.detach(), b.detach()
    opcheck(torch.ops.bioplaus.lc2d_forward, (x, w, b, s, p4, d))
    opcheck(torch.ops.bioplaus.lc2d_forward, (x, w, None, s, p4, d))
    opcheck(torch.ops.bioplaus.lc2d_backward_input, (gy, w.detach(), list(c["hw"]), s, p4, d))
    opcheck(torch.ops.bioplaus.lc2d_backward_weight, (gy, x.detach(), list(c["k"]), s, p4, d))


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_and_channels_last_inputs(device):
    c = dict(N=4, C_in=3, C_out=5, hw=(9, 8), k=(3, 3), stride=(2, 1), padding="same", dilation=(1, 1))
    x, w, b, _ = make_tensors(c, device=device)
    want = ref.lc2d(x.cpu(), w.cpu(), b.cpu(), **hp(c))
    variants = {
        "channels_last": x.to(memory_format=torch.channels_last),
        "sliced": torch.cat([x, x], dim=3)[..., : c["hw"][1]],
        "strided": torch.stack([x, torch.zeros_like(x)], dim=-1)[..., 0],
    }
    gy = torch.randn(want.shape, dtype=torch.float64)
    for name, xv in variants.items():
        assert not xv.is_contiguous(), name
        torch.testing.assert_close(xv, x)
        y = ops.lc2d(xv, w, b, **hp(c))
        assert_close_to_ref(y, want, torch.float64)
        # gradients with a non-contiguous grad_y and input
        gy_nc = gy.to(device).transpose(2, 3).contiguous().transpose(2, 3)
        gw, gb = ops.lc2d_backward_weight(gy_nc, xv, c["k"], **hp(c))
        gw_ref, gb_ref = ops.lc2d_backward_weight(gy.to(device), x, c["k"], **hp(c))
        assert torch.equal(gw, gw_ref) and torch.equal(gb, gb_ref)
        gx = ops.lc2d_backward_input(gy_nc, w, c["hw"], **hp(c))
        assert torch.equal(gx, ops.lc2d_backward_input(gy.to(device), w, c["hw"], **hp(c)))


@pytest.mark.parametrize("device", DEVICES)
def test_bit_identical_across_runs(device):
    c = dict(N=16, C_in=8, C_out=16, hw=(16, 16), k=(5, 5), stride=(2, 2), padding="same", dilation=(1, 1))
    x, w, b, _ = make_tensors(c, dtype=torch.float32, device=device)
    runs = []
    for _ in range(2):
        xr, wr, br = (t.clone().requires_grad_() for t in (x, w, b))
        y = ops.lc2d(xr, wr, br, **hp(c))
        y.backward(torch.ones_like(y) * 0.37)
        runs.append((y, xr.grad, wr.grad, br.grad))
    for first, second in zip(*runs):
        assert torch.equal(first, second)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch(device):
    c = dict(N=0, C_in=3, C_out=4, hw=(6, 7), k=(3, 3), stride=(1, 1), padding=1, dilation=(1, 1))
    x, w, b, out = make_tensors(c, device=device)
    x.requires_grad_(), w.requires_grad_(), b.requires_grad_()
    y = ops.lc2d(x, w, b, **hp(c))
    assert y.shape == (0, 4, *out)
    y.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, torch.zeros_like(b))


@pytest.mark.parametrize("device", DEVICES)
def test_large_values_of_padding_only_rows(device):
    # Output positions whose whole window lies in the padding get exactly the bias.
    c = dict(N=2, C_in=2, C_out=3, hw=(3, 3), k=(2, 2), stride=(1, 1), padding=(3, 3, 3, 3), dilation=(1, 1))
    x, w, b, out = make_tensors(c, device=device)
    y = ops.lc2d(x, w, b, **hp(c))
    assert torch.equal(y[:, :, 0, 0], b[:, 0, 0].expand(2, 3))
    assert_close_to_ref(y, ref.lc2d(x.cpu(), w.cpu(), b.cpu(), **hp(c)), torch.float64)


def test_double_backward_is_a_clear_error():
    c = GRADCHECK_CASES[0]
    x, w, b, _ = make_tensors(c)
    x.requires_grad_(), w.requires_grad_()
    y = ops.lc2d(x, w, b, **hp(c))
    (gx,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="derivative for bioplaus::lc2d_backward_input is not implemented"):
        gx.sum().backward()
    (gw,) = torch.autograd.grad(ops.lc2d(x, w, b, **hp(c)).sum(), w, create_graph=True)
    with pytest.raises(RuntimeError, match="derivative for bioplaus::lc2d_backward_weight is not implemented"):
        gw.sum().backward()


@pytest.mark.cuda
def test_autocast_runs_in_reduced_precision():
    c = dict(N=4, C_in=3, C_out=8, hw=(8, 8), k=(3, 3), stride=(1, 1), padding="same", dilation=(1, 1))
    x, w, b, _ = make_tensors(c, dtype=torch.float32, device="cuda")
    w.requires_grad_()
    for dtype in (torch.float16, torch.bfloat16):
        with torch.autocast("cuda", dtype=dtype):
            y = ops.lc2d(x, w, b, **hp(c))
        assert y.dtype == dtype
        y.float().sum().backward()
        assert w.grad.dtype == torch.float32
        assert_close_to_ref(y, ref.lc2d(x.cpu().double(), w.detach().cpu().double(), b.cpu().double(), **hp(c)),
                            dtype)
        w.grad = None


# ---------------------------------------------------------------------------------------------------
# Bad input: the C++ check and the fake kernel reject it with the same message naming the argument,
# the expected and the received value.
# ---------------------------------------------------------------------------------------------------
def _fwd_args(x_shape=(2, 3, 8, 8), w_shape=(8, 8, 4, 3, 3, 3), b_shape=(4, 8, 8), dtype=torch.float32,
              stride=(1, 1), padding=(1, 1, 1, 1), dilation=(1, 1), w_dtype=None):
    x = torch.randn(x_shape).to(dtype)
    w = torch.randn(w_shape).to(w_dtype or dtype)
    b = torch.randn(b_shape).to(w_dtype or dtype) if b_shape is not None else None
    return (x, w, b, list(stride), list(padding), list(dilation))


BAD_FORWARD = {
    "x ndim": (_fwd_args(x_shape=(3, 8, 8)), r"lc2d_forward: x must be 4-D \[N, C_in, H, W\], got a 3-D tensor of shape \[3, 8, 8\]"),
    "weight ndim": (_fwd_args(w_shape=(64, 4, 3, 3, 3)), r"weight must be 6-D \[H_out, W_out, C_out, C_in, kH, kW\], got a 5-D"),
    "channels": (_fwd_args(x_shape=(2, 5, 8, 8)), r"x has 5 channels but weight expects C_in=3"),
    "spatial": (_fwd_args(x_shape=(2, 3, 9, 8)), r"input 9x8 with kernel 3x3, stride 1x1 and dilation 1x1 gives a 9x8 output, but weight has 8x8 output positions"),
    "dtype mismatch": (_fwd_args(w_dtype=torch.float64), r"x has dtype Float but weight has dtype Double; they must match"),
    "integer dtype": (_fwd_args(dtype=torch.int32), r"weight must be float32 or float64 on the CPU, got Int"),
    "half on cpu": (_fwd_args(dtype=torch.float16), r"weight must be float32 or float64 on the CPU, got Half"),
    "stride zero": (_fwd_args(stride=(0, 1)), r"stride values must be >= 1, got \[0, 1\]"),
    "negative padding": (_fwd_args(padding=(1, -1, 1, 1)), r"padding values must be >= 0, got \[1, -1, 1, 1\]"),
    "padding length": (_fwd_args(padding=(1, 1)), r"padding must have 4 values, got 2"),
    "dilation zero": (_fwd_args(dilation=(1, 0)), r"dilation values must be >= 1, got \[1, 0\]"),
    "kernel too large": (_fwd_args(x_shape=(2, 3, 2, 2), w_shape=(1, 1, 4, 3, 5, 5), b_shape=None, padding=(0, 0, 0, 0)),
                         r"the kernel spans 5x5 \(size 5x5, dilation 1x1\) which is larger than the padded input 2x2"),
    "zero spatial": (_fwd_args(x_shape=(2, 3, 0, 8)), r"input spatial size must be positive, got 0x8"),
    "zero weight size": (_fwd_args(w_shape=(8, 8, 0, 3, 3, 3), b_shape=None), r"weight sizes must be positive, got \[8, 8, 0, 3, 3, 3\]"),
    "bias shape": (_fwd_args(b_shape=(4, 8)), r"bias must have shape \[C_out, H_out, W_out\] = \[4, 8, 8\], got \[4, 8\]"),
    "bias dtype": ((torch.randn(2, 3, 8, 8), torch.randn(8, 8, 4, 3, 3, 3), torch.randn(4, 8, 8, dtype=torch.float64),
                    [1, 1], [1, 1, 1, 1], [1, 1]), r"bias has dtype Double but weight has dtype Float; they must match"),
}


@pytest.mark.parametrize("name", list(BAD_FORWARD))
def test_bad_forward_input_is_rejected_with_a_clear_message(name):
    # The fake kernel (torch.compile, FakeTensor tracing) rejects it with the same message.
    assert_rejected(torch.ops.bioplaus.lc2d_forward, *BAD_FORWARD[name])


BAD_BACKWARD_INPUT = {
    "grad_y channels": ((torch.randn(2, 5, 8, 8), torch.randn(8, 8, 4, 3, 3, 3), [8, 8]),
                        r"lc2d_backward_input: grad_y has 5 channels but weight expects C_out=4"),
    "grad_y grid": ((torch.randn(2, 4, 7, 8), torch.randn(8, 8, 4, 3, 3, 3), [8, 8]),
                    r"gives a 8x8 output, but grad_y has 7x8 output positions"),
    "input_size": ((torch.randn(2, 4, 8, 8), torch.randn(8, 8, 4, 3, 3, 3), [9, 8]),
                   r"gives a 9x8 output, but weight has 8x8 output positions"),
    "input_size non-positive": ((torch.randn(2, 4, 8, 8), torch.randn(8, 8, 4, 3, 3, 3), [0, 8]),
                                r"input_size values must be >= 1, got \[0, 8\]"),
    "device or dtype": ((torch.randn(2, 4, 8, 8, dtype=torch.float64), torch.randn(8, 8, 4, 3, 3, 3), [8, 8]),
                        r"grad_y has dtype Double but weight has dtype Float; they must match"),
}

BAD_BACKWARD_WEIGHT = {
    "batch": ((torch.randn(3, 4, 8, 8), torch.randn(2, 3, 8, 8), [3, 3]),
              r"lc2d_backward_weight: grad_y has batch size 3 but x has batch size 2"),
    "grid": ((torch.randn(2, 4, 6, 8), torch.randn(2, 3, 8, 8), [3, 3]),
             r"gives a 8x8 output, but grad_y has 6x8 output positions"),
    "kernel_size": ((torch.randn(2, 4, 8, 8), torch.randn(2, 3, 8, 8), [0, 3]),
                    r"kernel_size values must be >= 1, got \[0, 3\]"),
    "x ndim": ((torch.randn(2, 4, 8, 8), torch.randn(3, 8, 8), [3, 3]), r"x must be 4-D \[N, C_in, H, W\], got a 3-D"),
}


@pytest.mark.parametrize("name", list(BAD_BACKWARD_INPUT))
def test_bad_backward_input_args(name):
    (gy, w, hw), message = BAD_BACKWARD_INPUT[name]
    with pytest.raises(RuntimeError, match=message):
        torch.ops.bioplaus.lc2d_backward_input(gy, w, hw, [1, 1], [1, 1, 1, 1], [1, 1])


@pytest.mark.parametrize("name", list(BAD_BACKWARD_WEIGHT))
def test_bad_backward_weight_args(name):
    (gy, x, k), message = BAD_BACKWARD_WEIGHT[name]
    with pytest.raises(RuntimeError, match=message):
        torch.ops.bioplaus.lc2d_backward_weight(gy, x, k, [1, 1], [1, 1, 1, 1], [1, 1])


@pytest.mark.cuda
def test_device_mismatch_is_rejected():
    x, w, b, s, p, d = _fwd_args()
    with pytest.raises(RuntimeError, match=r"x is on cpu but weight is on cuda:0; they must be on the same device"):
        torch.ops.bioplaus.lc2d_forward(x, w.cuda(), None, s, p, d)


# TensorFlow's SAME padding, worked out by hand from its definition (out = ceil(in / stride), total =
# max((out - 1) * stride + dilation * (k - 1) + 1 - in, 0), the odd pixel at the bottom/right):
# (in, k, stride, dilation) -> (before, after). Written out, not computed, so that the package's helper (which
# the reference layer shares) is checked against something independent of it.
SAME_PADDING_TABLE = [
    ((7, 4, 1, 1), (1, 2)), ((9, 3, 2, 1), (1, 1)), ((8, 3, 2, 1), (0, 1)), ((5, 1, 1, 1), (0, 0)),
    ((10, 5, 3, 1), (2, 2)), ((11, 3, 4, 1), (0, 0)), ((6, 3, 1, 2), (2, 2)), ((13, 2, 3, 3), (1, 2)),
    ((224, 7, 2, 1), (2, 3)), ((224, 9, 4, 1), (2, 3)), ((4, 5, 1, 1), (2, 2)), ((3, 2, 5, 1), (0, 0)),
]


@pytest.mark.parametrize("row,col", list(zip(SAME_PADDING_TABLE, SAME_PADDING_TABLE[1:] + SAME_PADDING_TABLE[:1])))
def test_same_padding_matches_tensorflow_table(row, col):
    (h, kh, sh, dh), (top, bottom) = row
    (w, kw, sw, dw), (left, right) = col
    assert tuple(resolve_padding("same", (h, w), (kh, kw), (sh, sw), (dh, dw))) == (top, bottom, left, right)
    assert tuple(resolve_padding("valid", (h, w), (kh, kw), (sh, sw), (dh, dw))) == (0, 0, 0, 0)


def test_bad_padding_string():
    with pytest.raises(ValueError, match=r"padding must be an int, a pair, a 4-tuple, 'same' or 'valid', got 'full'"):
        ops.lc2d(torch.randn(1, 1, 4, 4), torch.randn(2, 2, 1, 1, 3, 3), padding="full")


# ---------------------------------------------------------------------------------------------------
# Feedback spec of lc2d_backward_input: B built on the fly from the weight (sign) or the generator.
# ---------------------------------------------------------------------------------------------------
FEEDBACK_SEEDS = dict(seed=5, stream=2, step=3, scale=0.43)
FEEDBACK_CASES = CASES[:4] + [dict(N=9, C_in=6, C_out=20, hw=(12, 12), k=(5, 5), stride=(1, 1), padding="same",
                                   dilation=(1, 1))]


def fb(s):
    return {**FEEDBACK_SEEDS, **s}


def feedback_ref_grad_x(x, B, gy, c):
    """grad_x of the float64 reference layer whose weight is B (the transposed LC of gy through B)."""
    x64 = x.detach().cpu().double().requires_grad_()
    (gx,) = torch.autograd.grad(ref.lc2d(x64, B.cpu().double(), None, **hp(c)), x64, gy.cpu().double())
    return gx


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("spec", FEEDBACK_SPECS, ids=spec_id)
@pytest.mark.parametrize("c", FEEDBACK_CASES, ids=case_id)
def test_feedback_input_gradient_matches_reference(c, spec, device):
    # float16/bfloat16 on CUDA: test_kernel_backward_input, element by element
    for dtype in (torch.float32, torch.float64):
        x, w, b, out = make_tensors(c, dtype, device, seed=7)
        gy = torch.randn(c["N"], c["C_out"], *out, dtype=torch.float64).to(dtype=dtype, device=device)
        got = ops.lc2d_backward_input(gy, w, c["hw"], **hp(c), **fb(spec))
        want = feedback_ref_grad_x(x, reference.feedback_source(w.cpu(), **fb(spec)), gy, c)
        if spec.get("distribution") == "normal" and dtype == torch.float64:
            # the reference's float32 log/cos/sin may differ from libm's in the last ulp
            torch.testing.assert_close(got.cpu(), want, rtol=2e-6, atol=2e-6 * want.abs().max().item())
        else:
            assert_close_to_ref(got, want, dtype)
        # on the fly equals "weight" mode on the materialised B, bit for bit
        B = ops.feedback_source(w, **fb(spec))
        assert torch.equal(got, ops.lc2d_backward_input(gy, B, c["hw"], **hp(c)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("spec", FEEDBACK_SPECS[1:], ids=spec_id)
def test_feedback_lc2d_backward(spec, device):
    c = FEEDBACK_CASES[1]
    x, w, b, out = make_tensors(c, device=device, seed=8)
    x.requires_grad_(), w.requires_grad_(), b.requires_grad_()
    y = ops.lc2d(x, w, b, **hp(c), **fb(spec))
    assert torch.equal(y, ops.lc2d(x, w, b, **hp(c)))
    gy = torch.randn_like(y)
    gx, gw, gb = torch.autograd.grad(y, (x, w, b), gy)
    assert torch.equal(gx, ops.lc2d_backward_input(gy, w.detach(), c["hw"], **hp(c), **fb(spec)))
    x64, w64, b64 = (t.detach().cpu().requires_grad_() for t in (x, w, b))
    _, gw_ref, gb_ref = torch.autograd.grad(ref.lc2d(x64, w64, b64, **hp(c)), (x64, w64, b64), gy.cpu())
    assert_close_to_ref(gw, gw_ref, torch.float64)
    assert_close_to_ref(gb, gb_ref, torch.float64)


@pytest.mark.parametrize("device", DEVICES)
def test_feedback_random_never_reads_weight(device):
    c = FEEDBACK_CASES[4]
    x, w, b, out = make_tensors(c, torch.float32, device)
    gy = torch.randn(c["N"], c["C_out"], *out, device=device)
    like = torch.empty((), device=device).expand(w.shape)
    spec = fb(FEEDBACK_SPECS[1])
    assert torch.equal(ops.lc2d_backward_input(gy, like, c["hw"], **hp(c), **spec),
                       ops.lc2d_backward_input(gy, w, c["hw"], **hp(c), **spec))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("spec", FEEDBACK_SPECS, ids=spec_id)
def test_feedback_opcheck(spec, device):
    c = GRADCHECK_CASES[0]
    x, w, b, out = make_tensors(c, dtype=torch.float32, device=device)
    p4 = list(resolve_padding(c["padding"], c["hw"], c["k"], c["stride"], c["dilation"]))
    gy = torch.randn(c["N"], c["C_out"], *out, device=device)
    s = fb(spec)
    opcheck(torch.ops.bioplaus.lc2d_backward_input,
            (gy, w, list(c["hw"]), list(c["stride"]), p4, list(c["dilation"]), s["feedback"], s["seed"], s["stream"],
             s["step"], s.get("distribution", "uniform"), s["scale"]))


BAD_FEEDBACK = {
    "feedback": (dict(feedback="usf"), r"lc2d_backward_input: feedback must be 'weight', 'random', 'sign' or "
                                       r"'random_sign', got 'usf'"),
    "distribution": (dict(distribution="gauss"), r"lc2d_backward_input: distribution must be 'uniform' or 'normal', "
                                                 r"got 'gauss'"),
    "seed": (dict(seed=-1), r"lc2d_backward_input: seed must be >= 0, got -1"),
    "stream": (dict(stream=-1), r"lc2d_backward_input: stream must be >= 0, got -1"),
    "step": (dict(step=-4), r"lc2d_backward_input: step must be >= 0, got -4"),
}


@pytest.mark.parametrize("name", list(BAD_FEEDBACK))
def test_bad_feedback_spec_is_rejected(name):
    spec, message = BAD_FEEDBACK[name]
    s = dict(feedback="random", seed=0, stream=0, step=0, distribution="uniform", scale=1.0)
    s.update(spec)
    args = (torch.randn(2, 4, 8, 8), torch.randn(8, 8, 4, 3, 3, 3), [8, 8], [1, 1], [1, 1, 1, 1], [1, 1], *s.values())
    assert_rejected(torch.ops.bioplaus.lc2d_backward_input, args, message)
    with pytest.raises(RuntimeError, match=message.replace("lc2d_backward_input", "lc2d")):
        ops.lc2d(torch.randn(2, 3, 8, 8), torch.randn(8, 8, 4, 3, 3, 3), padding=1, **s)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("spec", FEEDBACK_SPECS[1:], ids=spec_id)
def test_feedback_non_contiguous_and_empty(spec, device):
    c = FEEDBACK_CASES[2]
    x, w, b, out = make_tensors(c, device=device, seed=9)
    gy = torch.randn(c["N"], c["C_out"], *out, dtype=torch.float64, device=device)
    want = ops.lc2d_backward_input(gy, w, c["hw"], **hp(c), **fb(spec))
    gy_nc = gy.transpose(2, 3).contiguous().transpose(2, 3)
    w_nc = w.transpose(0, 1).contiguous().transpose(0, 1)
    assert not gy_nc.is_contiguous() and not w_nc.is_contiguous()
    assert torch.equal(ops.lc2d_backward_input(gy_nc, w_nc, c["hw"], **hp(c), **fb(spec)), want)
    empty = ops.lc2d_backward_input(gy[:0], w, c["hw"], **hp(c), **fb(spec))
    assert empty.shape == (0, c["C_in"], *c["hw"])


def test_feedback_torch_compile_fullgraph():
    c = GRADCHECK_CASES[0]
    x, w, b, _ = make_tensors(c, dtype=torch.float32)
    x.requires_grad_(), w.requires_grad_(), b.requires_grad_()
    spec = fb(FEEDBACK_SPECS[4])

    def step(x, w, b):
        return ops.lc2d(torch.tanh(x), w, b, **hp(c), **spec).square().sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(x, w, b), (x, w, b))
    want = torch.autograd.grad(step(x, w, b), (x, w, b))
    for g, e in zip(got, want):
        torch.testing.assert_close(g, e)


# ------------------------------------------------------------------------------------------------------------
# The CUDA kernels, in the CPU execution layer ("emu", every run) and on a GPU ("cuda"), at shapes that reach
# every tile path of csrc/cuda/lc2d_kernel.cu (64-row batch tiles, 64-wide channel and patch tiles, 16-step
# reduction chunks; docs/emulation.md has the table). Padding is given explicitly (top, bottom, left, right).
KERNEL_CASES = [
    # forward: 2 batch tiles (70 = 64 + 6), 2 C_out tiles (67), K = 27 = 16 + 11; weight grad: 5 batch chunks
    dict(N=70, C_in=3, C_out=67, hw=(9, 11), k=(3, 3), stride=(1, 1), padding=(1, 1, 1, 1), dilation=(1, 1)),
    # input grad: 2 C_in tiles (67), 2 batch tiles (67), C_out = 16 + 4; weight grad: K = 402, 7 patch tiles
    dict(N=67, C_in=67, C_out=20, hw=(7, 6), k=(2, 3), stride=(2, 1), padding=(1, 0, 2, 1), dilation=(2, 1)),
    # stride larger than the dilated kernel: input pixels no window covers; stride 3 and 4, dilation 2
    dict(N=5, C_in=4, C_out=5, hw=(13, 12), k=(2, 2), stride=(3, 4), padding=(0, 0, 0, 0), dilation=(1, 2)),
    # ImageNet L1's k9 s4: K = 81 (2 patch tiles), up to 9 covering windows per axis... 3 with stride 4
    dict(N=3, C_in=1, C_out=6, hw=(21, 21), k=(9, 9), stride=(4, 4), padding=(0, 0, 0, 0), dilation=(1, 1)),
    # TensorFlow SAME for 7x9, k4x3, s1x2: out 7x5, padding (1, 2, 1, 1) (the bottom row takes the odd one)
    dict(N=2, C_in=2, C_out=3, hw=(7, 9), k=(4, 3), stride=(1, 2), padding=(1, 2, 1, 1), dilation=(1, 1)),
    # an empty batch
    dict(N=0, C_in=3, C_out=4, hw=(5, 5), k=(3, 3), stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1)),
    # channel tiles of every width (micro_tiles): C_out = 48 one 48-wide tile; C_in = 64 one 64-wide tile
    dict(N=5, C_in=2, C_out=48, hw=(5, 4), k=(2, 2), stride=(1, 1), padding=(0, 1, 1, 0), dilation=(1, 1)),
    dict(N=3, C_in=64, C_out=128, hw=(4, 4), k=(2, 2), stride=(2, 2), padding=(0, 0, 0, 0), dilation=(1, 1)),
    # input grad's pixel groups (input_groups): ImageNet L1's k9 s4 and 3 channels with padding takes 3 x 5
    # groups (45 columns), whose last row and column of groups lie partly past the image (23 = 7 * 3 + 2,
    # 25 = 5 * 5); dilation 2 inside 3 x 5 groups gives covering positions that cover only some pixels
    dict(N=3, C_in=3, C_out=20, hw=(23, 25), k=(9, 9), stride=(4, 4), padding=(4, 4, 4, 4), dilation=(1, 1)),
    dict(N=3, C_in=1, C_out=4, hw=(15, 13), k=(3, 3), stride=(2, 2), padding=(2, 2, 2, 2), dilation=(2, 2)),
    # groups no position covers (a 1x1 kernel with stride 3), in 2 batch tiles: empty reductions, zeros written
    dict(N=70, C_in=1, C_out=2, hw=(5, 5), k=(1, 1), stride=(3, 3), padding=(0, 0, 0, 0), dilation=(1, 1)),
]


def kernel_case_id(c):
    return case_id(c).replace("_p(", "_p").replace(", ", "-").replace(")", "")


def kernel_tensors(c, dtype, device, what):
    """x, weight, bias and grad_y of case c in dtype on device, drawn from a seed stable across processes, and
    the geometry lists the kernels take."""
    gen = torch.Generator().manual_seed(stable_seed("lc2d", what, kernel_case_id(c), str(dtype)))
    out = output_size(c["hw"], c["k"], c["stride"], c["padding"], c["dilation"])
    to = dict(dtype=dtype, device=device)
    x = torch.randn(c["N"], c["C_in"], *c["hw"], generator=gen, dtype=torch.float64).to(**to)
    w = torch.randn(*out, c["C_out"], c["C_in"], *c["k"], generator=gen, dtype=torch.float64).to(**to)
    b = torch.randn(c["C_out"], *out, generator=gen, dtype=torch.float64).to(**to)
    gy = torch.randn(c["N"], c["C_out"], *out, generator=gen, dtype=torch.float64).to(**to)
    geometry = (list(c["stride"]), list(c["padding"]), list(c["dilation"]))
    return x, w, b, gy, geometry


def f64(*ts):
    return [t.detach().cpu().double() for t in ts]


def ref_grads(x, w, b, gy, c):
    """grad_x, grad_weight, grad_bias of the float64 reference layer (inputs already float64)."""
    x, w, b = (t.clone().requires_grad_() for t in (x, w, b))
    y = ref.lc2d(x, w, b, c["stride"], c["padding"], c["dilation"])
    return torch.autograd.grad(y, (x, w, b), gy)


@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
@pytest.mark.parametrize("c", KERNEL_CASES, ids=kernel_case_id)
def test_kernel_forward(c, dtype, device, cuda_algorithm):
    ops_, on = kernel_ops(device)
    x, w, b, _, geometry = kernel_tensors(c, dtype, on, "forward")
    y = ops_.lc2d_forward(x, w, b, *geometry)
    x64, w64, b64 = f64(x, w, b)
    want = ref.lc2d(x64, w64, b64, c["stride"], c["padding"], c["dilation"])
    magnitude = ref.lc2d(x64.abs(), w64.abs(), b64.abs(), c["stride"], c["padding"], c["dilation"])
    extra = tf32_allowance(cuda_algorithm, dtype, magnitude)
    assert y.dtype == dtype and y.is_contiguous()
    assert_elementwise_close(y, want, dtype, magnitude=magnitude, terms=c["C_in"] * c["k"][0] * c["k"][1] + 1,
                             extra=extra)
    y_no_bias = ops_.lc2d_forward(x, w, None, *geometry)
    assert_elementwise_close(y_no_bias, want - b64, dtype, magnitude=magnitude,
                             terms=c["C_in"] * c["k"][0] * c["k"][1], extra=extra, what="no bias")


@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
def test_kernel_forward_weight_alignment(dtype, device, cuda_algorithm):
    # K = 24 (a multiple of 4; chunks of 16 + 8): the fused forward kernels stage weight rows with vector loads
    # where the weight's data is aligned to 4 elements, and with scalar loads where it is not (a view one
    # element into its storage). Both give the bits of a plain weight (the same sums in the same order; the
    # emulation faults on a misaligned vector load, as the hardware does), and neither reads past the last
    # row: NaN follows the weight in its storage.
    c = KERNEL_CASES[4]
    ops_, on = kernel_ops(device)
    x, w, b, _, geometry = kernel_tensors(c, dtype, on, "forward")
    want = ops_.lc2d_forward(x, w, b, *geometry)
    storage = torch.full((w.numel() + 8,), float("nan"), dtype=dtype, device=on)
    for offset in (0, 1):
        placed = storage[offset:offset + w.numel()].view(w.shape).copy_(w)
        assert (placed.data_ptr() % (4 * placed.element_size()) == 0) == (offset == 0)
        assert torch.equal(ops_.lc2d_forward(x, placed, b, *geometry), want), offset


@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
@pytest.mark.parametrize("c", KERNEL_CASES, ids=kernel_case_id)
def test_kernel_backward_weight(c, dtype, device, cuda_algorithm):
    ops_, on = kernel_ops(device)
    x, w, b, gy, geometry = kernel_tensors(c, dtype, on, "weight")
    gw, gb = ops_.lc2d_backward_weight(gy, x, list(c["k"]), *geometry)
    x64, w64, b64, gy64 = f64(x, w, b, gy)
    _, want_w, want_b = ref_grads(x64, w64, b64, gy64, c)
    _, mag_w, mag_b = ref_grads(x64.abs(), w64.abs(), b64.abs(), gy64.abs(), c)
    terms = max(c["N"], 1)
    assert_elementwise_close(gw, want_w, dtype, magnitude=mag_w, terms=terms,
                             extra=tf32_allowance(cuda_algorithm, dtype, mag_w), what="grad_weight")
    assert_elementwise_close(gb, want_b, dtype, magnitude=mag_b, terms=terms, what="grad_bias")


# The input gradient runs every kernel case with the weights as feedback, and every feedback mode on three of
# them: the modes differ only in how a staged element of B is formed (the tiles and tails are the weight
# mode's), and these three reach every tile path: several column tiles, batch tiles and dilation (67
# channels), pixel groups that end past the image (k9 s4), and one-pixel groups of 64 columns.
FEEDBACK_KERNEL_CASES = [KERNEL_CASES[1], KERNEL_CASES[7], KERNEL_CASES[8]]
# A generated B that the fused algorithms build in chunks of channels (under the tests' workspace, 16 channels
# a chunk) whose rows have odd lengths at odd offsets (19 channels x K = 27: rows of 432 and 81 elements,
# 513 apart), so that rows start and end inside a Philox counter block of either distribution.
ODD_CHUNK_CASE = dict(N=3, C_in=3, C_out=19, hw=(5, 5), k=(3, 3), stride=(1, 1), padding=(1, 1, 1, 1),
                      dilation=(1, 1))
INPUT_KERNEL_CASES = [pytest.param(c, s, id=f"{kernel_case_id(c)}-{spec_id(s)}") for c in KERNEL_CASES
                      for s in FEEDBACK_SPECS if s["feedback"] == "weight" or c in FEEDBACK_KERNEL_CASES] + [
    pytest.param(ODD_CHUNK_CASE, s, id=f"{kernel_case_id(ODD_CHUNK_CASE)}-{spec_id(s)}")
    for s in FEEDBACK_SPECS if s["feedback"].startswith("random")]


@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
@pytest.mark.parametrize("c, spec", INPUT_KERNEL_CASES)
def test_kernel_backward_input(c, dtype, spec, device, cuda_algorithm):
    ops_, on = kernel_ops(device)
    x, w, b, gy, geometry = kernel_tensors(c, dtype, on, "input")
    spec = {**FEEDBACK_SEEDS, **spec}
    gx = ops_.lc2d_backward_input(gy, w, list(c["hw"]), *geometry, **spec)
    B = reference.feedback_source(w.cpu(), **spec)  # in dtype, as the kernel rounds it
    x64, B64, b64, gy64 = f64(x, B, b, gy)
    want, _, _ = ref_grads(x64, B64, b64, gy64, c)
    magnitude, _, _ = ref_grads(x64, B64.abs(), b64, gy64.abs(), c)
    extra = None
    if spec.get("distribution") == "normal":
        # libm's and the reference's float32 log/cos/sin may differ in the last ulps (a few float32 ulp of the
        # sample), and that can move B's rounding to dtype by one ulp of dtype: allow that much of every term.
        ulp_b, _, _ = ref_grads(x64, ulp(B64, dtype) + 4 * ulp(B64, torch.float32), b64, gy64.abs(), c)
        extra = ulp_b
    if cuda_algorithm == "library" and dtype in (torch.float16, torch.bfloat16):
        # The batched GEMM rounds each position's patch gradient to dtype before the fold adds the covering
        # positions in float: one more rounding, at most an ulp-sized share of every term's magnitude.
        rounding = magnitude * torch.finfo(dtype).eps
        extra = rounding if extra is None else extra + rounding
    tf32 = tf32_allowance(cuda_algorithm, dtype, magnitude)
    if tf32 is not None:
        extra = tf32 if extra is None else extra + tf32
    terms = c["C_out"] * c["k"][0] * c["k"][1]
    assert_elementwise_close(gx, want, dtype, magnitude=magnitude, terms=terms, extra=extra, what="grad_x")
    if cuda_algorithm == "library":
        # the feedback matrix made on the fly equals "weight" mode on the materialised B, bit for bit, in every
        # chunking: the library algorithm multiplies each chunk of positions by a materialised B. The fused
        # algorithms do so where B fits the workspace (test_lc2d_selection.py checks it); this test's workspace
        # makes them build a generated B in chunks of channels, summed in another order (checked above).
        materialised = ops_.feedback_source(w, **spec)
        assert torch.equal(gx, ops_.lc2d_backward_input(gy, materialised, list(c["hw"]), *geometry))


@pytest.mark.parametrize("device", DEVICES)
def test_stored_matrix(device):
    # matrix: a stored B of weight's shape; grad_x goes through B, weight and bias get their true gradients
    c = GRADCHECK_CASES[1]
    x, w, b, out = make_tensors(c, device=device, seed=4)
    B = torch.randn_like(w)
    x.requires_grad_(), w.requires_grad_(), b.requires_grad_()
    y = ops.lc2d(x, w, b, **hp(c), matrix=B)
    gy = torch.randn_like(y)
    gx, gw, gb = torch.autograd.grad(y, (x, w, b), gy)
    x64, w64, b64 = (t.detach().cpu().requires_grad_() for t in (x, w, b))
    _, gw_ref, gb_ref = torch.autograd.grad(ref.lc2d(x64, w64, b64, **hp(c)), (x64, w64, b64), gy.cpu())
    assert_close_to_ref(gx, feedback_ref_grad_x(x, B, gy, c), torch.float64)
    assert_close_to_ref(gw, gw_ref, torch.float64)
    assert_close_to_ref(gb, gb_ref, torch.float64)
    assert torch.autograd.gradcheck(lambda w, b: ops.lc2d(x.detach(), w, b, **hp(c), matrix=B), (w, b))


def test_bad_stored_matrix_is_rejected():
    c = GRADCHECK_CASES[1]
    x, w, b, _ = make_tensors(c, dtype=torch.float32)
    geometry = (list(c["stride"]), list(resolve_padding(c["padding"], c["hw"], c["k"], c["stride"], c["dilation"])),
                list(c["dilation"]))
    op = torch.ops.bioplaus.lc2d
    assert_rejected(lambda *a: op(*a, feedback="sign", matrix=w.clone()), (x, w, b, *geometry),
                    r"lc2d: a matrix is the feedback itself; feedback must be 'weight' with it, got 'sign'")
    assert_rejected(lambda *a: op(*a, matrix=w[:1].clone()), (x, w, b, *geometry),
                    r"lc2d: matrix must have weight's shape \[.*\], got \[1, .*\]")
    assert_rejected(lambda *a: op(*a, matrix=w.double()), (x, w, b, *geometry),
                    r"lc2d: matrix has dtype Double but weight has dtype Float; they must match")
