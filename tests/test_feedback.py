"""Feedback rules on nn.Linear, nn.Conv2d and nn.LocallyConnected2d: gradients against float64 references
built from feedback_weight(), the generator behind B, scales, brsf steps, usf tracking W, state dicts, errors
and torch.compile."""
import io
import math

import pytest
import torch
import torch.nn.functional as F

from bioplaus_kernels import feedback as fb
from bioplaus_kernels import reference
from bioplaus_kernels.nn import Conv2d, Linear, LocallyConnected2d
from bioplaus_kernels.reference import lc2d as ref_lc

from conftest import DEVICES

RULE_CASES = [("bp", None), ("fa", None), ("fa", 11), ("usf", None), ("frsf", None), ("frsf", 11),
              ("brsf", None), ("brsf", 11)]
LAYERS = ["linear", "conv", "conv_groups", "conv_same_even", "lc"]


def make(layer, rule, seed, device="cpu", dtype=torch.float64, stream=3, scale="glorot"):
    """(module, input) for one layer kind."""
    kw = dict(feedback=rule, seed=seed, stream=stream, scale=scale, device=device, dtype=dtype)
    if layer == "linear":
        return Linear(7, 5, **kw), torch.randn(2, 3, 7, device=device, dtype=dtype)
    if layer == "conv":
        return Conv2d(3, 4, 3, stride=2, padding=1, dilation=1, **kw), torch.randn(2, 3, 9, 8, device=device, dtype=dtype)
    if layer == "conv_groups":
        return Conv2d(4, 6, (3, 2), stride=(1, 2), padding=(2, 1), dilation=2, groups=2, bias=False, **kw), \
            torch.randn(2, 4, 8, 7, device=device, dtype=dtype)
    if layer == "conv_same_even":  # torch's 'same' with an even kernel pads one more row/column at the end
        return Conv2d(2, 3, 4, padding="same", **kw), torch.randn(2, 2, 7, 6, device=device, dtype=dtype)
    lc = LocallyConnected2d(3, 4, input_size=(7, 6), kernel_size=3, stride=2, padding="same", **kw)
    return lc, torch.randn(2, 3, 7, 6, device=device, dtype=dtype)


def plain_forward(layer, m, x, weight, bias):
    """The layer's forward in plain PyTorch (differentiable in x, weight, bias)."""
    if layer == "linear":
        return F.linear(x, weight, bias)
    if layer == "lc":
        return ref_lc.lc2d(x, weight, bias, m.stride, m.padding4, m.dilation)
    return F.conv2d(x, weight, bias, m.stride, m.padding, m.dilation, m.groups)


