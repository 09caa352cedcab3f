"""The feedback rules as one small vocabulary: a rule name plus a layer's fans -> the feedback spec that the
input-gradient kernels take (``feedback, seed, stream, step, distribution, scale``; see
``bioplaus_kernels.ops.linear_backward_input``).

Rules (the matrix B that replaces W in the input gradient ``grad_x = grad_y @ B``):

========  =====================================  ===========================================================
rule      B                                      spec
========  =====================================  ===========================================================
"bp"      W                                      ``feedback="weight"`` (the module uses torch's own backward)
"fa"      fixed random R                         stored: a buffer passed as the weight of the backward;
                                                 seeded: ``feedback="random"``, step 0 (regenerated, not stored)
"usf"     s * sign(W), of the current W          ``feedback="sign"``, ``scale=s``
"frsf"    |R| * sign(W), R fixed                 ``feedback="random_sign"``, step 0
"brsf"    |R_t| * sign(W), R_t redrawn each step ``feedback="random_sign"``, step = the module's step counter
"dfa"     model level: e @ B_l to every layer    ``bioplaus_kernels.convert(model, "dfa", output_dim=...)``
========  =====================================  ===========================================================

R is ``philox(weight.shape, seed, stream, step, distribution, scale)``: seed from the user (or drawn from
torch's generator), stream = the layer id, so one seed gives every layer of a model its own matrix.

Scales (``scale=``; the same choice sets the distribution of R and the magnitude s of "usf"):

* ``"glorot"`` (default; Bartunov et al. 2018 initialise every matrix so): R ~ U(-a, a) with
  ``a = sqrt(6 / (fan_in + fan_out))``; "usf" uses ``s = a / sqrt(3) = sqrt(2 / (fan_in + fan_out))``, the
  RMS of that distribution, so that every rule's B has the RMS of a Glorot-initialised W.
* ``"xiao"`` (Xiao et al. 2019, sign-symmetry code): convolutions and locally connected layers
  ``s = sqrt(2 / (kH * kW * C_out))`` with R ~ N(0, s^2); Linear ``s = 1 / sqrt(in_features)`` with
  R ~ U(-s, s); "usf" uses s itself.
* a positive float s: R ~ U(-s, s), and "usf" uses s.

Fans follow torch's convention: Linear ``(in_features, out_features)``; Conv2d and LC
``(C_in/groups * kH * kW, C_out * kH * kW)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Tuple, Union

import torch

RULES = ("bp", "fa", "usf", "frsf", "brsf", "dfa")
#: the rules a single module implements; "dfa" needs the model's output error (see nn.dfa).
LAYER_RULES = ("bp", "fa", "usf", "frsf", "brsf")
SCALES = ("glorot", "xiao")

Scale = Union[str, float]


def check_rule(rule: object, allowed: Tuple[str, ...] = RULES, where: str = "feedback") -> str:
    """``rule`` if it is one of ``allowed``; a ValueError naming the choices otherwise."""
    if isinstance(rule, str) and rule in allowed:
        return rule
    if rule == "dfa":
        raise ValueError(f"{where}: 'dfa' is a model-level rule (every layer needs the output error); use "
                         "bioplaus_kernels.convert(model, 'dfa', output_dim=...)")
    raise ValueError(f"{where}: unknown feedback rule {rule!r}; expected one of {', '.join(map(repr, allowed))}")


def check_scale(scale: object, where: str = "scale") -> Scale:
    if isinstance(scale, str) and scale in SCALES:
        return scale
    if isinstance(scale, (int, float)) and not isinstance(scale, bool) and scale > 0 and math.isfinite(scale):
        return float(scale)
    raise ValueError(f"{where}: expected 'glorot', 'xiao' or a positive float, got {scale!r}")


@dataclass(frozen=True)
class Fans:
    """What the scales need to know about a layer: its fans and, for "xiao", its kind."""
    fan_in: int
    fan_out: int
    kind: str  # "linear" or "conv" (Conv2d and LocallyConnected2d)
    receptive: int = 1  # kH * kW
    out_channels: int = 0

    @staticmethod
    def linear(in_features: int, out_features: int) -> "Fans":
        return Fans(in_features, out_features, "linear")

    @staticmethod
    def conv(in_per_group: int, out_channels: int, kernel_size: Tuple[int, int]) -> "Fans":
        r = int(kernel_size[0]) * int(kernel_size[1])
        return Fans(in_per_group * r, out_channels * r, "conv", r, out_channels)


def magnitude(rule: str, scale: Scale, fans: Fans) -> Tuple[str, float]:
    """(distribution, scale) of the spec for ``rule`` on a layer with ``fans`` (module docstring)."""
    if isinstance(scale, float):
        return "uniform", scale
    if scale == "glorot":
        a = math.sqrt(6.0 / (fans.fan_in + fans.fan_out))
        return "uniform", (a / math.sqrt(3.0) if rule == "usf" else a)
    if fans.kind == "conv":  # "xiao"
        return "normal", math.sqrt(2.0 / (fans.receptive * fans.out_channels))
    return "uniform", 1.0 / math.sqrt(fans.fan_in)


@dataclass(frozen=True)
class FeedbackSpec:
    """The keyword arguments of the input-gradient ops (section A of the contracts)."""
    feedback: str = "weight"
    seed: int = 0
    stream: int = 0
    step: int = 0
    distribution: str = "uniform"
    scale: float = 1.0

    def kwargs(self) -> Dict[str, object]:
        # built by hand: dataclasses.asdict deep-copies and costs tens of microseconds per forward
        return {"feedback": self.feedback, "seed": self.seed, "stream": self.stream, "step": self.step,
                "distribution": self.distribution, "scale": self.scale}


_MODE = {"fa": "random", "usf": "sign", "frsf": "random_sign", "brsf": "random_sign"}


def spec_for(rule: str, fans: Fans, *, scale: Scale = "glorot", seed: int = 0, stream: int = 0,
             step: int = 0) -> FeedbackSpec:
    """The spec of a seeded rule: "usf", seeded "fa", "frsf" (step is ignored: M is fixed) or "brsf"."""
    check_rule(rule, LAYER_RULES)
    if rule == "bp":
        return FeedbackSpec()
    distribution, s = magnitude(rule, check_scale(scale), fans)
    return FeedbackSpec(_MODE[rule], int(seed), int(stream), int(step) if rule == "brsf" else 0, distribution, s)


def draw_seed() -> int:
    """A seed for a matrix the user did not seed, from torch's default generator (so torch.manual_seed
    makes it reproducible)."""
    return int(torch.randint(0, 2 ** 62, (), dtype=torch.int64))
