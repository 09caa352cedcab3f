"""DFA: weight gradients against a hand-written reference (MLP and a conv/LC net, dense per position),
stored vs seeded B, the layout, the state dict and the errors."""
import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bioplaus_kernels import convert
from bioplaus_kernels.nn import DFA, LocallyConnected2d

from conftest import DEVICES


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 3))


def convnet():
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Tanh(),
                         LocallyConnected2d(4, 3, input_size=6, kernel_size=3, stride=2, padding="same"), nn.Tanh(),
                         nn.Flatten(), nn.Linear(3 * 3 * 3, 5), nn.Tanh(), nn.Linear(5, 3))


def reference_dfa_grads(net, Bs, x, y, last_layer):
    """Nokland's DFA by hand on a Sequential of (layer, activation) pairs: e = dLoss/dOutput; a hidden layer l
    followed by activation f gets delta_l = (e @ B_l).view(h_l.shape) * f'(a_l), with B_l the matrix of
    the input of the next trained layer; the output layer's weights get e; with last_layer="bp" the top
    hidden layer gets e @ W_L instead (its delta then is backprop's)."""
    mods = list(net)
    params = [i for i, m in enumerate(mods) if hasattr(m, "weight")]
    h, inputs = x, {}
    for i, m in enumerate(mods):
        if i in params:
            inputs[i] = h.detach().requires_grad_(True)
            h = m(inputs[i])
        else:
            h = m(h)
    out = h
    loss = F.cross_entropy(out, y)
    (e,) = torch.autograd.grad(loss, [out], retain_graph=True)
    grads = {}
    for j, i in enumerate(params):
        # the gradient arriving at the output of this segment (layer i and the activations up to the next layer)
        end = params[j + 1] if j + 1 < len(params) else None
        seg_out = inputs[end] if end is not None else out
        if end is None:
            signal = e
        elif end == params[-1] and last_layer == "bp":
            signal = e @ mods[end].weight.detach()
        else:
            signal = (e @ Bs[str(end)]).reshape(seg_out.shape)
        # re-run the segment from its input to differentiate it (inputs[end] is a detached leaf)
        z = inputs[i]
        for m in mods[i:end]:
            z = m(z)
        gw = torch.autograd.grad(z, [mods[i].weight, mods[i].bias], signal)
        grads[i] = gw
    return grads


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("make", [mlp, convnet])
@pytest.mark.parametrize("last_layer", ["convert", "bp"])
@pytest.mark.parametrize("seed", [None, 4])
def test_weight_grads_match_the_hand_reference(make, last_layer, seed, device):
    torch.manual_seed(0)
    net = make().double().to(device)
    x = torch.randn(5, *((12,) if make is mlp else (2, 6, 6)), dtype=torch.float64, device=device)
    y = torch.randint(0, 3, (5,), device=device)
    model = convert(copy.deepcopy(net), "dfa", output_dim=3, seed=seed, last_layer=last_layer)
    assert isinstance(model, DFA)
    F.cross_entropy(model(x), y).backward()
    Bs = model.feedback_matrices()
    want = reference_dfa_grads(model.model, Bs, x, y, last_layer)
    for i, (gw, gb) in want.items():
        layer = model.model[i]
        torch.testing.assert_close(layer.weight.grad, gw, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(layer.bias.grad, gb, rtol=1e-10, atol=1e-12)


def test_dense_per_position_matrices():
    torch.manual_seed(1)
    model = convert(convnet(), "dfa", output_dim=3, seed=1, last_layer="convert")
    model(torch.randn(2, 2, 6, 6)).sum().backward()
    shapes = {n: tuple(b.shape) for n, b in model.feedback_matrices().items()}
    # one column per (channel, row, column) of each layer's input: no spatial broadcast
    assert shapes == {"2": (3, 4 * 6 * 6), "5": (3, 27), "7": (3, 5)}
    assert [n for n, _ in model._layout] == ["2", "5", "7"]


def test_seeded_equals_stored_and_stores_nothing():
    torch.manual_seed(2)
    net = mlp()
    x, y = torch.randn(4, 12), torch.tensor([0, 1, 2, 0])
    stored = convert(copy.deepcopy(net), "dfa", output_dim=3, last_layer="convert")
    seeded = convert(copy.deepcopy(net), "dfa", output_dim=3, seed=stored._seed, last_layer="convert")
    for m in (stored, seeded):
        F.cross_entropy(m(x), y).backward()
    assert stored._stored is not None and seeded._stored is None
    for name, B in stored.feedback_matrices().items():
        assert torch.equal(B, seeded.feedback_matrices()[name])
    for a, b in zip(stored.parameters(), seeded.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)
    # the default scale is Glorot's bound per layer
    B = stored.feedback_matrices()["3"]
    assert B.abs().max() <= (6 / (3 + 8)) ** 0.5


def test_state_dict_round_trip_reproduces_b():
    torch.manual_seed(3)
    a = convert(mlp(), "dfa", output_dim=3)
    x, y = torch.randn(4, 12), torch.tensor([0, 1, 2, 0])
    F.cross_entropy(a(x), y).backward()
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = convert(mlp(), "dfa", output_dim=3)
    b.load_state_dict(torch.load(buf, weights_only=True))
    for name, B in a.feedback_matrices().items():
        assert torch.equal(B, b.feedback_matrices()[name])
    for m in (a, b):
        m.zero_grad()
        F.cross_entropy(m(x), y).backward()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p.grad, q.grad)


def test_forward_equals_the_model_and_no_grad_skips_the_hooks():
    torch.manual_seed(4)
    net = mlp()
    x = torch.randn(3, 12)
    model = convert(copy.deepcopy(net), "dfa", output_dim=3)
    with torch.no_grad():
        assert torch.equal(model(x), net(x))
    assert model._layout is None
    assert torch.equal(model(x), net(x))
    assert model._layout == [("3", (8,))]  # last_layer="bp": the output layer's input keeps backprop


def test_errors():
    with pytest.raises(ValueError, match="feedback='dfa' needs output_dim"):
        convert(mlp(), "dfa")
    model = convert(mlp(), "dfa", output_dim=4)
    with pytest.raises(ValueError, match=r"output must be a \[N, output_dim=4\] tensor, got \(2, 3\)"):
        model(torch.randn(2, 12))
    pooled = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Tanh(), nn.Conv2d(4, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                           nn.Linear(4, 3))
    model = convert(pooled, "dfa", output_dim=3)
    model(torch.randn(2, 2, 6, 6)).sum().backward()
    with pytest.raises(ValueError, match=r"inputs \[\('2', \(4, 6, 6\)\)\] differ from the layout fixed by the first"):
        model(torch.randn(2, 2, 8, 8))
    with pytest.raises(ValueError, match="DFA: scale must be 'glorot' or a positive float"):
        convert(mlp(), "dfa", output_dim=3, scale="xiao")
    with pytest.raises(ValueError, match="no layer in 'dfa' mode"):
        DFA(mlp(), 3)
    with pytest.raises(RuntimeError, match="under 'dfa' the layer's input gradient is replaced"):
        convert(mlp(), "dfa", output_dim=3).model[1].feedback_weight()
