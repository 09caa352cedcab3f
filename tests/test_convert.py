"""convert(): identical forwards, exclusion, the last layer, seeds and streams, untying, torchvision models."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bioplaus_kernels
from bioplaus_kernels import convert
from bioplaus_kernels.nn import Conv2d, Linear, LocallyConnected2d

from conftest import DEVICES

torchvision = pytest.importorskip("torchvision")


def small_cnn():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, stride=2, padding="valid", bias=False), nn.Tanh(),
        nn.Flatten(), nn.Linear(8 * 3 * 3, 16), nn.Tanh(), nn.Linear(16, 5))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rule", ["bp", "fa", "usf", "frsf", "brsf", "dfa"])
@pytest.mark.parametrize("seed", [None, 3])
def test_forward_outputs_identical_with_copied_weights(rule, seed, device):
    torch.manual_seed(0)
    net = small_cnn().eval().to(device)
    x = torch.randn(4, 3, 14, 14, device=device)
    want = net(x)
    got = convert(copy.deepcopy(net), rule, seed=seed, output_dim=5, last_layer="convert")
    assert torch.equal(got(x), want)
    F.cross_entropy(got(x), torch.arange(4, device=device)).backward()
    assert all(p.grad is not None for p in got.parameters())
    kinds = [type(m) for m in got.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert kinds == [Conv2d, Conv2d, Linear, Linear]


def test_in_place_last_layer_and_exclude():
    torch.manual_seed(1)
    net = small_cnn()
    out = convert(net, "usf")
    assert out is net  # in place
    assert [m.feedback for m in net.modules() if isinstance(m, (Linear, Conv2d))] == ["usf", "usf", "usf", "bp"]
    net = convert(small_cnn(), "fa", last_layer="convert", exclude=["0", nn.Linear])
    assert type(net[0]) is nn.Conv2d and type(net[7]) is nn.Linear and type(net[9]) is nn.Linear
    assert net[4].feedback == "fa"
    net = convert(small_cnn(), "frsf", exclude="[47]")  # fnmatch patterns
    assert type(net[4]) is nn.Conv2d and type(net[7]) is nn.Linear and net[0].feedback == "frsf"


def test_attention_projections_are_left_alone():
    net = nn.Sequential(nn.Linear(8, 8))
    net.attn = nn.MultiheadAttention(8, 2)
    convert(net, "usf", last_layer="convert")
    assert isinstance(net[0], Linear) and type(net.attn.out_proj) is not Linear


def test_seed_gives_streams_and_no_storage():
    torch.manual_seed(2)
    net = convert(small_cnn(), "fa", seed=5, last_layer="convert")
    layers = [m for m in net.modules() if isinstance(m, (Linear, Conv2d))]
    assert [m.stream for m in layers] == [0, 1, 2, 3]
    assert all(m.seed == 5 and m.feedback_matrix is None for m in layers)
    assert not any("feedback_matrix" in k for k in net.state_dict())
    stored = convert(small_cnn(), "fa", last_layer="convert")
    assert all(m.feedback_matrix is not None for m in stored.modules() if isinstance(m, (Linear, Conv2d)))


def test_copy_weights_false_keeps_fresh_weights_and_flags():
    torch.manual_seed(3)
    net = small_cnn()
    net[7].weight.requires_grad_(False)
    net.eval()
    old = net[7].weight.detach().clone()
    convert(net, "usf", copy_weights=False)
    assert not torch.equal(net[7].weight, old)
    assert not net[7].weight.requires_grad and not net[7].training


def test_untie_finds_input_sizes_by_a_dry_run():
    torch.manual_seed(4)
    net = small_cnn().eval()
    x = torch.randn(2, 3, 14, 14)
    want = net(x)
    lc = convert(copy.deepcopy(net), "fa", seed=1, untie=True, input_size=(3, 14, 14))
    assert isinstance(lc[0], LocallyConnected2d) and lc[0].input_size == (14, 14) and lc[0].feedback == "fa"
    assert isinstance(lc[4], LocallyConnected2d) and lc[4].input_size == (7, 7)
    assert not lc.training  # training flags restored after the dry run
    torch.testing.assert_close(lc(x), want, rtol=1e-4, atol=1e-5)
    lc.train()
    F.cross_entropy(lc(x), torch.tensor([0, 1])).backward()
    assert lc[0].weight.grad is not None


def test_errors():
    net = small_cnn()
    with pytest.raises(ValueError, match="convert: feedback: unknown feedback rule 'sf'"):
        convert(net, "sf")
    with pytest.raises(ValueError, match="feedback='dfa' needs output_dim"):
        convert(net, "dfa")
    with pytest.raises(ValueError, match="untie=True needs input_size"):
        convert(net, "fa", untie=True)
    with pytest.raises(ValueError, match="last_layer must be 'bp' or 'convert', got 'keep'"):
        convert(net, "fa", last_layer="keep")
    with pytest.raises(ValueError, match="layer '0': Conv2d: feedback='usf' supports padding_mode='zeros' only"):
        convert(nn.Sequential(nn.Conv2d(3, 3, 3, padding=1, padding_mode="circular"), nn.Conv2d(3, 3, 1)), "usf")

    class Skip(nn.Module):  # its second conv never runs
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return self.a(x)
    with pytest.raises(ValueError, match="did not run the Conv2d 'b'"):
        convert(Skip(), "fa", untie=True, input_size=(3, 4, 4))


def _train_step(model, loss_fn):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss = loss_fn(model)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    opt.step()
    return loss, grads


def _record_layer_gradients(layer):
    """Hooks that record, for every call of `layer`: its input, the rule's B at that step (materialised by the
    pure-PyTorch reference from the layer's spec: reference.feedback_source, its own Philox), and the
    gradients reaching its input and output. The layer's input must have no other consumer, so that its
    gradient is the layer's alone."""
    calls = []

    def hook(module, inputs, output):
        B = bioplaus_kernels.reference.feedback_source(module.weight.detach().clone(), **module._spec().kwargs())
        call = {"x": inputs[0].detach(), "B": B}
        inputs[0].register_hook(lambda g: call.__setitem__("gx", g))
        output.register_hook(lambda g: call.__setitem__("gy", g))
        calls.append(call)

    return calls, layer.register_forward_hook(hook)


