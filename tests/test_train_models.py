"""Models of the training harness (bioplaus_kernels.train.models): the paper nets of Bartunov et al. 2018
(Table 3), their conv twins, ResNet-18, AlexNet-BN, user models, and the mismatch errors."""
import math
import sys

import pytest
import torch
from torch import nn

from bioplaus_kernels.nn import LocallyConnected2d
from bioplaus_kernels.train.errors import UsageError
from bioplaus_kernels.train.models import AlexNetBN, PAPER_NETS, build_model, paper_nets

SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32),
          "imagenet": (3, 224, 224)}
SMALL = ["digits", "mnist", "fashion-mnist", "cifar10"]


def _build(arch, dataset, num_classes=10):
    return build_model(arch, dataset=dataset, num_classes=num_classes, input_shape=SHAPES[dataset])


def _lc_layers(model):
    return [m for m in model if isinstance(m, LocallyConnected2d)]


@pytest.mark.parametrize("dataset", SMALL)
@pytest.mark.parametrize("arch", ["fc", "lc", "conv", "resnet18"])
def test_small_nets_forward(arch, dataset):
    torch.manual_seed(0)
    model = _build(arch, dataset, num_classes=7)
    y = model(torch.randn(3, *SHAPES[dataset]))
    assert y.shape == (3, 7) and torch.isfinite(y).all()
    y.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("arch", ["conv", "resnet18", "alexnet-bn"])
def test_imagenet_nets_forward(arch):
    model = _build(arch, "imagenet", num_classes=1000).eval()
    with torch.no_grad():
        y = model(torch.randn(2, 3, 224, 224))
    assert y.shape == (2, 1000) and torch.isfinite(y).all()


@pytest.mark.parametrize("dataset", SMALL)
@pytest.mark.parametrize("arch", ["fc", "lc"])
def test_paper_nets_structure_and_glorot_init(arch, dataset):
    """nn.Sequential of Flatten / LocallyConnected2d / Linear / Tanh (what target propagation needs), tanh after
    every hidden layer, the output Linear last, Glorot-uniform weights and zero biases."""
    model = _build(arch, dataset)
    assert isinstance(model, nn.Sequential)
    assert all(type(m) in (nn.Flatten, LocallyConnected2d, nn.Linear, nn.Tanh) for m in model)
    assert isinstance(model[-1], nn.Linear) and model[-1].out_features == 10
    layers = [m for m in model if isinstance(m, (LocallyConnected2d, nn.Linear))]
    assert len(layers) == len(PAPER_NETS[(arch, dataset)]) + 1
    children = list(model)
    for layer in layers[:-1]:
        assert isinstance(children[children.index(layer) + 1], nn.Tanh)
    for layer in layers:
        if isinstance(layer, nn.Linear):
            fan_in, fan_out = layer.in_features, layer.out_features
        else:
            k = layer.kernel_size[0] * layer.kernel_size[1]
            fan_in, fan_out = layer.in_channels * k, layer.out_channels * k
        bound = math.sqrt(6 / (fan_in + fan_out))
        w = layer.weight.detach()
        assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound  # fills the Glorot interval
        assert abs(w.std().item() - bound / math.sqrt(3)) < 0.1 * bound
        assert torch.all(layer.bias == 0)


def test_paper_net_sizes_match_the_paper():
    """docs/papers.md section 1.4 (derived from Table 3): LC weights MNIST 0.96 M, CIFAR 33.2 M, ImageNet 241 M;
    FC widths."""
    lc_weights = lambda m: sum(l.weight.numel() for l in _lc_layers(m))  # noqa: E731
    assert round(lc_weights(_build("lc", "mnist")) / 1e6, 2) == 0.96
    assert round(lc_weights(_build("lc", "cifar10")) / 1e6, 1) == 33.2
    with torch.device("meta"):  # 241 M weights: geometry only, nothing allocated
        imagenet = _build("lc", "imagenet", num_classes=1000)
    assert round(lc_weights(imagenet) / 1e6) == 241
    lcs = _lc_layers(imagenet)
    assert [l.output_size for l in lcs] == [(56, 56), (28, 28), (28, 28), (14, 14), (14, 14), (7, 7), (7, 7)]
    assert lcs[2].weight.numel() == 28 * 28 * 96 * 48 * 25  # the 5x5 layer alone: 90 M
    assert imagenet[-1].in_features == 384 * 7 * 7 and imagenet[-1].out_features == 1000
    assert imagenet(torch.empty(2, 3, 224, 224, device="meta")).shape == (2, 1000)
    fc = _build("fc", "mnist")
    assert [m.out_features for m in fc if isinstance(m, nn.Linear)] == [256] * 5 + [10]
    fc = _build("fc", "cifar10")
    assert [(m.in_features, m.out_features) for m in fc if isinstance(m, nn.Linear)] == \
        [(3072, 1024), (1024, 1024), (1024, 1024), (1024, 10)]


