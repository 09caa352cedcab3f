"""metrics.alignment against hand computations, and its lack of side effects."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bioplaus_kernels import convert, metrics


def mlp():
    return nn.Sequential(nn.Linear(10, 8), nn.Tanh(), nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 4))


def angle(a, b):
    a, b = a.double().flatten(), b.double().flatten()
    return math.degrees(math.acos(float((a @ b / (a.norm() * b.norm())).clamp(-1, 1))))


def test_backprop_is_aligned_with_itself():
    torch.manual_seed(0)
    model = convert(mlp(), "bp")
    res = metrics.alignment(model, torch.randn(8, 10), torch.randint(0, 4, (8,)))
    assert set(res) == {"0", "2", "4"}
    for r in res.values():
        assert r["angle_BW"] == 0.0 and r["norm_ratio"] == pytest.approx(1.0)
        assert r["angle_grad"] < 1e-3


@pytest.mark.parametrize("rule", ["fa", "usf", "brsf"])
def test_angles_and_ratio_against_a_hand_computation(rule):
    torch.manual_seed(1)
    model = convert(mlp(), rule, seed=3, last_layer="convert")
    x, y = torch.randn(8, 10), torch.randint(0, 4, (8,))
    res = metrics.alignment(model, x, y)
    l0, l2, l4 = model[0], model[2], model[4]
    for name, layer in (("0", l0), ("2", l2), ("4", l4)):
        B, W = layer.feedback_weight(), layer.weight.detach()
        assert res[name]["angle_BW"] == pytest.approx(angle(B, W), abs=1e-9)
        assert res[name]["norm_ratio"] == pytest.approx(float(B.norm() / W.norm()), rel=1e-6)
    # input gradients by hand: the rule multiplies by B where backprop multiplies by W
    model.eval()  # as alignment() runs it: brsf keeps its step
    h0 = x
    a1 = l0(h0); h1 = torch.tanh(a1); a2 = l2(h1); h2 = torch.tanh(a2); out = l4(h2)
    e = torch.autograd.grad(F.cross_entropy(out, y), out)[0].detach()

    def chain(mats):
        g2 = e @ mats[2]
        g1 = (g2 * (1 - h2 ** 2)) @ mats[1]
        g0 = (g1 * (1 - h1 ** 2)) @ mats[0]
        return g0, g1, g2
    rule_g = chain([l0.feedback_weight(), l2.feedback_weight(), l4.feedback_weight()])
    bp_g = chain([l0.weight.detach(), l2.weight.detach(), l4.weight.detach()])
    for name, r, b in zip(("0", "2", "4"), rule_g, bp_g):
        assert res[name]["angle_grad"] == pytest.approx(angle(r.detach(), b.detach()), abs=1e-3)
    assert res["4"]["angle_grad"] > 1.0  # the rule is really not backprop


def test_no_side_effects():
    torch.manual_seed(2)
    model = convert(mlp(), "brsf", seed=1)
    model.train()
    before = copy.deepcopy(model.state_dict())
    metrics.alignment(model, torch.randn(4, 10), torch.tensor([0, 1, 2, 3]))
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # brsf step not advanced


def test_dfa_reports_gradient_angles():
    torch.manual_seed(3)
    model = convert(mlp(), "dfa", output_dim=4, seed=2, last_layer="convert")
    x, y = torch.randn(8, 10), torch.randint(0, 4, (8,))
    res = metrics.alignment(model, x, y)
    assert set(res) == {"model.0", "model.2", "model.4"}
    assert math.isnan(res["model.2"]["angle_BW"]) and math.isnan(res["model.0"]["angle_grad"])
    assert 0.0 < res["model.2"]["angle_grad"] < 180.0 and 0.0 < res["model.4"]["angle_grad"] < 180.0
    # the gradient at model.4's input is e @ B_4 under DFA and e @ W_4 under backprop
    h = torch.tanh(model.model[2](torch.tanh(model.model[0](x))))
    out = model.model[4](h)
    e = torch.autograd.grad(F.cross_entropy(out, y), out)[0]
    want = angle(e @ model.feedback_matrices()["4"], e @ model.model[4].weight.detach())
    assert res["model.4"]["angle_grad"] == pytest.approx(want, abs=1e-3)


def test_conv_and_locally_connected_layers():
    torch.manual_seed(4)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 4, 3, stride=2), nn.Tanh(),
                        nn.Flatten(), nn.Linear(4 * 3 * 3, 3))
    model = convert(net, "frsf", seed=1, untie=True, input_size=(2, 8, 8), exclude="0")
    res = metrics.alignment(model, torch.randn(4, 2, 8, 8), torch.tensor([0, 1, 2, 0]))
    assert set(res) == {"2", "5"}  # the excluded conv is a plain torch layer; the last Linear stays bp
    lc = model[2]
    B, W = lc.feedback_weight(), lc.weight.detach()
    assert res["2"]["angle_BW"] == pytest.approx(angle(B, W), abs=1e-9)
    assert 0.0 < res["2"]["angle_BW"] < 90.0  # sign-concordant
    assert res["5"]["angle_BW"] == 0.0 and res["2"]["angle_grad"] > 0.0
