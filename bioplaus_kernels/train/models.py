"""Models of the training harness: the paper nets, their convolutional twins, ResNet-18, AlexNet-BN, user models.

``build_model(arch, dataset=..., num_classes=..., input_shape=...)``; ``arch`` is one of

- ``"fc"`` / ``"lc"``: the fully / locally connected nets of Bartunov et al. 2018 (appendix Table 3), as an
  ``nn.Sequential`` of ``nn.Flatten``, ``bioplaus_kernels.nn.LocallyConnected2d`` (SAME padding,
  out = ceil(in / stride)), ``nn.Linear`` and ``nn.Tanh``, the last child the output Linear (logits; the
  softmax lives in the cross-entropy loss). Glorot-uniform weights and zero biases, as in the paper.
  ``digits`` (8x8x1) has no paper net; its scaled nets are listed in :data:`PAPER_NETS`.
- ``"conv"``: the same layout with shared weights (the paper's "BP ConvNet"): every LC layer becomes an
  ``nn.Conv2d`` with the same kernel, stride and channels; SAME padding (see :func:`_conv_same`).
- ``"resnet18"``: ``torchvision.models.resnet18(weights=None, num_classes=...)``; for inputs smaller than 64
  pixels (digits, MNIST, CIFAR) the stem is the usual small-image variant: a 3x3 stride-1 first convolution
  and no max-pool (a 7x7/2 conv + pool would shrink 32x32 to 8x8 before the first block). Inputs with other
  than 3 channels get a first convolution with that many input channels.
- ``"alexnet-bn"``: AlexNet (torchvision's layout) with BatchNorm before every ReLU and no dropout (Xiao et al.
  2019). ImageNet-sized inputs only (it needs 63x63 pixels or more).
- ``"path/to/file.py:callable"`` or ``"package.module:callable"``: a user's model, called as
  ``callable(num_classes=..., input_shape=(C, H, W))``; it must return an ``nn.Module``.

Architectures that do not fit (no paper net for the dataset, wrong input size, a missing callable) raise
:class:`UsageError` with one line.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Dict, List, Sequence, Tuple, Union

import torch
from torch import nn

from .._geometry import resolve_padding
from ..nn import LocallyConnected2d
from .errors import UsageError

#: LC(kernel, channels, stride) layers, then FC widths; softmax layer implicit (num_classes).
Layer = Union[Tuple[str, int, int, int], Tuple[str, int]]

#: The paper nets (Bartunov et al. 2018, appendix Table 3) and the scaled digits nets, keyed by (arch, dataset).
#: ("lc", k, c, s) is LC(k x k, c channels, stride s) with SAME padding; ("fc", n) a Linear of n units; every
#: hidden layer is followed by tanh; the output Linear (num_classes) is appended.
#: digits (8x8x1, 1437 training images) is scaled down: three tanh layers of 128 units, and two stride-2 LC
#: layers (8 -> 4 -> 2 pixels) with 16 and 32 channels, then 256 units, mirroring the MNIST nets' shapes.
PAPER_NETS: Dict[Tuple[str, str], List[Layer]] = {
    ("fc", "digits"): [("fc", 128)] * 3,
    ("lc", "digits"): [("lc", 3, 16, 2), ("lc", 3, 32, 2), ("fc", 256)],
    ("fc", "mnist"): [("fc", 256)] * 5,
    ("lc", "mnist"): [("lc", 3, 32, 2), ("lc", 3, 64, 2), ("fc", 1024)],
    ("fc", "cifar10"): [("fc", 1024)] * 3,
    ("lc", "cifar10"): [("lc", 5, 64, 2), ("lc", 5, 128, 2), ("lc", 3, 256, 1), ("fc", 1024)],
    ("lc", "imagenet"): [("lc", 9, 48, 4), ("lc", 3, 48, 2), ("lc", 5, 96, 1), ("lc", 3, 96, 2),
                         ("lc", 3, 192, 1), ("lc", 3, 192, 2), ("lc", 3, 384, 1)],
}
PAPER_NETS[("fc", "fashion-mnist")] = PAPER_NETS[("fc", "mnist")]
PAPER_NETS[("lc", "fashion-mnist")] = PAPER_NETS[("lc", "mnist")]

#: the input shape each paper net was designed for
PAPER_INPUT_SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28),
                      "cifar10": (3, 32, 32), "imagenet": (3, 224, 224)}

BUILTIN_ARCHS = ("fc", "lc", "conv", "resnet18", "alexnet-bn")


def paper_nets() -> List[str]:
    """One line per built-in net, for --help texts: ``"<arch> <dataset>: <layers>"``."""
    lines = []
    for (arch, dataset), layers in PAPER_NETS.items():
        lines.append(f"{arch} {dataset}: {describe(layers)}")
        if arch == "lc":
            lines.append(f"conv {dataset}: the same with shared weights (Conv2d)")
    lines.append("resnet18: torchvision ResNet-18 (small-image stem below 64 pixels)")
    lines.append("alexnet-bn: AlexNet with BatchNorm before every ReLU, no dropout (ImageNet-sized inputs)")
    return lines


def describe(layers: Sequence[Layer]) -> str:
    parts = [f"LC({l[1]}x{l[1]},{l[2]},{l[3]})" if l[0] == "lc" else f"FC{l[1]}" for l in layers]
    return ", ".join(parts) + ", softmax"


def build_model(arch: str, *, dataset: str, num_classes: int, input_shape: Sequence[int]) -> nn.Module:
    """The model ``arch`` for ``dataset`` (see the module docstring); ``input_shape`` is (C, H, W)."""
    input_shape = tuple(int(v) for v in input_shape)
    if len(input_shape) != 3:
        raise UsageError(f"input_shape must be (C, H, W), got {input_shape}")
    if ":" in arch:
        return _user_model(arch, num_classes, input_shape)
    if arch in ("fc", "lc", "conv"):
        return _paper_net(arch, dataset, num_classes, input_shape)
    if arch == "resnet18":
        return _resnet18(num_classes, input_shape)
    if arch == "alexnet-bn":
        return _alexnet_bn(num_classes, input_shape)
    raise UsageError(f"unknown architecture {arch!r}; choose one of {', '.join(BUILTIN_ARCHS)} "
                     f"or give a user model as path/to/file.py:callable or package.module:callable")


# ------------------------------------------------------------------------------------------------- paper nets

def _paper_net(arch: str, dataset: str, num_classes: int, input_shape: Tuple[int, int, int]) -> nn.Sequential:
    key = ("lc" if arch == "conv" else arch, dataset)
    if key not in PAPER_NETS:
        have = sorted({d for a, d in PAPER_NETS if a == key[0]})
        raise UsageError(f"the paper has no {arch} net for {dataset} (it has {arch} nets for {', '.join(have)})")
    expected = PAPER_INPUT_SHAPES[dataset]
    if input_shape != expected:
        raise UsageError(f"the {arch} net for {dataset} takes inputs of shape {expected}, got {input_shape}")
    layers: List[nn.Module] = []
    c, h, w = input_shape
    flat = None  # feature count once flattened
    for spec in PAPER_NETS[key]:
        if spec[0] == "lc":
            _, k, out_c, s = spec
            if arch == "conv":
                layers += _conv_same(c, out_c, (h, w), k, s)
            else:
                layers.append(LocallyConnected2d(c, out_c, (h, w), k, s, padding="same"))
            c, h, w = out_c, -(-h // s), -(-w // s)
        else:
            if flat is None:
                layers.append(nn.Flatten())
                flat = c * h * w
            layers.append(nn.Linear(flat, spec[1]))
            flat = spec[1]
        layers.append(nn.Tanh())
    if flat is None:
        layers.append(nn.Flatten())
        flat = c * h * w
    layers.append(nn.Linear(flat, num_classes))
    model = nn.Sequential(*layers)
    _glorot(model)
    return model


def _conv_same(in_c: int, out_c: int, size: Tuple[int, int], k: int, s: int) -> List[nn.Module]:
    """A Conv2d with TensorFlow SAME geometry (out = ceil(in / stride), the odd pad row/column at the
    bottom/right), i.e. exactly the LC layer's sampling grid. Symmetric pads go into the Conv2d; otherwise an
    ``nn.ZeroPad2d`` with the asymmetric pads comes first (torch's padding="same" only allows stride 1)."""
    top, bottom, left, right = resolve_padding("same", size, (k, k), (s, s), (1, 1))
    if top == bottom and left == right:
        return [nn.Conv2d(in_c, out_c, k, s, padding=(top, left))]
    return [nn.ZeroPad2d((left, right, top, bottom)), nn.Conv2d(in_c, out_c, k, s, padding=0)]


def _glorot(model: nn.Module) -> None:
    """Glorot-uniform weights and zero biases (Bartunov et al. 2018 initialise every layer this way);
    LocallyConnected2d initialises itself the same way with the convolution fans."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


# ------------------------------------------------------------------------------------------- resnet / alexnet

def _resnet18(num_classes: int, input_shape: Tuple[int, int, int]) -> nn.Module:
    from torchvision.models import resnet18

    model = resnet18(weights=None, num_classes=num_classes)
    c, h, w = input_shape
    if min(h, w) < 64:
        model.conv1 = nn.Conv2d(c, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif c != 3:
        model.conv1 = nn.Conv2d(c, 64, kernel_size=7, stride=2, padding=3, bias=False)
    if c != 3 or min(h, w) < 64:
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


def _alexnet_bn(num_classes: int, input_shape: Tuple[int, int, int]) -> nn.Module:
    c, h, w = input_shape
    if min(h, w) < 63:
        raise UsageError(f"alexnet-bn needs inputs of at least 63x63 pixels (ImageNet-sized), got {h}x{w}")
    return AlexNetBN(num_classes, in_channels=c)


class AlexNetBN(nn.Module):
    """AlexNet (torchvision's single-tower layout: convs 64-192-384-256-256, classifier 4096-4096) with a
    BatchNorm before every ReLU (BatchNorm2d after each conv, BatchNorm1d after each hidden Linear) and no
    dropout, as in Xiao et al. 2019. Conv and hidden Linear layers have no bias (BatchNorm supplies it)."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()

        def conv(i: int, o: int, k: int, s: int = 1, p: int = 0) -> List[nn.Module]:
            return [nn.Conv2d(i, o, k, s, p, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]

        def fc(i: int, o: int) -> List[nn.Module]:
            return [nn.Linear(i, o, bias=False), nn.BatchNorm1d(o), nn.ReLU(inplace=True)]

        pool = lambda: nn.MaxPool2d(kernel_size=3, stride=2)  # noqa: E731
        self.features = nn.Sequential(*conv(in_channels, 64, 11, 4, 2), pool(), *conv(64, 192, 5, p=2), pool(),
                                      *conv(192, 384, 3, p=1), *conv(384, 256, 3, p=1), *conv(256, 256, 3, p=1),
                                      pool())
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(*fc(256 * 6 * 6, 4096), *fc(4096, 4096), nn.Linear(4096, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# ------------------------------------------------------------------------------------------------ user models

def _user_model(spec: str, num_classes: int, input_shape: Tuple[int, int, int]) -> nn.Module:
    """``path/to/file.py:callable`` (loaded from the file) or ``package.module:callable`` (imported)."""
    where, _, name = spec.rpartition(":")
    if not where or not name:
        raise UsageError(f"user model {spec!r}: expected path/to/file.py:callable or package.module:callable")
    if where.endswith(".py") or os.sep in where or "/" in where:
        if not os.path.isfile(where):
            raise UsageError(f"user model {spec!r}: file {where} not found")
        module_name = "bioplaus_user_model_" + os.path.splitext(os.path.basename(where))[0]
        loader_spec = importlib.util.spec_from_file_location(module_name, where)
        module = importlib.util.module_from_spec(loader_spec)
        # registered like an imported module, so that dataclasses and pickling inside the file work
        sys.modules[module_name] = module
        try:
            loader_spec.loader.exec_module(module)
        except Exception as e:  # the user's file: report its error on one line
            del sys.modules[module_name]
            raise UsageError(f"user model {spec!r}: loading {where} failed: {type(e).__name__}: {e}") from e
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise UsageError(f"user model {spec!r}: cannot import module {where}: {e}") from e
    fn = getattr(module, name, None)
    if not callable(fn):
        raise UsageError(f"user model {spec!r}: {where} has no callable named {name!r}")
    try:
        model = fn(num_classes=num_classes, input_shape=input_shape)
    except Exception as e:
        raise UsageError(f"user model {spec!r}: calling {name}(num_classes={num_classes}, "
                         f"input_shape={input_shape}) failed: {type(e).__name__}: {e}") from e
    if not isinstance(model, nn.Module):
        raise UsageError(f"user model {spec!r}: {name}(...) returned {type(model).__name__}, not a torch.nn.Module")
    return model