def reference_grads(layer, m, x, g, B):
    """float64: (grad_x through B, grad_W, grad_b) from autograd of the plain forward."""
    xd = x.detach().double().requires_grad_(True)
    w = m.weight.detach().double().requires_grad_(True)
    b = m.bias.detach().double().requires_grad_(True) if m.bias is not None else None
    y = plain_forward(layer, m, xd, w, b)
    gw, gb = torch.autograd.grad(y, [w] + ([b] if b is not None else []), g.double()) + ((None,) if b is None else ())
    # the input gradient of a linear map is the same map's vector-Jacobian product with B in place of W
    xb = x.detach().double().requires_grad_(True)
    (gx,) = torch.autograd.grad(plain_forward(layer, m, xb, B.double(), None), [xb], g.double())
    return gx, gw, gb


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("rule,seed", RULE_CASES)
def test_input_grad_through_feedback_weight_and_true_weight_grad(layer, rule, seed, device):
    torch.manual_seed(0)
    m, x = make(layer, rule, seed, device)
    x.requires_grad_(True)
    y = m(x)
    g = torch.randn_like(y)
    y.backward(g)
    B = m.feedback_weight()
    assert B.shape == m.weight.shape
    gx, gw, gb = reference_grads(layer, m, x, g, B)
    torch.testing.assert_close(x.grad.double(), gx, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(m.weight.grad.double(), gw, rtol=1e-10, atol=1e-10)
    if m.bias is not None:
        torch.testing.assert_close(m.bias.grad.double(), gb, rtol=1e-10, atol=1e-10)
    if rule != "bp":  # the test can tell the rule from backprop
        assert not torch.allclose(B, m.weight.detach())


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("rule", ["bp", "fa", "usf", "frsf", "brsf"])
def test_forward_is_torchs(layer, rule):
    torch.manual_seed(1)
    m, x = make(layer, rule, 5, dtype=torch.float32)
    want = plain_forward(layer, m, x, m.weight, m.bias)
    if layer == "lc":
        torch.testing.assert_close(m(x), want, rtol=1e-5, atol=1e-5)
    else:
        assert torch.equal(m(x), want)


@pytest.mark.parametrize("layer", ["linear", "conv", "lc"])
def test_feedback_weight_is_the_spec_from_the_reference_generator(layer):
    """B of every seeded rule equals the section-A definition computed with the pure-PyTorch Philox."""
    torch.manual_seed(2)
    for rule in ("fa", "usf", "frsf", "brsf"):
        m, _ = make(layer, rule, 21, dtype=torch.float32)
        spec = m._spec()
        want = reference.feedback_source(m.weight.detach(), spec.feedback, spec.seed, spec.stream, spec.step,
                                         spec.distribution, spec.scale)
        assert torch.equal(m.feedback_weight(), want), rule
        W = m.weight.detach()
        if rule == "fa":
            R = reference.philox.philox(W.shape, 21, 3, 0, spec.distribution, spec.scale, dtype=W.dtype)
            assert torch.equal(m.feedback_weight(), R)
        elif rule == "usf":
            assert torch.equal(m.feedback_weight(), spec.scale * torch.sign(W))
        else:
            B = m.feedback_weight()
            assert torch.equal(torch.sign(B), torch.sign(W))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layer", ["linear", "conv", "lc"])
def test_regenerated_fa_equals_stored_for_the_same_seed(layer, device):
    torch.manual_seed(3)
    stored, x = make(layer, "fa", None, device, torch.float32)
    assert stored.feedback_matrix is not None
    regen, _ = make(layer, "fa", stored._seed, device, torch.float32)
    assert regen.feedback_matrix is None
    assert torch.equal(stored.feedback_weight(), regen.feedback_weight())  # bit for bit
    with torch.no_grad():
        regen.weight.copy_(stored.weight)
        if stored.bias is not None:
            regen.bias.copy_(stored.bias)
    grads = []
    for m in (stored, regen):
        xi = x.clone().requires_grad_(True)
        m(xi).square().sum().backward()
        grads.append(xi.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_stored_b_is_the_same_on_every_device(device):
    torch.manual_seed(4)
    a = Linear(33, 17, feedback="fa", seed=9, stream=2)
    b = Linear(33, 17, feedback="fa", seed=9, stream=2, device=device)
    assert torch.equal(a.feedback_weight(), b.feedback_weight().cpu())


@pytest.mark.parametrize("layer", ["linear", "conv", "lc"])
def test_brsf_changes_every_step_and_repeats_for_the_same_seed_and_step(layer):
    torch.manual_seed(5)
    m, x = make(layer, "brsf", 13, dtype=torch.float32)
    twin, _ = make(layer, "brsf", 13, dtype=torch.float32)
    with torch.no_grad():
        twin.weight.copy_(m.weight)
    seen = []
    for step in range(1, 4):
        xi = x.clone().requires_grad_(True)
        y = m(xi)
        assert m.feedback_step == step
        g = torch.randn_like(y)
        y.backward(g)
        B = m.feedback_weight()
        gx, _, _ = reference_grads(layer, m, xi, g, B)
        torch.testing.assert_close(xi.grad.double(), gx, rtol=1e-5, atol=1e-5)  # this step's B was used
        assert all(not torch.equal(B, b) for b in seen)
        seen.append(B)
    m.eval()
    m(x)
    assert m.feedback_step == 3  # eval forwards do not advance
    twin.feedback_step = 2
    assert torch.equal(twin.feedback_weight(), seen[1])  # (seed, step) reproduces M_t
    assert torch.equal(torch.sign(seen[0]), torch.sign(seen[2]))  # only the magnitudes are redrawn


def test_frsf_and_seeded_fa_stay_fixed_across_steps():
    torch.manual_seed(6)
    for rule in ("frsf", "fa"):
        m = Linear(6, 4, feedback=rule, seed=1)
        B0 = m.feedback_weight()
        for _ in range(3):
            m(torch.randn(2, 6)).sum().backward()
        assert torch.equal(m.feedback_weight(), B0)


@pytest.mark.parametrize("layer", ["linear", "conv", "lc"])
def test_usf_follows_w_after_an_optimizer_step(layer):
    torch.manual_seed(7)
    m, x = make(layer, "usf", None, dtype=torch.float32)
    opt = torch.optim.SGD(m.parameters(), lr=10.0)
    B0 = m.feedback_weight()
    m(x).square().sum().backward()
    opt.step()
    opt.zero_grad()
    B1 = m.feedback_weight()
    s = m._spec().scale
    assert torch.equal(B1, s * torch.sign(m.weight.detach()))
    assert not torch.equal(B0, B1)
    xi = x.clone().requires_grad_(True)
    y = m(xi)
    g = torch.randn_like(y)
    y.backward(g)
    gx, _, _ = reference_grads(layer, m, xi, g, B1)
    torch.testing.assert_close(xi.grad.double(), gx, rtol=1e-5, atol=1e-5)


def test_scales():
    torch.manual_seed(8)
    lin = Linear(300, 200, feedback="fa", seed=1)
    a = math.sqrt(6 / 500)
    B = lin.feedback_weight()
    assert B.abs().max() <= a and B.abs().max() > 0.99 * a
    usf = Linear(300, 200, feedback="usf")
    assert torch.allclose(usf.feedback_weight().abs(), torch.full_like(B, a / math.sqrt(3)))
    xl = Linear(300, 200, feedback="fa", seed=1, scale="xiao").feedback_weight()
    assert xl.abs().max() <= 1 / math.sqrt(300) and xl.abs().max() > 0.99 / math.sqrt(300)
    assert torch.allclose(Linear(300, 200, feedback="usf", scale="xiao").feedback_weight().abs(),
                          torch.full_like(B, 1 / math.sqrt(300)))
    conv = Conv2d(64, 128, 3, feedback="fa", seed=1, scale="xiao").feedback_weight()
    s = math.sqrt(2 / (9 * 128))
    assert abs(conv.std().item() - s) < 0.02 * s and abs(conv.mean().item()) < 0.02 * s
    assert torch.allclose(Conv2d(64, 128, 3, feedback="usf", scale="xiao").feedback_weight().abs(),
                          torch.full_like(conv, s))
    lc = LocallyConnected2d(8, 16, 6, 3, feedback="fa", seed=1, scale="xiao").feedback_weight()
    s = math.sqrt(2 / (9 * 16))
    assert abs(lc.std().item() - s) < 0.05 * s
    assert Linear(3, 2, feedback="fa", seed=1, scale=0.25).feedback_weight().abs().max() <= 0.25
    # frsf/brsf: |R| * sign(W) with R of the fa distribution
    fr = Linear(300, 200, feedback="frsf", seed=1)
    assert torch.equal(fr.feedback_weight().abs(), Linear(300, 200, feedback="fa", seed=1).feedback_weight().abs())


@pytest.mark.parametrize("layer", ["linear", "conv", "lc"])
@pytest.mark.parametrize("rule,seed", RULE_CASES)
def test_state_dict_round_trip(layer, rule, seed):
    torch.manual_seed(9)
    a, x = make(layer, rule, seed, dtype=torch.float32)
    for _ in range(2):
        a(x).sum().backward()
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b, _ = make(layer, rule, seed, dtype=torch.float32)
    b.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(a.feedback_weight(), b.feedback_weight())
    assert a.feedback_step == b.feedback_step
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    a(xa).square().sum().backward()
    b(xb).square().sum().backward()
    assert torch.equal(xa.grad, xb.grad)


def test_state_dict_keys_stay_torchs_where_nothing_must_be_stored():
    torch.manual_seed(10)
    plain = set(torch.nn.Linear(4, 3).state_dict())
    for rule, seed in [("bp", None), ("usf", None), ("fa", 1), ("frsf", 1)]:
        assert set(Linear(4, 3, feedback=rule, seed=seed).state_dict()) == plain
    assert set(Linear(4, 3, feedback="fa").state_dict()) == plain | {"feedback_matrix"}
    assert set(Linear(4, 3, feedback="frsf").state_dict()) == plain | {"feedback_seed"}
    assert set(Linear(4, 3, feedback="brsf", seed=1).state_dict()) == plain | {"feedback_step"}
    m = Linear(4, 3, feedback="brsf")
    with pytest.raises(RuntimeError, match="feedback_step"):
        m.load_state_dict(torch.nn.Linear(4, 3).state_dict())
    m.load_state_dict(torch.nn.Linear(4, 3).state_dict(), strict=False)  # a torch checkpoint loads non-strictly


def test_errors():
    with pytest.raises(ValueError, match="unknown feedback rule 'foo'; expected one of 'bp', 'fa'"):
        Linear(3, 2, feedback="foo")
    with pytest.raises(ValueError, match="'dfa' is a model-level rule"):
        Conv2d(3, 2, 3, feedback="dfa")
    with pytest.raises(ValueError, match="padding_mode='zeros' only, got 'reflect'"):
        Conv2d(3, 2, 3, padding=1, padding_mode="reflect", feedback="usf")
    Conv2d(3, 2, 3, padding=1, padding_mode="reflect")  # bp: anything torch supports
    with pytest.raises(ValueError, match="scale: expected 'glorot', 'xiao' or a positive float, got 'he'"):
        LocallyConnected2d(3, 2, 5, 3, feedback="fa", seed=1, scale="he")
    with pytest.raises(ValueError, match="seed must be None or an int"):
        Linear(3, 2, feedback="fa", seed=-1)
    with pytest.raises(ValueError, match="unknown feedback rule"):
        fb.spec_for("sign", fb.Fans.linear(3, 2))


def test_repr_names_the_rule():
    assert repr(Linear(3, 2, feedback="frsf", seed=4)) == \
        "Linear(in_features=3, out_features=2, bias=True, feedback='frsf', seed=4, scale='glorot')"
    assert repr(Conv2d(3, 2, 3)) == repr(torch.nn.Conv2d(3, 2, 3))


@pytest.mark.parametrize("layer", ["linear", "conv", "lc"])
@pytest.mark.parametrize("rule,seed", [("fa", None), ("fa", 3), ("usf", None), ("brsf", 3)])
def test_torch_compile(layer, rule, seed):
    torch.manual_seed(11)
    m, x = make(layer, rule, seed, dtype=torch.float32)
    twin, _ = make(layer, rule, seed, dtype=torch.float32)
    twin.load_state_dict(m.state_dict())
    compiled = torch.compile(twin, backend="aot_eager", fullgraph=rule != "brsf")
    for _ in range(2):  # brsf: two different steps
        xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        ya, yb = m(xa), compiled(xb)
        torch.testing.assert_close(yb, ya)
        ya.square().sum().backward()
        yb.square().sum().backward()
        torch.testing.assert_close(xb.grad, xa.grad)
        torch.testing.assert_close(twin.weight.grad, m.weight.grad)
    assert twin.feedback_step == m.feedback_step


# The CPU kernels are float32/float64 only; on the CPU, Conv2d's usf path (torch's bf16 convolution) runs.
AUTOCAST_CASES = [pytest.param("cuda", layer, rule, seed, marks=pytest.mark.cuda) for layer in ("linear", "conv", "lc")
                  for rule, seed in (("fa", None), ("fa", 3), ("usf", None), ("brsf", 3))] + [("cpu", "conv", "usf", None)]


@pytest.mark.parametrize("device,layer,rule,seed", AUTOCAST_CASES)
def test_autocast(layer, rule, seed, device):
    """Under autocast the rule's path runs in autocast's dtype (as torch's layers do) and the parameters'
    gradients come back in their own dtype, with B of the low-precision weight."""
    dtype = torch.float16 if device == "cuda" else torch.bfloat16
    torch.manual_seed(12)
    m, x = make(layer, rule, seed, device, torch.float32)
    x.requires_grad_(True)
    with torch.autocast(device, dtype=dtype):
        y = m(x)
    assert y.dtype == dtype
    g = torch.randn_like(y)
    y.backward(g)
    assert m.weight.grad.dtype == torch.float32 and x.grad.dtype == torch.float32
    gx, gw, _ = reference_grads(layer, m, x, g.float(), m.feedback_weight())
    torch.testing.assert_close(x.grad.double(), gx, rtol=5e-2, atol=5e-2)
    torch.testing.assert_close(m.weight.grad.double(), gw, rtol=5e-2, atol=5e-2)
