"""difference_target[_lc2d]: the fused op against the unfused float64 reference, opcheck, bad inputs."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.library import opcheck

from bioplaus_kernels import ops
from bioplaus_kernels._geometry import output_size, resolve_padding
from bioplaus_kernels.reference import difference_target as ref

from conftest import DEVICES, KERNEL_DEVICES, KERNEL_DTYPES, kernel_ops, multiprocessors
from tolerance import assert_elementwise_close, stable_seed, ulp

ACTS = ["tanh", "sigmoid", "relu", "identity"]
LC_CASES = [  # (N, C_in, C_out, hw, k, stride, padding, dilation)
    (3, 2, 4, (9, 8), (3, 3), (2, 2), "same", (1, 1)),
    (2, 3, 2, (7, 7), (5, 3), (1, 2), "valid", (1, 1)),
    (1, 1, 3, (10, 6), (3, 2), (3, 1), (1, 0, 2, 1), (2, 1)),
    (4, 2, 2, (5, 5), (2, 2), (2, 2), 0, (1, 1)),  # VALID + stride: the last row/column is read by no window
]


def linear_tensors(N, D_in, D_out, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    t = [torch.randn(*s, generator=g, dtype=torch.float64) for s in
         ((N, D_in), (N, D_out), (N, D_out), (D_in, D_out), (D_in,))]
    return [v.to(dtype=dtype, device=device) for v in t]


def lc_tensors(case, dtype=torch.float64, device="cpu", seed=0):
    N, C_in, C_out, hw, k, s, p, d = case
    out = output_size(hw, k, s, resolve_padding(p, hw, k, s, d), d)
    g = torch.Generator().manual_seed(seed)
    t = [torch.randn(*shape, generator=g, dtype=torch.float64) for shape in
         ((N, C_in, *hw), (N, C_out, *out), (N, C_out, *out), (*out, C_out, C_in, *k), (C_in, *hw))]
    return [v.to(dtype=dtype, device=device) for v in t], dict(stride=s, padding=p, dilation=d)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("shape", [(5, 7, 3), (1, 1, 1), (33, 70, 65), (0, 4, 3)])
def test_linear_matches_reference(shape, act, dtype, device):
    t = linear_tensors(*shape, dtype=dtype, device=device)
    got = ops.difference_target(*t, activation=act)
    want = ref.difference_target(*[v.double().cpu() for v in t], activation=act)
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(got.double().cpu(), want, atol=tol, rtol=tol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("act", ["tanh", "relu"])
@pytest.mark.parametrize("case", LC_CASES)
def test_lc2d_matches_reference(case, act, dtype, device):
    t, hp = lc_tensors(case, dtype=dtype, device=device)
    got = ops.difference_target_lc2d(*t, **hp, activation=act)
    want = ref.difference_target_lc2d(*[v.double().cpu() for v in t], **hp, activation=act)
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(got.double().cpu(), want, atol=tol, rtol=tol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_cuda(dtype, device):
    if device == "cpu":
        pytest.skip("float16/bfloat16 are CUDA-only")
    t = linear_tensors(9, 33, 17, dtype=dtype, device=device)
    want = ref.difference_target(*[v.double().cpu() for v in t])
    torch.testing.assert_close(ops.difference_target(*t).double().cpu(), want, atol=5e-2, rtol=5e-2)


@pytest.mark.cuda
def test_autocast_runs_in_reduced_precision():
    """Under CUDA autocast a target is computed in the autocast dtype (an application of the inverse layer, as
    torch's linear layers), from inputs of mixed dtypes."""
    t = linear_tensors(9, 33, 17, dtype=torch.float32, device="cuda")
    tl, hp = lc_tensors(LC_CASES[0], dtype=torch.float32, device="cuda")
    want = ref.difference_target(*[v.double().cpu() for v in t])
    want_lc = ref.difference_target_lc2d(*[v.double().cpu() for v in tl], **hp)
    for dtype, tol in ((torch.float16, 5e-2), (torch.bfloat16, 1e-1)):
        with torch.autocast("cuda", dtype=dtype):
            got = ops.difference_target(t[0].to(dtype), *t[1:])
            got_lc = ops.difference_target_lc2d(tl[0].to(dtype), *tl[1:], **hp)
        assert got.dtype == dtype and got_lc.dtype == dtype
        torch.testing.assert_close(got.double().cpu(), want, atol=tol, rtol=tol)
        torch.testing.assert_close(got_lc.double().cpu(), want_lc, atol=tol, rtol=tol)


def test_autocast_wrappers_match_schemas():
    """The AutocastCUDA kernels, called directly with CPU tensors (which autocast leaves alone): their C++
    signatures match the schemas and they redispatch to the kernel (the CUDA-only test checks the casts)."""
    key = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCUDA)
    for name in ("difference_target", "difference_target_lc2d"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"bioplaus::{name}", "AutocastCUDA")
    t = linear_tensors(5, 7, 3, dtype=torch.float32)
    got = torch.ops.bioplaus.difference_target.default.redispatch(key, *t, "tanh")
    assert torch.equal(got, ops.difference_target(*t))
    tl, hp = lc_tensors(LC_CASES[2], dtype=torch.float32)
    p4 = list(resolve_padding(hp["padding"], tl[0].shape[-2:], tl[3].shape[-2:], hp["stride"], hp["dilation"]))
    got = torch.ops.bioplaus.difference_target_lc2d.default.redispatch(key, *tl, list(hp["stride"]), p4,
                                                                       list(hp["dilation"]), "relu")
    assert torch.equal(got, ops.difference_target_lc2d(*tl, **hp, activation="relu"))