def _assert_conv_input_gradients(layer, calls):
    """grad_x of every call = grad_y through that call's B, by torch's convolution input gradient."""
    assert calls and all("gx" in c and "gy" in c for c in calls)
    for c in calls:
        want = torch.nn.grad.conv2d_input(c["x"].shape, c["B"], c["gy"], layer.stride, layer.padding,
                                          layer.dilation, layer.groups)
        torch.testing.assert_close(c["gx"], want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


@pytest.mark.parametrize("rule", ["usf", "brsf", "dfa"])
def test_resnet18_converted(rule):
    torch.manual_seed(5)
    original = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    model = convert(copy.deepcopy(original), rule, seed=7, output_dim=10)
    assert sum(isinstance(m, Conv2d) for m in model.modules()) == 20
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])
    with torch.no_grad():
        assert torch.equal(model(x), original(x))  # the same forward (BN in eval mode: running statistics)
    if rule == "dfa":  # a layer's input gradient is the output error's projection there (test_dfa.py)
        loss, grads = _train_step(model, lambda m: F.cross_entropy(m(x), y))
        assert torch.isfinite(loss) and all(g is not None and torch.isfinite(g).all() for g in grads)
        return
    # conv2 of the last block: its input (relu(bn1(conv1))) has no other consumer
    layer = model.layer4[1].conv2
    calls, handle = _record_layer_gradients(layer)
    loss, grads = _train_step(model, lambda m: F.cross_entropy(m(x), y))
    handle.remove()
    assert torch.isfinite(loss) and all(g is not None and torch.isfinite(g).all() for g in grads)
    _assert_conv_input_gradients(layer, calls)


def test_alexnet_untied_converted():
    torch.manual_seed(6)
    original = torchvision.models.alexnet(weights=None, num_classes=10).eval()  # no dropout
    model = convert(copy.deepcopy(original), "frsf", seed=1, untie=True, input_size=(3, 64, 64))
    lcs = [m for m in model.modules() if isinstance(m, LocallyConnected2d)]
    assert len(lcs) == 5
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([3, 4])
    with torch.no_grad():  # untied from the shared filters: the same function, summed in another order
        want = original(x)
        torch.testing.assert_close(model(x), want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
    layer = lcs[1]  # its input (a max-pool's output) has no other consumer
    calls, handle = _record_layer_gradients(layer)
    loss, grads = _train_step(model, lambda m: F.cross_entropy(m(x), y))
    handle.remove()
    assert torch.isfinite(loss) and all(g is not None for g in grads)
    (c,) = calls
    x64 = c["x"].double().requires_grad_()
    y64 = bioplaus_kernels.reference.lc2d.lc2d(x64, c["B"].double(), None, layer.stride, layer.padding, layer.dilation)
    (want_gx,) = torch.autograd.grad(y64, x64, c["gy"].double())
    torch.testing.assert_close(c["gx"].double(), want_gx, rtol=1e-4, atol=1e-4 * want_gx.abs().max().item())


def test_retinanet_converted():
    torch.manual_seed(7)
    original = torchvision.models.detection.retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3,
                                                                   min_size=64, max_size=64)
    model = convert(copy.deepcopy(original), "usf", seed=2)
    assert sum(isinstance(m, Conv2d) for m in model.modules()) > 50
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 30.0, 40.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[10.0, 8.0, 50.0, 60.0]]), "labels": torch.tensor([2])}]
    model.train(), original.train()
    with torch.no_grad():
        got, want = model(images, targets), original(images, targets)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)  # the same losses
    # the second conv of the classification head: called once per FPN level, its input only its own
    layer = model.head.classification_head.conv[1][0]
    calls, handle = _record_layer_gradients(layer)
    loss, _ = _train_step(model, lambda m: sum(m(images, targets).values()))
    handle.remove()
    assert torch.isfinite(loss) and len(calls) == 5
    _assert_conv_input_gradients(layer, calls)


def test_exported_from_the_package():
    assert bioplaus_kernels.convert is convert


@pytest.mark.parametrize("rule", ["bp", "fa", "usf", "frsf", "brsf", "dfa"])
def test_every_rule_learns_the_digits(rule):
    """The plain loop (loss.backward(); opt.step()) trains a converted MLP under every rule (real data)."""
    datasets = pytest.importorskip("sklearn.datasets")
    d = datasets.load_digits()
    X, Y = torch.tensor(d.data, dtype=torch.float32) / 16, torch.tensor(d.target)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10))
    model = convert(net, rule, output_dim=10, last_layer="convert", seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    with torch.no_grad():
        before = F.cross_entropy(model(X), Y).item()
    for _ in range(60):
        idx = torch.randint(0, len(X), (64,))
        loss = F.cross_entropy(model(X[idx]), Y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = F.cross_entropy(model(X), Y).item()
        accuracy = (model(X).argmax(1) == Y).float().mean().item()
    assert after < 0.5 * before and accuracy > 0.7, (before, after, accuracy)
