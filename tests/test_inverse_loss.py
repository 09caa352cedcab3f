"""inverse_loss[_lc2d] and inverse_loss_noisy_input: loss, reconstruction and gradients against the float64
reference, gradcheck, opcheck, the noise contract with philox_fill, bad inputs."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.library import opcheck

from bioplaus_kernels import ops
from bioplaus_kernels._geometry import resolve_padding
from bioplaus_kernels.ops.inverse_loss import parameter_grads
from bioplaus_kernels.reference import inverse_loss as ref

from bioplaus_kernels.reference import difference_target as dt_ref

from conftest import DEVICES, KERNEL_DEVICES, KERNEL_DTYPES, kernel_ops, multiprocessors
from tolerance import assert_elementwise_close, stable_seed, ulp
from test_difference_target import LC_CASES, lc_tensors

NOISE = dict(sigma=0.3, seed=7, stream=3, step=11)


def linear_tensors(N, D_in, D_out, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    t = [torch.randn(*s, generator=g, dtype=torch.float64) for s in ((N, D_out), (N, D_in), (D_in, D_out), (D_in,))]
    return [v.to(dtype=dtype, device=device) for v in t]


def lc_inputs(case, dtype=torch.float64, device="cpu"):
    t, hp = lc_tensors(case, dtype=dtype, device=device)
    return [t[1], t[0], t[3], t[4]], hp  # y (above), target (below), V, c


def tolerance(dtype):
    return 1e-4 if dtype == torch.float32 else 1e-10


def compare(fn, ref_fn, tensors, kw, tol):
    """Outputs and the gradients of the loss wrt every input, kernel vs float64 reference."""
    a = [v.detach().clone().requires_grad_() for v in tensors]
    b = [v.detach().double().cpu().requires_grad_() for v in tensors]
    got, want = fn(*a, **kw), ref_fn(*b, **kw)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.detach().double().cpu(), w.detach(), atol=tol, rtol=tol)
    (got[0] * 1.5).backward()
    (want[0] * 1.5).backward()
    for x, y in zip(a, b):
        torch.testing.assert_close(x.grad.double().cpu(), y.grad, atol=tol * 10, rtol=tol * 10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("act", ["tanh", "sigmoid", "relu", "identity"])
@pytest.mark.parametrize("shape", [(5, 7, 3), (1, 1, 1), (17, 66, 35)])
def test_linear_matches_reference(shape, act, dtype, device):
    compare(ops.inverse_loss, ref.inverse_loss, linear_tensors(*shape, dtype=dtype, device=device),
            dict(activation=act), tolerance(dtype))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", LC_CASES)
def test_lc2d_matches_reference(case, dtype, device):
    t, hp = lc_inputs(case, dtype=dtype, device=device)
    compare(ops.inverse_loss_lc2d, ref.inverse_loss_lc2d, t, hp, tolerance(dtype))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_dtp_loss_of_the_noisy_input(dtype):
    """DTP's noise-preserving loss ||g(f(h~)) - h~||^2 with h~ = inverse_loss_noisy_input(h): the kernels'
    noise against the reference Philox's, to the last ulp of the float32 transcendentals."""
    y, h, V, c = linear_tensors(6, 9, 4, dtype=dtype)
    got = ops.inverse_loss(y, ops.inverse_loss_noisy_input(h, **NOISE), V, c)
    want = ref.inverse_loss(y.double(), ref.inverse_loss_noisy_input(h.double(), **NOISE), V.double(), c.double())
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w, atol=1e-5, rtol=1e-5)


def test_gradcheck():
    t = [v.requires_grad_() for v in linear_tensors(4, 5, 3)]
    assert torch.autograd.gradcheck(lambda *a: ops.inverse_loss(*a)[0], t)
    t, hp = lc_inputs(LC_CASES[2])
    t = [v.requires_grad_() for v in t]
    assert torch.autograd.gradcheck(lambda *a: ops.inverse_loss_lc2d(*a, **hp)[0], t)


