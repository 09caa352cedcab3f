"""Alignment diagnostics of feedback rules, per layer, cheap enough to log every epoch.

``alignment(model, x, y)`` returns, for every feedback-capable layer (bioplaus_kernels.nn.Linear, Conv2d,
LocallyConnected2d, in "bp", a rule or DFA's "dfa" mode), keyed by its qualified name:

* ``angle_BW``: the angle in degrees between B = ``feedback_weight()`` and W, both flattened
  (NaN for "dfa" layers, whose B_l is [output_dim, D] and not W's shape);
* ``norm_ratio``: ||B|| / ||W|| (Frobenius; NaN for "dfa");
* ``angle_grad``: the angle in degrees between the gradient of the loss with respect to the layer's INPUT
  under the rule and under true backprop, on the probe batch (x, y), over the whole batch flattened. For
  the first layer the probe input is made to require a gradient (not under DFA, where the first layer's
  input gets no error: NaN there). The gradient is the total one at that
  tensor (all its uses), the quantity that the layers below receive.

Cost: two forward + backward passes on the probe batch (the rule's, then backprop's with every rule switched
off by ``true_backprop``); parameter ``.grad`` fields are not touched (``torch.autograd.grad``). The model
runs in eval mode during the probe (no dropout, BatchNorm on running statistics, no brsf step advance, no
running-statistics update) and its training flags are restored afterwards.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F

from .nn._feedback import FeedbackMixin, true_backprop
from .nn.dfa import DFA


def _angle(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().flatten(), b.detach().double().flatten()
    na, nb = a.norm(), b.norm()
    if na == 0 or nb == 0:
        return math.nan
    ua, ub = a / na, b / nb
    # 2 atan2(|u - v|, |u + v|): accurate near 0 and 180 degrees, where acos of the cosine is not
    return math.degrees(2.0 * math.atan2(float((ua - ub).norm()), float((ua + ub).norm())))


def _input_grads(model: torch.nn.Module, layers: List[Tuple[str, torch.nn.Module]], x: torch.Tensor,
                 y: torch.Tensor, loss_fn: Callable) -> Dict[str, torch.Tensor]:
    inputs: Dict[str, torch.Tensor] = {}

    def hook_for(name):
        def hook(module, args):
            if args and isinstance(args[0], torch.Tensor) and args[0].requires_grad and name not in inputs:
                inputs[name] = args[0]
        return hook

    # prepend: see the input before any other pre-hook (DFA's error injection) replaces it
    handles = [m.register_forward_pre_hook(hook_for(n), prepend=True) for n, m in layers]
    try:
        with torch.enable_grad():
            # DFA fixes its layout on the inputs that need gradients: keep the data out of it
            probe = x.detach().requires_grad_(not any(isinstance(m, DFA) for m in model.modules()))
            loss = loss_fn(model(probe), y)
            names = list(inputs)
            grads = torch.autograd.grad(loss, [inputs[n] for n in names], allow_unused=True) if names else []
    finally:
        for h in handles:
            h.remove()
    return {n: g for n, g in zip(names, grads) if g is not None}


def alignment(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
              loss_fn: Callable = F.cross_entropy) -> Dict[str, Dict[str, float]]:
    """Per-layer ``{"angle_BW", "norm_ratio", "angle_grad"}`` (see the module docstring)."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, FeedbackMixin)]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        rule = _input_grads(model, layers, x, y, loss_fn)
        with true_backprop(model):
            bp = _input_grads(model, layers, x, y, loss_fn)
    finally:
        for m, t in modes.items():
            m.training = t
    out: Dict[str, Dict[str, float]] = {}
    for name, m in layers:
        if m.feedback == "dfa":
            angle_bw = ratio = math.nan
        else:
            B, W = m.feedback_weight().double(), m.weight.detach().double()
            angle_bw = _angle(B, W)
            ratio = float(B.norm() / W.norm()) if W.norm() > 0 else math.nan
        angle_g = _angle(rule[name], bp[name]) if name in rule and name in bp else math.nan
        out[name] = {"angle_BW": angle_bw, "norm_ratio": ratio, "angle_grad": angle_g}
    return out
