"""linear_backward_input and ops.linear: every feedback mode against the float64 reference built with
reference.feedback_source; on-the-fly B equal to the materialised B; true weight/bias gradients."""
import pytest
import torch
import torch.nn.functional as F
from torch.library import opcheck

from bioplaus_kernels import ops
from bioplaus_kernels import reference

from conftest import DEVICES, KERNEL_DEVICES, KERNEL_DTYPES, kernel_ops, multiprocessors
from feedback_cases import FEEDBACK_SPECS, assert_rejected, assert_same_feedback, spec_id
from tolerance import assert_elementwise_close, stable_seed, ulp

SEEDS = dict(seed=11, stream=3, step=7, scale=0.37)
# (leading dims of grad_y, out_features, in_features): odd sizes, several column tiles, > 1 tile rows; the
# last two have so few tiles that the CUDA kernel splits the reduction over out_features (2 and 8 splits on
# a 132-SM GPU, the last split shorter than the others).
SHAPES = [((7,), 5, 9), ((2, 3), 37, 53), ((65,), 130, 301), ((4,), 600, 1000)]


def full_spec(s):
    return {**SEEDS, **s}


def dtypes_for(device):
    return [torch.float32, torch.float64] + ([torch.float16, torch.bfloat16] if device == "cuda" else [])