@pytest.mark.parametrize("act", ["tanh", "sigmoid", "relu", "identity"])
@pytest.mark.parametrize("lc", [False, True], ids=["linear", "lc2d"])
def test_parameter_grads_equal_autograd(lc, act):
    """parameter_grads (the trainer's graph-free path) gives exactly the weight and bias gradients of backward()."""
    if lc:
        (y, h, V, c), hp = lc_inputs(LC_CASES[2], dtype=torch.float32)
        geometry = (list(hp["stride"]), list(resolve_padding(hp["padding"], tuple(h.shape[-2:]), tuple(V.shape[-2:]),
                                                             hp["stride"], hp["dilation"])), list(hp["dilation"]))
        fn = lambda V, c: ops.inverse_loss_lc2d(y, h, V, c, **hp, activation=act)
    else:
        y, h, V, c = linear_tensors(6, 9, 4, dtype=torch.float32)
        geometry = None
        fn = lambda V, c: ops.inverse_loss(y, h, V, c, activation=act)
    V, c = V.requires_grad_(), c.requires_grad_()
    loss, x_hat, residual = fn(V, c)
    loss.backward()
    grad_w, grad_b = parameter_grads(y, V.detach(), x_hat, residual, act, geometry)
    assert torch.equal(grad_w, V.grad) and torch.equal(grad_b, c.grad)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_runs_in_float32(dtype):
    """Under CUDA autocast the inverse loss runs in float32 (a loss, as autocast runs mse_loss): reduced-precision
    inputs are widened, and the result equals the float32 op on the widened inputs."""
    y, h, V, c = linear_tensors(6, 9, 4, dtype=torch.float32, device="cuda")
    (yl, hl, Vl, cl), hp = lc_inputs(LC_CASES[0], dtype=torch.float32, device="cuda")
    V.requires_grad_()
    with torch.autocast("cuda", dtype=dtype):
        got = ops.inverse_loss(y.to(dtype), h, V, c)
        got_lc = ops.inverse_loss_lc2d(yl.to(dtype), hl, Vl, cl, **hp)
    want = ops.inverse_loss(y.to(dtype).float(), h, V, c)
    want_lc = ops.inverse_loss_lc2d(yl.to(dtype).float(), hl, Vl, cl, **hp)
    for g, w in zip(got + got_lc, want + want_lc):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, w, atol=0, rtol=0)
    got[0].backward()
    assert V.grad.dtype == torch.float32


def test_autocast_wrappers_match_schemas():
    """The AutocastCUDA kernels, called directly with CPU tensors (which autocast leaves alone): their C++
    signatures match the schemas and they redispatch to the kernel (the CUDA-only test checks the casts)."""
    key = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCUDA)
    for name in ("inverse_loss", "inverse_loss_lc2d"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"bioplaus::{name}", "AutocastCUDA")
    t = linear_tensors(5, 7, 3, dtype=torch.float32)
    got = torch.ops.bioplaus.inverse_loss.default.redispatch(key, *t, "sigmoid")
    for g, w in zip(got, ops.inverse_loss(*t, activation="sigmoid")):
        assert torch.equal(g, w)
    (y, h, V, c), hp = lc_inputs(LC_CASES[2], dtype=torch.float32)
    p4 = list(resolve_padding(hp["padding"], h.shape[-2:], V.shape[-2:], hp["stride"], hp["dilation"]))
    got = torch.ops.bioplaus.inverse_loss_lc2d.default.redispatch(key, y, h, V, c, list(hp["stride"]), p4,
                                                                  list(hp["dilation"]), "tanh")
    for g, w in zip(got, ops.inverse_loss_lc2d(y, h, V, c, **hp)):
        assert torch.equal(g, w)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_residual_is_x_hat_minus_target(dtype):
    y, h, V, c = linear_tensors(6, 9, 4, dtype=dtype)
    _, x_hat, residual = ops.inverse_loss(y, h, V, c)
    assert torch.equal(residual, x_hat - h)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(3, 5), (2, 3, 5, 7), (0, 4), (1,)])