@pytest.mark.slow
def test_imagenet_lc_net_builds_and_runs():
    """The real 241 M-weight net (about 1 GB in float32): one image through it."""
    model = _build("lc", "imagenet", num_classes=1000)
    with torch.no_grad():
        y = model(torch.randn(1, 3, 224, 224))
    assert y.shape == (1, 1000) and torch.isfinite(y).all()


@pytest.mark.parametrize("dataset", ["digits", "mnist", "cifar10"])
def test_conv_twin_has_the_lc_geometry(dataset):
    """With every LC position given the conv's shared filter (and bias), the LC net computes the conv net's
    outputs: same kernels, strides, SAME padding (asymmetric where TensorFlow's is) and layer widths."""
    torch.manual_seed(0)
    conv, lc = _build("conv", dataset), _build("lc", dataset)
    convs = [m for m in conv if isinstance(m, nn.Conv2d)]
    assert len(convs) == len(_lc_layers(lc))
    with torch.no_grad():
        for c, l in zip(convs, _lc_layers(lc)):
            l.weight.copy_(c.weight.expand_as(l.weight))
            l.bias.copy_(c.bias[:, None, None].expand_as(l.bias))
        for a, b in zip([m for m in conv if isinstance(m, nn.Linear)], [m for m in lc if isinstance(m, nn.Linear)]):
            a.weight.copy_(b.weight)
            a.bias.copy_(b.bias)
        x = torch.randn(4, *SHAPES[dataset])
        torch.testing.assert_close(conv(x), lc(x), rtol=1e-4, atol=1e-5)
    assert [type(m) for m in conv if not isinstance(m, (nn.Conv2d, nn.ZeroPad2d))] == \
        [type(m) for m in lc if not isinstance(m, LocallyConnected2d)]


def test_alexnet_bn_has_batchnorm_before_every_relu_and_no_dropout():
    model = _build("alexnet-bn", "imagenet", num_classes=1000)
    assert isinstance(model, AlexNetBN)
    mods = list(model.modules())
    assert not any(isinstance(m, nn.Dropout) for m in mods)
    seq = list(model.features) + list(model.classifier)
    relus = [i for i, m in enumerate(seq) if isinstance(m, nn.ReLU)]
    assert len(relus) == 7 and all(isinstance(seq[i - 1], (nn.BatchNorm2d, nn.BatchNorm1d)) for i in relus)
    assert sum(isinstance(m, nn.Conv2d) for m in mods) == 5 and sum(isinstance(m, nn.Linear) for m in mods) == 3
    # 63 x 63 is the smallest input AlexNet's stride-4 stem and three max-pools accept
    small = build_model("alexnet-bn", dataset="custom", num_classes=5, input_shape=(3, 63, 63)).eval()
    assert small(torch.randn(1, 3, 63, 63)).shape == (1, 5)


def test_resnet18_is_torchvisions_with_a_small_image_stem():
    big = _build("resnet18", "imagenet", num_classes=1000)
    assert big.conv1.kernel_size == (7, 7) and isinstance(big.maxpool, nn.MaxPool2d)
    small = _build("resnet18", "mnist")
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1) and small.conv1.in_channels == 1
    assert isinstance(small.maxpool, nn.Identity) and small.fc.out_features == 10


# ------------------------------------------------------------------------------------------------ user models

USER_FILE = '''
import torch.nn as nn

def make(num_classes, input_shape):
    c, h, w = input_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, num_classes))

def not_a_model(num_classes, input_shape):
    return 42

def broken(num_classes, input_shape):
    raise RuntimeError("boom")
'''


def test_user_model_from_file_and_module(tmp_path, monkeypatch):
    path = tmp_path / "my_models.py"
    path.write_text(USER_FILE)
    model = build_model(f"{path}:make", dataset="cifar10", num_classes=4, input_shape=(3, 32, 32))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_models", raising=False)
    model = build_model("my_models:make", dataset="digits", num_classes=10, input_shape=(1, 8, 8))
    assert model[1].in_features == 64