def test_same_above_gives_h_below():
    """Property: a layer whose target equals its activation gets its activation as target."""
    hb, _, ha, V, c = linear_tensors(6, 9, 4, dtype=torch.float32)
    torch.testing.assert_close(ops.difference_target(hb, ha, ha, V, c), hb, atol=1e-6, rtol=0)
    t, hp = lc_tensors(LC_CASES[0], dtype=torch.float32)
    torch.testing.assert_close(ops.difference_target_lc2d(t[0], t[2], t[2], t[3], t[4], **hp), t[0], atol=1e-6, rtol=0)


def test_non_contiguous_inputs():
    hb, ta, ha, V, c = linear_tensors(6, 9, 4)
    want = ref.difference_target(hb, ta, ha, V, c)
    got = ops.difference_target(hb.t().contiguous().t(), ta.t().contiguous().t(), ha, V.t().contiguous().t(), c)
    torch.testing.assert_close(got, want)


def test_deterministic():
    t, hp = lc_tensors(LC_CASES[0], dtype=torch.float32)
    a = ops.difference_target_lc2d(*t, **hp)
    assert torch.equal(a, ops.difference_target_lc2d(*t, **hp))


def test_opcheck():
    opcheck(torch.ops.bioplaus.difference_target.default, tuple(linear_tensors(4, 5, 3)) + ("tanh",))
    t, hp = lc_tensors(LC_CASES[0])
    p4 = list(resolve_padding(hp["padding"], t[0].shape[-2:], t[3].shape[-2:], hp["stride"], hp["dilation"]))
    opcheck(torch.ops.bioplaus.difference_target_lc2d.default,
            tuple(t) + (list(hp["stride"]), p4, list(hp["dilation"]), "sigmoid"))


def test_compile_fullgraph():
    t = linear_tensors(4, 5, 3, dtype=torch.float32)
    f = torch.compile(lambda *a: ops.difference_target(*a) * 2, fullgraph=True, backend="eager")
    torch.testing.assert_close(f(*t), ops.difference_target(*t) * 2)


def test_has_no_gradient():
    hb, ta, ha, V, c = linear_tensors(3, 4, 2)
    out = ops.difference_target(hb, ta, ha, V.requires_grad_(), c)
    with pytest.raises(RuntimeError, match="targets are constants"):
        out.sum().backward()


def _bad_linear():
    hb, ta, ha, V, c = linear_tensors(3, 4, 2, dtype=torch.float32)
    return [
        (dict(activation="softplus"), "activation must be 'tanh', 'sigmoid', 'relu' or 'identity', got 'softplus'"),
        (dict(h_below=hb[:, :3]), r"h_below must have shape \[N, D_in\] = \[3, 4\], got \[3, 3\]"),
        (dict(t_above=ta[:2]), r"t_above must have shape h_above's shape = \[3, 2\], got \[2, 2\]"),
        (dict(bias=c[:2]), r"bias must have shape \[D_in\] = \[4\], got \[2\]"),
        (dict(weight=V[None]), r"weight must be 2-D \[D_in, D_out\]"),
        (dict(h_above=ha.double()), "h_above has dtype Double but weight has dtype Float"),
        (dict(weight=V.int(), h_below=hb.int(), t_above=ta.int(), h_above=ha.int(), bias=c.int()),
         "weight must be float32 or float64 on the CPU, got Int"),
    ], dict(h_below=hb, t_above=ta, h_above=ha, weight=V, bias=c, activation="tanh")