def test_noisy_input_is_h_plus_philox_fill(shape, dtype, device):
    """Same Philox normals as philox_fill, to the last ulp of the float32 transcendentals (the CPU kernel uses
    vectorised log/cos/sin, philox_fill libm's)."""
    h = torch.randn(shape, dtype=dtype, device=device)
    want = h + torch.ops.bioplaus.philox_fill(h, 7, 3, 11, "normal", 0.3)
    torch.testing.assert_close(ops.inverse_loss_noisy_input(h, **NOISE), want, atol=1e-6, rtol=1e-6)
    if h.numel() > 1:
        assert not torch.equal(ops.inverse_loss_noisy_input(h, **NOISE), h)
    g = torch.randn_like(h)
    hr = h.clone().requires_grad_()
    ops.inverse_loss_noisy_input(hr, **NOISE).backward(g)
    assert torch.equal(hr.grad, g)


def test_noisy_input_opcheck_and_bad_input():
    opcheck(torch.ops.bioplaus.inverse_loss_noisy_input.default, (torch.randn(4, 6, requires_grad=True), 0.2, 1, 2, 3))
    with pytest.raises(RuntimeError, match="inverse_loss_noisy_input: sigma must be a finite number >= 0, got -1"):
        torch.ops.bioplaus.inverse_loss_noisy_input(torch.randn(3), -1.0, 0, 0, 0)
    with pytest.raises(RuntimeError, match="inverse_loss_noisy_input: h must be float32 or float64 on the CPU, got Long"):
        torch.ops.bioplaus.inverse_loss_noisy_input(torch.ones(3, dtype=torch.long), 0.1, 0, 0, 0)


def test_noise_depends_on_seed_stream_and_step():
    h = torch.randn(6, 9, dtype=torch.float64)
    base = ops.inverse_loss_noisy_input(h, **NOISE)
    for change in (dict(stream=4), dict(step=12), dict(seed=8)):
        assert not torch.equal(ops.inverse_loss_noisy_input(h, **{**NOISE, **change}), base)


def test_empty_batch():
    loss, x_hat, _ = ops.inverse_loss(*linear_tensors(0, 5, 3))
    assert loss.item() == 0 and x_hat.shape == (0, 5)


def test_opcheck():
    opcheck(torch.ops.bioplaus.inverse_loss.default,
            tuple(v.requires_grad_() for v in linear_tensors(4, 5, 3)) + ("tanh",))
    t, hp = lc_inputs(LC_CASES[0])
    p4 = list(resolve_padding(hp["padding"], t[1].shape[-2:], t[2].shape[-2:], hp["stride"], hp["dilation"]))
    opcheck(torch.ops.bioplaus.inverse_loss_lc2d.default,
            tuple(v.requires_grad_() for v in t) + (list(hp["stride"]), p4, list(hp["dilation"]), "tanh"))


def test_compile_fullgraph():
    t = linear_tensors(4, 5, 3, dtype=torch.float32)
    f = torch.compile(lambda y, h, V, c: ops.inverse_loss(y, ops.inverse_loss_noisy_input(h, **NOISE), V, c)[0],
                      fullgraph=True, backend="eager")
    torch.testing.assert_close(f(*t), ops.inverse_loss(t[0], ops.inverse_loss_noisy_input(t[1], **NOISE), *t[2:])[0])


BAD = [
    (dict(activation="gelu"), "inverse_loss: activation must be 'tanh', 'sigmoid', 'relu' or 'identity', got 'gelu'"),
    (dict(target="target_short"), r"inverse_loss: target must have shape \[N, D_in\] = \[3, 4\], got \[3, 3\]"),
    (dict(bias="bias_double"), "inverse_loss: bias has dtype Double but weight has dtype Float"),
    (dict(y="y_3d"), r"inverse_loss: y must be 2-D \[N, D_out\], got shape \[3, 2, 1\]"),
]