def test_user_model_errors(tmp_path):
    path = tmp_path / "my_models.py"
    path.write_text(USER_FILE)
    kw = dict(dataset="digits", num_classes=10, input_shape=(1, 8, 8))
    with pytest.raises(UsageError, match="file .*nowhere.py not found"):
        build_model(f"{tmp_path}/nowhere.py:make", **kw)
    with pytest.raises(UsageError, match="has no callable named 'missing'"):
        build_model(f"{path}:missing", **kw)
    with pytest.raises(UsageError, match="returned int, not a torch.nn.Module"):
        build_model(f"{path}:not_a_model", **kw)
    with pytest.raises(UsageError, match=r"calling broken\(num_classes=10, input_shape=\(1, 8, 8\)\) failed: "
                                         r"RuntimeError: boom"):
        build_model(f"{path}:broken", **kw)
    with pytest.raises(UsageError, match="cannot import module no_such_package_xyz"):
        build_model("no_such_package_xyz.models:make", **kw)
    with pytest.raises(UsageError, match="unexpected keyword argument 'input_shape'"):
        build_model("torchvision.models:resnet18", **kw)  # not written for this calling convention
    bad = tmp_path / "bad.py"
    bad.write_text("def make(:\n")
    with pytest.raises(UsageError, match="loading .*bad.py failed: SyntaxError"):
        build_model(f"{bad}:make", **kw)
    with pytest.raises(UsageError, match="expected path/to/file.py:callable or package.module:callable"):
        build_model("my_models:", **kw)


# ------------------------------------------------------------------------------------------------ mismatches

def test_mismatch_errors():
    with pytest.raises(UsageError, match=r"the paper has no fc net for imagenet \(it has fc nets for cifar10, "
                                         r"digits, fashion-mnist, mnist\)"):
        _build("fc", "imagenet", num_classes=1000)
    with pytest.raises(UsageError, match=r"the lc net for mnist takes inputs of shape \(1, 28, 28\), "
                                         r"got \(3, 32, 32\)"):
        build_model("lc", dataset="mnist", num_classes=10, input_shape=(3, 32, 32))
    with pytest.raises(UsageError, match=r"the conv net for cifar10 takes inputs of shape \(3, 32, 32\)"):
        build_model("conv", dataset="cifar10", num_classes=10, input_shape=(3, 28, 28))
    with pytest.raises(UsageError, match="the paper has no lc net for svhn"):
        build_model("lc", dataset="svhn", num_classes=10, input_shape=(3, 32, 32))
    with pytest.raises(UsageError, match="alexnet-bn needs inputs of at least 63x63 pixels .*got 32x32"):
        _build("alexnet-bn", "cifar10")
    with pytest.raises(UsageError, match="unknown architecture 'vgg16'; choose one of fc, lc, conv, resnet18, "
                                         "alexnet-bn or give a user model"):
        _build("vgg16", "mnist")
    with pytest.raises(UsageError, match=r"input_shape must be \(C, H, W\)"):
        build_model("fc", dataset="mnist", num_classes=10, input_shape=(784,))


def test_paper_nets_listing():
    lines = paper_nets()
    assert "fc mnist: FC256, FC256, FC256, FC256, FC256, softmax" in lines
    assert "lc cifar10: LC(5x5,64,2), LC(5x5,128,2), LC(3x3,256,1), FC1024, softmax" in lines
    assert any(line.startswith("lc imagenet: LC(9x9,48,4)") for line in lines)
    assert not any(line.startswith("fc imagenet") for line in lines)


def test_user_file_with_a_dataclass_loads(tmp_path):
    """The file is registered as a module while it runs (dataclasses look their module up in sys.modules)."""
    path = tmp_path / "dc_model.py"
    path.write_text("from __future__ import annotations\nimport dataclasses\nimport torch.nn as nn\n\n"
                    "@dataclasses.dataclass\nclass Cfg:\n    width: int = 5\n\n"
                    "def make(num_classes, input_shape):\n"
                    "    return nn.Sequential(nn.Flatten(), nn.Linear(64, Cfg().width), nn.Linear(5, num_classes))\n")
    model = build_model(f"{path}:make", dataset="digits", num_classes=3, input_shape=(1, 8, 8))
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 3)