@pytest.mark.parametrize("fake", [False, True], ids=["real", "fake"])
@pytest.mark.parametrize("index", range(7))
def test_bad_linear_inputs(index, fake):
    cases, base = _bad_linear()
    change, msg = cases[index]
    args = {**base, **change}
    if fake:
        with FakeTensorMode() as mode:
            args = {k: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
            with pytest.raises(RuntimeError, match=msg):
                torch.ops.bioplaus.difference_target(**args)
    else:
        with pytest.raises(RuntimeError, match=msg):
            torch.ops.bioplaus.difference_target(**args)


@pytest.mark.parametrize("fake", [False, True], ids=["real", "fake"])
def test_bad_lc2d_inputs(fake):
    t, hp = lc_tensors(LC_CASES[0], dtype=torch.float32)
    bad = [
        (dict(bias=t[4][:, :3]), r"bias must have shape \[C_in, H, W\] = \[2, 9, 8\], got \[2, 3, 8\]"),
        (dict(stride=[1, 1]), "difference_target_lc2d: input 9x8 with kernel 3x3, stride 1x1 and dilation 1x1 gives a "
                              "9x7 output, but weight has 5x4 output positions"),
        (dict(h_above=t[2][:, :1]), r"h_above must have shape \[N, C_out, H_out, W_out\] = \[3, 4, 5, 4\]"),
        (dict(h_below=t[0][0]), r"h_below must be 4-D \[N, C_in, H, W\]"),
    ]
    base = dict(h_below=t[0], t_above=t[1], h_above=t[2], weight=t[3], bias=t[4], stride=[2, 2],
                padding=[1, 1, 0, 1], dilation=[1, 1], activation="tanh")  # "same" for 9x8, k3, s2
    for change, msg in bad:
        args = {**base, **change}
        if fake:
            with FakeTensorMode() as mode:
                args = {k: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
                with pytest.raises(RuntimeError, match=msg):
                    torch.ops.bioplaus.difference_target_lc2d(**args)
        else:
            with pytest.raises(RuntimeError, match=msg):
                torch.ops.bioplaus.difference_target_lc2d(**args)


# ------------------------------------------------------------------------------------------------------------
# The CUDA kernels, in the CPU execution layer ("emu", every run) and on a GPU ("cuda"). Linear: the tiled GEMM
# of csrc/cuda/tp_gemm.cuh (64 x 64 tiles, 16-step chunks) with its fused epilogue; LC: the transposed LC (the
# lc2d input-gradient kernel) and the grid-stride epilogue (on 1 emulated SM, 2048 threads are resident, so
# the 2340-element case loops). Padding is explicit (top, bottom, left, right).
KERNEL_LINEAR_SHAPES = [(70, 67, 37), (5, 7, 3), (130, 1, 20), (0, 4, 3)]  # (N, D_in, D_out)
KERNEL_LC_CASES = [  # (N, C_in, C_out, hw, k, stride, padding, dilation, SMs)
    (3, 5, 4, (13, 12), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1),
    (2, 3, 2, (7, 7), (5, 3), (1, 2), (0, 0, 0, 0), (1, 1), 132),
    (1, 1, 3, (10, 6), (3, 2), (3, 1), (1, 0, 2, 1), (2, 1), 132),
    (0, 2, 2, (5, 5), (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), 132),
]


def _activation_magnitude(pre_t, pre_h, act):
    a = {"tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": torch.relu, "identity": lambda v: v}[act]
    return a(pre_t).abs() + a(pre_h).abs()


@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
@pytest.mark.parametrize("shape", KERNEL_LINEAR_SHAPES, ids=str)
def test_kernel_linear(shape, dtype, act, device):
    ops_, on = kernel_ops(device)
    t = linear_tensors(*shape, dtype=dtype, device=on, seed=stable_seed("dt", shape, str(dtype)))
    got = ops_.difference_target(*t, activation=act)
    hb, ta, ha, V, c = (v.double().cpu() for v in t)
    want = ref.difference_target(hb, ta, ha, V, c, activation=act)
    # the two GEMMs' accumulation (through an activation of slope <= 1), the activations' own rounding, the sum
    pre_t, pre_h = ta @ V.t() + c, ha @ V.t() + c
    magnitude = (ta.abs() @ V.abs().t() + ha.abs() @ V.abs().t() + 2 * c.abs() + hb.abs()
                 + _activation_magnitude(pre_t, pre_h, act))
    assert_elementwise_close(got, want, dtype, magnitude=magnitude, terms=shape[2] + 8)


@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
@pytest.mark.parametrize("case", KERNEL_LC_CASES, ids=str)
def test_kernel_lc2d(case, dtype, act, device):
    ops_, on = kernel_ops(device)
    *geometry, sms = case
    t, hp = lc_tensors(tuple(geometry), dtype=dtype, device=on, seed=stable_seed("dt-lc", case, str(dtype)))
    with multiprocessors(device, sms):
        got = ops_.difference_target_lc2d(*t, list(hp["stride"]), list(hp["padding"]), list(hp["dilation"]),
                                          activation=act)
    assert got.shape == t[0].shape and got.dtype == dtype
    if got.numel() == 0:
        return  # the reference's reshape cannot take an empty batch
    hb, ta, ha, V, c = (v.double().cpu() for v in t)
    want = ref.difference_target_lc2d(hb, ta, ha, V, c, **hp, activation=act)
    g = lambda y, w: ref.lc2d_transposed(y, w, hb.shape[-2:], **hp)  # noqa: E731
    magnitude = (g(ta.abs(), V.abs()) + g(ha.abs(), V.abs()) + 2 * c.abs() + hb.abs()
                 + _activation_magnitude(g(ta, V) + c, g(ha, V) + c, act))
    terms = case[2] * case[4][0] * case[4][1] + 8
    # the transposed LC's result is a tensor in dtype (rounded once) before the epilogue adds c
    rounding = ulp(g(ta, V), dtype) + ulp(g(ha, V), dtype)
    assert_elementwise_close(got, want, dtype, magnitude=magnitude, terms=terms, extra=rounding)