@pytest.mark.parametrize("fake", [False, True], ids=["real", "fake"])
@pytest.mark.parametrize("index", range(len(BAD)))
def test_bad_inputs(index, fake):
    y, h, V, c = linear_tensors(3, 4, 2, dtype=torch.float32)
    named = {"target_short": h[:, :3], "bias_double": c.double(), "y_3d": y[..., None]}
    base = dict(y=y, target=h, weight=V, bias=c, activation="tanh")
    change, msg = BAD[index]
    args = {**base, **{k: named.get(v, v) if k != "activation" else v for k, v in change.items()}}
    if fake:
        with FakeTensorMode() as mode:
            args = {k: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
            with pytest.raises(RuntimeError, match=msg):
                torch.ops.bioplaus.inverse_loss(**args)
    else:
        with pytest.raises(RuntimeError, match=msg):
            torch.ops.bioplaus.inverse_loss(**args)


NOISY_BAD = [
    (dict(sigma=-0.1), "inverse_loss_noisy_input: sigma must be a finite number >= 0, got -0.1"),
    (dict(seed=-1), "inverse_loss_noisy_input: seed must be >= 0, got -1"),
    (dict(stream=-3), "inverse_loss_noisy_input: stream must be >= 0, got -3"),
    (dict(step=-2), "inverse_loss_noisy_input: step must be >= 0, got -2"),
]


@pytest.mark.parametrize("fake", [False, True], ids=["real", "fake"])
@pytest.mark.parametrize("index", range(len(NOISY_BAD)))
def test_bad_noisy_inputs(index, fake):
    change, msg = NOISY_BAD[index]
    args = {"h": torch.randn(3, 4), **NOISE, **change}
    if fake:
        with FakeTensorMode() as mode:
            args["h"] = mode.from_tensor(args["h"])
            with pytest.raises(RuntimeError, match=msg):
                torch.ops.bioplaus.inverse_loss_noisy_input(**args)
    else:
        with pytest.raises(RuntimeError, match=msg):
            torch.ops.bioplaus.inverse_loss_noisy_input(**args)


def test_bad_lc2d_input():
    t, hp = lc_inputs(LC_CASES[0], dtype=torch.float32)
    with pytest.raises(RuntimeError, match=r"inverse_loss_lc2d: y must have shape \[N, C_out, H_out, W_out\]"):
        ops.inverse_loss_lc2d(t[0][:, :2], t[1], t[2], t[3], **hp)


# ------------------------------------------------------------------------------------------------------------
# The CUDA kernels, in the CPU execution layer ("emu", every run) and on a GPU ("cuda"). Linear: the tiled GEMM
# (csrc/cuda/tp_gemm.cuh) with the residual epilogue; LC: the transposed LC and the grid-stride epilogue; both
# then the fixed-order loss reduction (a block per row: on 1 emulated SM 8 blocks are resident, so 70 rows loop,
# and 300 elements per row loop over the 256 threads). Padding is explicit (top, bottom, left, right).
KERNEL_LINEAR_SHAPES = [(70, 300, 37, 1), (70, 67, 20, 132), (5, 7, 3, 132), (0, 4, 3, 132)]  # N, D_in, D_out, SMs
KERNEL_LC_CASES = [  # (N, C_in, C_out, hw, k, stride, padding, dilation, SMs)
    (3, 5, 4, (13, 12), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1),
    (1, 1, 3, (10, 6), (3, 2), (3, 1), (1, 0, 2, 1), (2, 1), 132),
]
_ACT = {"tanh": torch.tanh, "relu": torch.relu}


def _check_kernel_outputs(got, y, target, pre, pre_magnitude, act, dtype, terms):
    """(loss, x_hat, residual) of a kernel against the float64 reference built from pre = the inverse layer's
    pre-activation (float64) and pre_magnitude (the same on absolute values)."""
    loss, x_hat, residual = got
    want_x = _ACT[act](pre)
    # the GEMM's accumulation error passes through the activation (slope <= 1), which adds its own rounding
    magnitude = pre_magnitude + want_x.abs()
    assert_elementwise_close(x_hat, want_x, dtype, magnitude=magnitude, terms=terms, what="x_hat")
    # the residual is x_hat (rounded to dtype) minus the target, rounded once
    assert_elementwise_close(residual, want_x - target.double().cpu(), dtype, magnitude=magnitude, terms=terms,
                             extra=ulp(want_x, dtype), what="residual")
    # the loss: the kernel's own residuals, squared and summed in the accumulation type, over N
    r = residual.double().cpu()
    want_loss = r.pow(2).sum() / max(target.shape[0], 1)
    assert_elementwise_close(loss, want_loss, dtype, magnitude=want_loss, terms=r.numel() + 1, what="loss")


@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("act", ["tanh", "relu"])
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
@pytest.mark.parametrize("shape", KERNEL_LINEAR_SHAPES, ids=str)
def test_kernel_linear(shape, dtype, act, device):
    *dims, sms = shape
    ops_, on = kernel_ops(device)
    y, h, V, c = linear_tensors(*dims, dtype=dtype, device=on, seed=stable_seed("il", shape, str(dtype)))
    with multiprocessors(device, sms):
        got = ops_.inverse_loss(y, h, V, c, act)
    y64, V64, c64 = (v.double().cpu() for v in (y, V, c))
    pre = y64 @ V64.t() + c64
    _check_kernel_outputs(got, y, h, pre, y64.abs() @ V64.abs().t() + c64.abs(), act, dtype, terms=dims[2] + 8)


@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("act", ["tanh", "relu"])
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
@pytest.mark.parametrize("case", KERNEL_LC_CASES, ids=str)
def test_kernel_lc2d(case, dtype, act, device):
    *geometry, sms = case
    ops_, on = kernel_ops(device)
    (y, h, V, c), hp = lc_inputs(tuple(geometry), dtype=dtype, device=on)
    with multiprocessors(device, sms):
        got = ops_.inverse_loss_lc2d(y, h, V, c, list(hp["stride"]), list(hp["padding"]), list(hp["dilation"]),
                                     act)
    y64, V64, c64 = (v.double().cpu() for v in (y, V, c))
    g = lambda a, w: dt_ref.lc2d_transposed(a, w, h.shape[-2:], **hp)  # noqa: E731
    pre_lc = g(y64, V64)
    # the transposed LC's result is a tensor in dtype (rounded once) before the epilogue adds c
    pre_magnitude = g(y64.abs(), V64.abs()) + c64.abs() + ulp(pre_lc, dtype) / torch.finfo(torch.float32).eps
    _check_kernel_outputs(got, y, h, pre_lc + c64, pre_magnitude, act, dtype,
                          terms=case[2] * case[4][0] * case[4][1] + 8)


@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
@pytest.mark.parametrize("shape", [((3, 5), 132), ((3, 2755), 1), ((0, 4), 132)], ids=str)
def test_kernel_noisy_input(shape, dtype, device):
    # one thread per Philox block of 4 elements (8265 elements: a partial last block; on 1 emulated SM, 2048
    # threads are resident, so the 2067 blocks loop)
    size, sms = shape
    ops_, on = kernel_ops(device)
    h = torch.randn(size, generator=torch.Generator().manual_seed(3), dtype=torch.float64).to(dtype)
    with multiprocessors(device, sms):
        got = ops_.inverse_loss_noisy_input(h.to(on), NOISE["sigma"], NOISE["seed"], NOISE["stream"], NOISE["step"])
    noise = ref.inverse_loss_noisy_input(torch.zeros_like(h), **NOISE)
    want = (h + noise).double()  # formed in dtype
    assert_elementwise_close(got, want, dtype, magnitude=torch.zeros_like(want),
                             extra=4 * ulp(noise.double(), torch.float32))