def make(lead, out, inp, dtype=torch.float64, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    gy = torch.randn(*lead, out, generator=gen, dtype=torch.float64)
    w = torch.randn(out, inp, generator=gen, dtype=torch.float64)
    w[0, :3] = 0.0  # sign(0) = 0
    return gy.to(dtype=dtype, device=device), w.to(dtype=dtype, device=device)


def assert_close_to_ref(got, want, dtype, spec=None, magnitude=None, terms=1):
    """float16/bfloat16 element by element (tolerance.py: `magnitude` is the reference on absolute values,
    `terms` the accumulation length); float32/float64 within a relative tolerance."""
    got, want = got.to(device="cpu", dtype=torch.float64), want.to(device="cpu", dtype=torch.float64)
    if dtype in (torch.float16, torch.bfloat16):
        assert magnitude is not None, "a low-precision comparison needs the reference's magnitude"
        assert_elementwise_close(got, want, dtype, magnitude=magnitude, terms=terms)
    else:
        tol = 1e-12 if dtype == torch.float64 else 2e-5
        if spec is not None and spec.get("distribution") == "normal":
            tol = max(tol, 2e-6)  # the reference's float32 log/cos/sin may differ from libm's in the last ulp
        torch.testing.assert_close(got, want, rtol=tol, atol=tol * max(1.0, want.abs().max().item()))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("spec", FEEDBACK_SPECS, ids=spec_id)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_backward_input_matches_reference(shape, spec, device):
    for dtype in dtypes_for(device):
        gy, w = make(*shape, dtype=dtype, device=device)
        got = ops.linear_backward_input(gy, w, **full_spec(spec))
        assert got.shape == (*shape[0], shape[2]) and got.dtype == dtype and got.is_contiguous()
        # B in weight's dtype (as the kernels define it), the product in float64 on the CPU.
        B = reference.feedback_source(w.cpu(), **full_spec(spec)).double()
        gy64 = gy.cpu().double()
        assert_close_to_ref(got, gy64 @ B, dtype, spec, magnitude=gy64.abs() @ B.abs(), terms=shape[1])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("spec", FEEDBACK_SPECS[1:], ids=spec_id)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_on_the_fly_B_equals_materialised_B_bit_for_bit(shape, spec, device):
    # The kernels run the same GEMMs on the same tiles in every mode, so building B on the fly gives
    # exactly what "weight" mode gives on ops.feedback_source's B.
    for dtype in dtypes_for(device):
        gy, w = make(*shape, dtype=dtype, device=device, seed=1)
        B = ops.feedback_source(w, **full_spec(spec))
        assert B.dtype == dtype and B.device == w.device
        got = ops.linear_backward_input(gy, w, **full_spec(spec))
        assert torch.equal(got, ops.linear_backward_input(gy, B))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("spec", FEEDBACK_SPECS, ids=spec_id)
def test_ops_feedback_source_equals_reference(spec, device):
    for dtype in dtypes_for(device):
        _, w = make((1,), 33, 47, dtype=dtype, device=device)
        got = ops.feedback_source(w, **full_spec(spec))
        want = reference.feedback_source(w.cpu(), **full_spec(spec))
        assert got.shape == w.shape and got.dtype == dtype
        assert_same_feedback(got.cpu(), want, spec)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_random_sign_special_weights_match_reference(dtype):
    # Long runs take the CPU's vectorised generator with the sign combined in the same pass; zeros, -0.0,
    # NaN and denormal weights must still give exactly reference's |R| * sign(W) (sign(NaN) = 0, as torch).
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(37, 301, generator=gen, dtype=dtype)
    flat = w.view(-1)
    idx = torch.randperm(flat.numel(), generator=gen)[:600]
    specials = torch.tensor([0.0, -0.0, float("nan"), 1e-40, -1e-40, float("inf"), -float("inf")], dtype=dtype)
    flat[idx] = specials[torch.arange(600) % len(specials)]
    spec = dict(feedback="random_sign", seed=12, stream=4, step=2, scale=0.75)
    got = ops.feedback_source(w, **spec)
    want = reference.feedback_source(w, **spec)
    assert torch.equal(got.view(-1).view(torch.int32 if dtype == torch.float32 else torch.int64),
                       want.view(-1).view(torch.int32 if dtype == torch.float32 else torch.int64))


def test_feedback_source_semantics():
    w = torch.tensor([[1.5, -2.0, 0.0], [-0.0, 3.0, -1e-30]])
    assert torch.equal(ops.feedback_source(w, "weight"), w)
    assert torch.equal(ops.feedback_source(w, "sign", scale=0.5), torch.tensor([[0.5, -0.5, 0.0], [0.0, 0.5, -0.5]]))
    r = ops.philox(w.shape, 4, 2, 9, scale=0.25)
    assert torch.equal(ops.feedback_source(w, "random", seed=4, stream=2, step=9, scale=0.25), r)
    rs = ops.feedback_source(w, "random_sign", seed=4, stream=2, step=9, scale=0.25)
    assert torch.equal(rs.abs(), r.abs() * (w != 0)) and torch.equal(torch.sign(rs), torch.sign(w))
    # a new step redraws, the same step repeats
    assert not torch.equal(ops.feedback_source(w, "random", seed=4, step=10), ops.feedback_source(w, "random", seed=4))


@pytest.mark.parametrize("device", DEVICES)
def test_random_mode_never_reads_weight(device):
    gy, w = make((9,), 40, 70, dtype=torch.float32, device=device)
    like = torch.empty((), device=device).expand(40, 70)  # zero strides: no values to read
    spec = full_spec(FEEDBACK_SPECS[1])
    assert torch.equal(ops.linear_backward_input(gy, like, **spec), ops.linear_backward_input(gy, w, **spec))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("spec", FEEDBACK_SPECS, ids=spec_id)
def test_linear_forward_and_gradients(spec, device):
    for dtype in dtypes_for(device):
        gen = torch.Generator().manual_seed(5)
        x = torch.randn(3, 4, 29, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device).requires_grad_()
        w = torch.randn(17, 29, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device).requires_grad_()
        b = torch.randn(17, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device).requires_grad_()
        y = ops.linear(x, w, b, **full_spec(spec))
        assert torch.equal(y, F.linear(x, w, b))
        gy = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
        gx, gw, gb = torch.autograd.grad(y, (x, w, b), gy)
        B = reference.feedback_source(w.detach().cpu(), **full_spec(spec)).double()
        gy64 = gy.cpu().double()
        assert_close_to_ref(gx, gy64 @ B, dtype, spec, magnitude=gy64.abs() @ B.abs(), terms=17)
        # weight and bias: the true local gradients
        x64, w64, b64 = (t.detach().cpu().double().requires_grad_() for t in (x, w, b))
        gw_ref, gb_ref = torch.autograd.grad(F.linear(x64, w64, b64), (w64, b64), gy64)
        gw_mag, gb_mag = torch.autograd.grad(F.linear(x64.abs(), w64, b64), (w64, b64), gy64.abs())
        assert_close_to_ref(gw, gw_ref, dtype, magnitude=gw_mag, terms=12)
        assert_close_to_ref(gb, gb_ref, dtype, magnitude=gb_mag, terms=12)


@pytest.mark.parametrize("device", DEVICES)
def test_linear_with_a_stored_matrix(device):
    # matrix: a stored B; grad_x = grad_y @ B by torch's GEMM, weight and bias get the true gradients and
    # matrix (a buffer) none, even when it requires grad.
    for dtype in dtypes_for(device):
        gen = torch.Generator().manual_seed(6)
        make_t = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
        x, w, b, B = make_t(2, 5, 19).requires_grad_(), make_t(11, 19).requires_grad_(), make_t(11), make_t(11, 19)
        b.requires_grad_()
        B.requires_grad_()
        y = ops.linear(x, w, b, matrix=B)
        assert torch.equal(y, F.linear(x, w, b))
        gy = make_t(*y.shape)
        gx, gw, gb, gB = torch.autograd.grad(y, (x, w, b, B), gy, allow_unused=True)
        assert gB is None
        gy64, B64 = gy.cpu().double(), B.detach().cpu().double()
        assert_close_to_ref(gx, gy64 @ B64, dtype, magnitude=gy64.abs() @ B64.abs(), terms=11)
        x64, w64, b64 = (t.detach().cpu().double().requires_grad_() for t in (x, w, b))
        gw_ref, gb_ref = torch.autograd.grad(F.linear(x64, w64, b64), (w64, b64), gy64)
        gw_mag, gb_mag = torch.autograd.grad(F.linear(x64.abs(), w64, b64), (w64, b64), gy64.abs())
        assert_close_to_ref(gw, gw_ref, dtype, magnitude=gw_mag, terms=10)
        assert_close_to_ref(gb, gb_ref, dtype, magnitude=gb_mag, terms=10)


def test_gradcheck_with_a_stored_matrix():
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    B = torch.randn(3, 5, dtype=torch.float64)
    # the input gradient is B's: gradcheck x against F.linear with B in W's place, weight and bias as they are
    torch.autograd.gradcheck(lambda w_, b_: ops.linear(x.detach(), w_, b_, matrix=B), (w, b))
    gy = torch.randn(4, 3, dtype=torch.float64)
    (gx,) = torch.autograd.grad(ops.linear(x, w, b, matrix=B), (x,), gy)
    (gx_ref,) = torch.autograd.grad(F.linear(x, B, b), (x,), gy)
    torch.testing.assert_close(gx, gx_ref, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_opcheck_linear_with_a_stored_matrix(bias, device):
    x = torch.randn(2, 3, 13, device=device, requires_grad=True)
    w = torch.randn(9, 13, device=device, requires_grad=True)
    b = torch.randn(9, device=device, requires_grad=True) if bias else None
    B = torch.randn(9, 13, device=device)
    opcheck(torch.ops.bioplaus.linear, (x, w, b, "weight", 0, 0, 0, "uniform", 1.0, B))


@pytest.mark.parametrize("name", ["spec", "shape", "dtype"])
def test_bad_stored_matrix_is_rejected(name):
    x, w = torch.randn(2, 3), torch.randn(4, 3)
    bad = {
        "spec": ((x, w, None, "random", 1, 0, 0, "uniform", 1.0, torch.randn(4, 3)),
                 r"linear: a matrix is the feedback itself; feedback must be 'weight' with it, got 'random'"),
        "shape": ((x, w, None, "weight", 0, 0, 0, "uniform", 1.0, torch.randn(3, 4)),
                  r"linear: matrix must have weight's shape \[4, 3\], got \[3, 4\]"),
        "dtype": ((x, w, None, "weight", 0, 0, 0, "uniform", 1.0, torch.randn(4, 3, dtype=torch.float64)),
                  r"linear: matrix has dtype Double but weight has dtype Float; they must match"),
    }
    assert_rejected(torch.ops.bioplaus.linear, *bad[name])


def test_linear_without_bias_and_partial_requires_grad():
    x = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 8, dtype=torch.float64)
    y = ops.linear(x, w, feedback="sign", scale=2.0)
    (gx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    torch.testing.assert_close(gx, torch.ones(5, 6, dtype=torch.float64) @ (2.0 * torch.sign(w)))


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_weight_mode(device):
    gen = torch.Generator().manual_seed(2)
    x, w, b = (torch.randn(*s, generator=gen, dtype=torch.float64).to(device).requires_grad_()
               for s in ((2, 3, 7), (5, 7), (5,)))
    assert torch.autograd.gradcheck(lambda x, w, b: ops.linear(x, w, b), (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w: ops.linear(x, w), (x, w))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("spec", FEEDBACK_SPECS, ids=spec_id)
def test_opcheck(spec, device):
    gy, w = make((2, 3), 9, 13, dtype=torch.float32, device=device)
    s = full_spec(spec)
    args = (gy, w, s["feedback"], s["seed"], s["stream"], s["step"], s.get("distribution", "uniform"), s["scale"])
    opcheck(torch.ops.bioplaus.linear_backward_input, args)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("spec", FEEDBACK_SPECS, ids=spec_id)
@pytest.mark.parametrize("bias", [True, False])
def test_opcheck_linear(spec, bias, device):
    # The forward op with its C++ autograd kernel: schema, fake kernel, autograd registration, AOT dispatch.
    _, w = make((2, 3), 9, 13, dtype=torch.float32, device=device)
    x = torch.randn(2, 3, 13, device=device, requires_grad=True)
    w = w.detach().requires_grad_()
    b = torch.randn(9, device=device, requires_grad=True) if bias else None
    s = full_spec(spec)
    args = (x, w, b, s["feedback"], s["seed"], s["stream"], s["step"], s.get("distribution", "uniform"), s["scale"])
    opcheck(torch.ops.bioplaus.linear, args)


@pytest.mark.parametrize("spec", FEEDBACK_SPECS[1:], ids=spec_id)
def test_gradcheck_weight_and_bias_under_every_spec(spec):
    # The true weight/bias gradients whatever B is: gradcheck with x held constant (its gradient is B's).
    x = torch.randn(4, 5, dtype=torch.float64)
    w = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w, b: ops.linear(x, w, b, **full_spec(spec)), (w, b))


def test_torch_compile_fullgraph():
    spec = full_spec(FEEDBACK_SPECS[4])
    x = torch.randn(6, 12, requires_grad=True)
    w = torch.randn(10, 12, requires_grad=True)
    b = torch.randn(10, requires_grad=True)

    def step(x, w, b):
        return ops.linear(torch.tanh(x), w, b, **spec).square().sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(x, w, b), (x, w, b))
    want = torch.autograd.grad(step(x, w, b), (x, w, b))
    for g, e in zip(got, want):
        torch.testing.assert_close(g, e)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_and_degenerate_shapes(device):
    w = torch.randn(4, 6, device=device)
    for feedback in ("weight", "random", "random_sign"):
        assert ops.linear_backward_input(torch.randn(0, 4, device=device), w, feedback=feedback).shape == (0, 6)
    # no output features: an empty sum
    out = ops.linear_backward_input(torch.randn(3, 0, device=device), torch.randn(0, 6, device=device), feedback="sign")
    assert torch.equal(out, torch.zeros(3, 6, device=device))
    # a single sample without batch dims
    g = ops.linear_backward_input(torch.randn(4, device=device), w, feedback="sign")
    assert g.shape == (6,)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("spec", FEEDBACK_SPECS, ids=spec_id)
def test_non_contiguous_inputs(spec, device):
    gy, w = make((20,), 30, 50, dtype=torch.float64, device=device, seed=3)
    s = full_spec(spec)
    want = ops.linear_backward_input(gy, w, **s)
    gy_nc = torch.stack([gy, torch.zeros_like(gy)], dim=-1)[..., 0]
    w_nc = w.t().contiguous().t()
    assert not gy_nc.is_contiguous() and not w_nc.is_contiguous()
    got = ops.linear_backward_input(gy_nc, w_nc, **s)
    assert_close_to_ref(got, want, torch.float64)


@pytest.mark.parametrize("device", DEVICES)
def test_bit_identical_across_runs(device):
    gy, w = make((64,), 256, 1000, dtype=torch.float32, device=device, seed=4)
    for spec in map(full_spec, FEEDBACK_SPECS):
        assert torch.equal(ops.linear_backward_input(gy, w, **spec), ops.linear_backward_input(gy, w, **spec))


def test_double_backward_is_a_clear_error():
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    gy = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    gx = ops.linear_backward_input(gy, torch.randn(5, 4, dtype=torch.float64), feedback="sign")
    with pytest.raises(RuntimeError, match="derivative for bioplaus::linear_backward_input is not implemented"):
        gx.sum().backward()
    del x


# ---------------------------------------------------------------------------------------------------
# Bad input: the C++ check and the fake kernel reject it with the same message.
# ---------------------------------------------------------------------------------------------------
def _args(gy=(4, 5), w=(5, 3), dtype=torch.float32, w_dtype=None, **spec):
    s = dict(feedback="weight", seed=0, stream=0, step=0, distribution="uniform", scale=1.0)
    s.update(spec)
    return (torch.randn(gy).to(dtype), torch.randn(w).to(w_dtype or dtype), *s.values())


OP = "linear_backward_input"
BAD = {
    "feedback": (_args(feedback="fa"), rf"{OP}: feedback must be 'weight', 'random', 'sign' or 'random_sign', got 'fa'"),
    "distribution": (_args(feedback="random", distribution="bits"),
                     rf"{OP}: distribution must be 'uniform' or 'normal', got 'bits'"),
    "seed": (_args(feedback="random", seed=-1), rf"{OP}: seed must be >= 0, got -1"),
    "stream": (_args(stream=-2), rf"{OP}: stream must be >= 0, got -2"),
    "step": (_args(step=-3), rf"{OP}: step must be >= 0, got -3"),
    "weight ndim": (_args(w=(5, 3, 1)), rf"{OP}: weight must be 2-D \[out_features, in_features\], got a 3-D tensor "
                                        r"of shape \[5, 3, 1\]"),
    "grad_y 0-D": (_args(gy=()), rf"{OP}: grad_y must have at least 1 dimension \[..., out_features\], got a 0-D"),
    "features": (_args(gy=(4, 6)), rf"{OP}: grad_y has 6 features in its last dimension but weight expects "
                                   r"out_features=5"),
    "dtype mismatch": (_args(w_dtype=torch.float64), rf"{OP}: grad_y has dtype Float but weight has dtype Double; "
                                                     r"they must match"),
    "half on cpu": (_args(dtype=torch.float16), rf"{OP}: weight must be float32 or float64 on the CPU, got Half"),
    "integer": (_args(dtype=torch.int64), rf"{OP}: weight must be float32 or float64 on the CPU, got Long"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_is_rejected_with_a_clear_message(name):
    assert_rejected(torch.ops.bioplaus.linear_backward_input, *BAD[name])


def test_bad_spec_in_the_functional_forms():
    with pytest.raises(RuntimeError, match=r"linear: feedback must be .* got 'usf'"):
        ops.linear(torch.randn(2, 3), torch.randn(4, 3), feedback="usf")
    with pytest.raises(RuntimeError, match=r"linear: step must be >= 0, got -1"):
        ops.linear(torch.randn(2, 3), torch.randn(4, 3), feedback="random", step=-1)
    with torch._subclasses.fake_tensor.FakeTensorMode():  # the fake kernel mirrors the C++ message
        with pytest.raises(RuntimeError, match=r"linear: distribution must be 'uniform' or 'normal', got 'x'"):
            ops.linear(torch.randn(2, 3), torch.randn(4, 3), feedback="random", distribution="x")
    with pytest.raises(RuntimeError, match=r"feedback_source: seed must be >= 0, got -5"):
        ops.feedback_source(torch.randn(2, 3), "random", seed=-5)
    with pytest.raises(RuntimeError, match=r"feedback_source: distribution must be 'uniform' or 'normal', got 'x'"):
        reference.feedback_source(torch.randn(2, 3), "random", distribution="x")


@pytest.mark.cuda
def test_device_mismatch_is_rejected():
    with pytest.raises(RuntimeError, match=rf"{OP}: grad_y is on cpu but weight is on cuda:0; they must be on the same"):
        ops.linear_backward_input(torch.randn(2, 5), torch.randn(5, 3, device="cuda"))


@pytest.mark.cuda
def test_linear_autocast_casts_like_f_linear():
    x = torch.randn(8, 24, device="cuda", requires_grad=True)
    w = torch.randn(16, 24, device="cuda", requires_grad=True)
    b = torch.randn(16, device="cuda", requires_grad=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = ops.linear(x, w, b, feedback="random_sign", seed=1)
        want = F.linear(x, w, b)
    assert y.dtype == torch.bfloat16 and torch.equal(y, want)
    gx, gw, gb = torch.autograd.grad(y.float().sum(), (x, w, b))
    assert gx.dtype == gw.dtype == gb.dtype == torch.float32


@pytest.mark.cuda
def test_autocast_runs_in_reduced_precision():
    gy, w = make((8,), 16, 24, dtype=torch.float32, device="cuda")
    for dtype in (torch.float16, torch.bfloat16):
        with torch.autocast("cuda", dtype=dtype):
            got = ops.linear_backward_input(gy, w, feedback="random_sign", seed=1)
        assert got.dtype == dtype
        want = ops.linear_backward_input(gy.to(dtype), w.to(dtype), feedback="random_sign", seed=1)
        assert torch.equal(got, want)


def test_on_the_fly_B_equals_materialised_B_on_one_thread():
    # One thread: one tile per small layer, column tiles for large ones; the equality must hold either way.
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        for shape in SHAPES + [((3,), 300, 4000)]:
            gy, w = make(*shape, dtype=torch.float32, seed=6)
            for spec in map(full_spec, FEEDBACK_SPECS[1:]):
                B = ops.feedback_source(w, **spec)
                assert torch.equal(ops.linear_backward_input(gy, w, **spec), ops.linear_backward_input(gy, B))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_tile_path_row_blocks_and_column_tiles(dtype, threads):
    # More than 8 rows and a B larger than the tile budget (1 MB per thread): blocks of whole rows whose
    # GEMMs add up (1100 x 1000, 2100 x 328), or, where fewer than 64 whole rows fit (300 x 5000 on one
    # thread, and in float64 on two), column tiles. in_features are not whole 128-element uniform groups, so
    # a column tile's edge falls inside a group on most rows. Every mode must still equal "weight" mode on the
    # materialised B bit for bit and match the float64 reference.
    prior = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        for lead, out, inp in [((9,), 1100, 1000), ((12,), 2100, 328), ((9,), 300, 5000)]:
            gy, w = make(lead, out, inp, dtype=dtype, seed=12)
            for spec in map(full_spec, FEEDBACK_SPECS[1:]):
                got = ops.linear_backward_input(gy, w, **spec)
                assert torch.equal(got, ops.linear_backward_input(gy, ops.feedback_source(w, **spec))), spec
                want = gy.double() @ reference.feedback_source(w, **spec).double()
                assert_close_to_ref(got, want, dtype, spec)
    finally:
        torch.set_num_threads(prior)


@pytest.mark.parametrize("threads", [1, 2])
def test_small_batch_path_every_mode(threads):
    # Up to 8 rows of grad_y, float32 on an AVX-512 CPU, take the small-batch path (B streamed through a
    # register-blocked kernel; "sign" formed in registers from weight read in place); more rows take the tile
    # path. Both must match the float64 reference and equal a "weight" run on the materialised B bit for
    # bit, at widths that end mid-vector and mid-group, with rows that cross the kernel's row blocks.
    prior = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        for lead, out, inp in [((1,), 3, 5), ((8,), 130, 49), ((2, 4), 65, 301), ((9,), 70, 100), ((5,), 300, 4000)]:
            gy, w = make(lead, out, inp, dtype=torch.float32, seed=9)
            w.view(-1)[3:7] = torch.tensor([float("nan"), -0.0, 1e-40, -1e-40])  # sign: 0, 0, +, -
            for spec in map(full_spec, FEEDBACK_SPECS):
                got = ops.linear_backward_input(gy, w, **spec)
                if spec["feedback"] == "weight":  # NaN in weight: the column of grad_x is NaN
                    want = gy.double() @ w.double()
                    scale = want.nan_to_num().abs().max().item()
                    torch.testing.assert_close(got.double(), want, rtol=2e-5, atol=2e-5 * scale, equal_nan=True)
                    continue
                B = ops.feedback_source(w, **spec)
                assert torch.equal(got, ops.linear_backward_input(gy, B)), spec
                want = gy.double() @ reference.feedback_source(w, **spec).double()
                assert_close_to_ref(got, want, torch.float32, spec)
    finally:
        torch.set_num_threads(prior)


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() != "AVX512", reason="the small-batch path needs AVX-512")
def test_small_batch_path_is_independent_of_the_thread_count():
    # Each element is one sequential sum over out_features, whatever the column blocking per thread.
    gy, w = make((8,), 200, 1000, dtype=torch.float32, seed=4)
    prior = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append([ops.linear_backward_input(gy, w, **full_spec(s)) for s in FEEDBACK_SPECS])
    finally:
        torch.set_num_threads(prior)
    for a, b in zip(*results):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------------------
# The CUDA kernel of linear_backward_input, in the CPU execution layer ("emu", every run) and on a GPU ("cuda"),
# at shapes that reach each of its paths (csrc/cuda/linear_kernel.cu; the table in docs/emulation.md):
# (grad_y's leading dims, out_features, in_features, SMs of the emulated device).
KERNEL_SHAPES = [
    ((3,), 40, 5, 132),        # one tile, one split (40 values of `out` are fewer than 2 x 4 chunks)
    ((70,), 300, 67, 132),     # 2 row and 2 column tiles; 4 splits of 5 chunks, the last 4 (288 + 12)
    ((64,), 300, 100, 2),      # 2 splits on 2 SMs; sum_splits loops (6400 sums, 4096 threads resident)
    ((2, 35), 130, 301, 1),    # 3-D grad_y; one split on 1 SM; 5 column tiles, the last 45 wide
    ((0,), 16, 8, 132),        # no rows
    ((4,), 0, 9, 132),         # an empty reduction: zeros
]


def kernel_shape_id(s):
    lead, out, inp, sms = s
    return f"{'x'.join(map(str, lead))}-o{out}-i{inp}-sm{sms}"


@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("spec", FEEDBACK_SPECS, ids=spec_id)
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
@pytest.mark.parametrize("shape", KERNEL_SHAPES, ids=kernel_shape_id)
def test_kernel_backward_input(shape, dtype, spec, device):
    lead, out, inp, sms = shape
    ops_, on = kernel_ops(device)
    gen = torch.Generator().manual_seed(stable_seed("linear", kernel_shape_id(shape), str(dtype)))
    gy = torch.randn(*lead, out, generator=gen, dtype=torch.float64).to(dtype=dtype, device=on)
    w = torch.randn(out, inp, generator=gen, dtype=torch.float64).to(dtype=dtype, device=on)
    spec = full_spec(spec)
    with multiprocessors(device, sms):
        got = ops_.linear_backward_input(gy, w, **spec)
        materialised = ops_.feedback_source(w, **spec)
        assert torch.equal(got, ops_.linear_backward_input(gy, materialised))  # on the fly == stored B, bitwise
    assert got.shape == (*lead, inp) and got.dtype == dtype and got.is_contiguous()
    B = reference.feedback_source(w.cpu(), **spec).double()
    gy64 = gy.cpu().double()
    extra = None
    if spec.get("distribution") == "normal":
        extra = gy64.abs() @ (ulp(B, dtype) + 4 * ulp(B, torch.float32))  # see test_lc2d's input gradient
    assert_elementwise_close(got, gy64 @ B, dtype, magnitude=gy64.abs() @ B.abs(), terms=out, extra=extra)
