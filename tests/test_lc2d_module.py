"""LocallyConnected2d: construction, initialisation, from_conv2d, state_dict, repr, torch.compile."""
import io
import math

import pytest
import torch
from torch import nn

from bioplaus_kernels.nn import LocallyConnected2d
from bioplaus_kernels.reference import lc2d as ref

from conftest import DEVICES


@pytest.mark.parametrize("device", DEVICES)
def test_module_matches_reference_and_shapes(device):
    torch.manual_seed(0)
    lc = LocallyConnected2d(3, 6, input_size=(11, 9), kernel_size=(3, 5), stride=2, padding="same").to(device)
    assert lc.output_size == (6, 5)
    assert lc.padding4 == (1, 1, 2, 2)
    assert lc.weight.shape == (6, 5, 6, 3, 3, 5) and lc.bias.shape == (6, 6, 5)
    torch.nn.init.normal_(lc.bias)
    x = torch.randn(4, 3, 11, 9, device=device)
    y = lc(x)
    want = ref.lc2d(x.cpu().double(), lc.weight.detach().cpu().double(), lc.bias.detach().cpu().double(),
                    stride=2, padding="same")
    torch.testing.assert_close(y.cpu().double(), want, rtol=1e-5, atol=1e-5)


def test_same_padding_follows_tensorflow():
    # TF SAME: out = ceil(in / stride), the odd pad at the bottom/right.
    for size, k, s in [(28, 3, 2), (14, 3, 2), (32, 5, 2), (16, 5, 2), (224, 9, 4), (7, 3, 1), (10, 4, 3)]:
        lc = LocallyConnected2d(1, 1, size, k, s, padding="same")
        assert lc.output_size == (math.ceil(size / s),) * 2
        top, bottom = lc.padding4[:2]
        assert bottom - top in (0, 1)
    assert LocallyConnected2d(1, 1, 28, 3, 2, padding="same").padding4 == (0, 1, 0, 1)


def test_glorot_uniform_initialisation():
    torch.manual_seed(0)
    lc = LocallyConnected2d(16, 32, input_size=12, kernel_size=3)
    bound = math.sqrt(6.0 / (16 * 9 + 32 * 9))
    w = lc.weight.detach()
    assert w.abs().max() <= bound
    assert abs(w.std().item() - bound / math.sqrt(3)) < 0.02 * bound
    assert torch.equal(lc.bias, torch.zeros_like(lc.bias))
    assert LocallyConnected2d(2, 3, 5, 3, bias=False).bias is None


def test_extra_repr():
    lc = LocallyConnected2d(3, 64, input_size=32, kernel_size=5, stride=2, padding="same")
    assert repr(lc) == ("LocallyConnected2d(3, 64, input_size=(32, 32), kernel_size=(5, 5), stride=(2, 2), "
                        "padding='same', output_size=(16, 16), bias=True)")
    assert "dilation=(2, 1)" in repr(LocallyConnected2d(1, 1, 9, 3, dilation=(2, 1)))


def test_state_dict_round_trip():
    torch.manual_seed(0)
    a = LocallyConnected2d(3, 5, input_size=(8, 7), kernel_size=3, padding=1)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    b = LocallyConnected2d(3, 5, input_size=(8, 7), kernel_size=3, padding=1)
    b.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    x = torch.randn(2, 3, 8, 7)
    assert torch.equal(a(x), b(x))
    assert set(a.state_dict()) == {"weight", "bias"}


CONVS = [
    nn.Conv2d(3, 8, 3),
    nn.Conv2d(3, 8, 5, stride=2, padding=2),
    nn.Conv2d(2, 4, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2)),
    nn.Conv2d(2, 4, 4, padding="same"),
    nn.Conv2d(2, 4, 3, padding="valid", bias=False),
    nn.Conv2d(1, 6, 7, stride=3, padding=3, dilation=1),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("conv", CONVS, ids=lambda c: repr(c).replace(" ", ""))
def test_from_conv2d_reproduces_the_convolution(conv, device):
    torch.manual_seed(0)
    conv = conv.double().to(device)
    size = (13, 11)
    lc = LocallyConnected2d.from_conv2d(conv, size)
    assert lc.weight.dtype == torch.float64 and lc.weight.device.type == device
    x = torch.randn(3, conv.in_channels, *size, dtype=torch.float64, device=device)
    torch.testing.assert_close(lc(x), conv(x), rtol=1e-12, atol=1e-12)
    # The filters are untied copies: changing one position leaves the conv and the other positions alone.
    with torch.no_grad():
        lc.weight[0, 0].add_(1.0)
    assert not torch.equal(lc.weight[0, 0], conv.weight) and torch.equal(lc.weight[-1, -1], conv.weight)


def test_from_conv2d_rejects_what_it_cannot_untie():
    with pytest.raises(ValueError, match="groups must be 1, got 2"):
        LocallyConnected2d.from_conv2d(nn.Conv2d(4, 4, 3, groups=2), 8)
    with pytest.raises(ValueError, match="padding_mode must be 'zeros', got 'reflect'"):
        LocallyConnected2d.from_conv2d(nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), 8)
    with pytest.raises(TypeError, match="expected an nn.Conv2d, got Linear"):
        LocallyConnected2d.from_conv2d(nn.Linear(3, 3), 8)


def test_bad_module_arguments():
    with pytest.raises(ValueError, match="in_channels must be a positive int, got 0"):
        LocallyConnected2d(0, 3, 8, 3)
    with pytest.raises(ValueError, match=r"kernel_size must be positive, got \(0, 3\)"):
        LocallyConnected2d(1, 3, 8, (0, 3))
    with pytest.raises(ValueError, match=r"LocallyConnected2d: the kernel spans 9x9 \(size 9x9, dilation 1x1\) which is "
                                         "larger than the padded input 8x8"):
        LocallyConnected2d(1, 3, 8, 9)
    with pytest.raises(ValueError, match=r"stride must be an int or a pair of ints, got \(1, 2, 3\)"):
        LocallyConnected2d(1, 3, 8, 3, stride=(1, 2, 3))
    lc = LocallyConnected2d(3, 4, 8, 3)
    with pytest.raises(RuntimeError, match="x has 2 channels but weight expects C_in=3"):
        lc(torch.randn(1, 2, 8, 8))
    with pytest.raises(RuntimeError, match="input 9x8 with kernel 3x3, stride 1x1 and dilation 1x1 gives a 7x6 output, "
                                           "but weight has 6x6 output positions"):
        lc(torch.randn(1, 3, 9, 8))


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph_parity(device):
    torch.manual_seed(0)
    model = nn.Sequential(LocallyConnected2d(1, 4, 12, 3, stride=2, padding="same"), nn.Tanh(),
                          LocallyConnected2d(4, 6, 6, 3, padding="valid"), nn.Flatten(), nn.Linear(6 * 16, 3)).to(device)
    x = torch.randn(5, 1, 12, 12, device=device)
    compiled = torch.compile(model, fullgraph=True)
    y_eager, y_comp = model(x), compiled(x)
    torch.testing.assert_close(y_comp, y_eager)
    g_eager = torch.autograd.grad(y_eager.square().sum(), list(model.parameters()))
    g_comp = torch.autograd.grad(compiled(x).square().sum(), list(model.parameters()))
    for a, b in zip(g_comp, g_eager):
        torch.testing.assert_close(a, b)
