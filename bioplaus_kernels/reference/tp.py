"""A straightforward pure-PyTorch DTP step: the named baseline of ``bioplaus bench tp``
(bioplaus_kernels/bench/tp.py).

Written the way research code computes difference target propagation (Lee et al. 2015; Bartunov et al.
2018): inverse layers as ordinary modules (``nn.Linear`` for Linear layers; for locally connected layers a
transposed LC layer from ``F.fold``, reference.difference_target.lc2d_transposed), g applied twice per target
(once to the target, once to the activation), the penultimate target from ``torch.autograd.grad``, the noise
from ``torch.randn`` and every loss differentiated by autograd. Same equations, losses and scaling as
bioplaus_kernels.tp.Trainer (DTP, parallel schedule): per-example cross-entropy gradient for t_{L-1},
squared errors summed over units and averaged over the batch, Adam for both parameter sets.

The model is an nn.Sequential of ([nn.Flatten], Linear | LocallyConnected2d, [activation]) groups ending with
the output nn.Linear.
"""
from __future__ import annotations

import math
from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import LocallyConnected2d
from .difference_target import ACTIVATIONS, lc2d_transposed


class _LCInverse(nn.Module):
    def __init__(self, layer: LocallyConnected2d, act: str):
        super().__init__()
        self.layer, self.act = layer, ACTIVATIONS[act]
        bound = math.sqrt(6.0 / ((layer.in_channels + layer.out_channels) * layer.kernel_size[0] * layer.kernel_size[1]))
        self.weight = nn.Parameter(torch.empty_like(layer.weight).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(layer.in_channels, *layer.input_size, dtype=layer.weight.dtype,
                                             device=layer.weight.device))

    def forward(self, y):
        lc = self.layer
        return self.act(lc2d_transposed(y, self.weight, lc.input_size, lc.stride, lc.padding4, lc.dilation) + self.bias)


class _LinearInverse(nn.Module):
    def __init__(self, layer: nn.Linear, act: str):
        super().__init__()
        self.linear = nn.Linear(layer.out_features, layer.in_features, dtype=layer.weight.dtype,
                                device=layer.weight.device)
        self.act = ACTIVATIONS[act]
        nn.init.xavier_uniform_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, y):
        return self.act(self.linear(y))


class StraightforwardDTP:
    """DTP, parallel schedule: ``step(x, y)`` updates the inverses and the forward weights, returns the loss."""

    def __init__(self, model: nn.Sequential, alpha: float = 0.1, sigma: float = 0.1, forward_optimizer=None,
                 inverse_optimizer=None):
        self.model, self.alpha, self.sigma = model, alpha, sigma
        self.blocks: List[nn.Sequential] = []
        acts: List[str] = []
        current: List[nn.Module] = []
        for m in model:
            current.append(m)
            if isinstance(m, (nn.Linear, LocallyConnected2d)):
                self.blocks.append(nn.Sequential(*current))
                acts.append("identity")
                current = []
            elif isinstance(m, nn.Tanh):
                self.blocks[-1].append(m)
                acts[-1] = "tanh"
                current = []
        layers = [[m for m in b if isinstance(m, (nn.Linear, LocallyConnected2d))][0] for b in self.blocks]
        self.inverses = nn.ModuleList(
            (_LCInverse if isinstance(layers[l], LocallyConnected2d) else _LinearInverse)(layers[l], acts[l - 1])
            for l in range(1, len(layers) - 1))  # g_2 .. g_{L-1}
        self.forward_optimizer = (forward_optimizer or torch.optim.Adam)(model.parameters())
        self.inverse_optimizer = (inverse_optimizer or torch.optim.Adam)(self.inverses.parameters())

    def _layer_input(self, l, h):
        """Input of block l's layer (after a Flatten) for activation h_{l-1}."""
        return h.flatten(1) if isinstance(self.blocks[l - 1][0], nn.Flatten) else h

    def step(self, x, y):
        L = len(self.blocks)
        hs, outs = [x], []
        for block in self.blocks:
            outs.append(block(hs[-1].detach()))
            hs.append(outs[-1].detach())
        task = F.cross_entropy(outs[-1], y)
        # penultimate target: one gradient step on each example's own loss
        h = hs[L - 1].clone().requires_grad_()
        grad, = torch.autograd.grad(F.cross_entropy(self.blocks[-1](h), y, reduction="sum"), h)
        targets = {L - 1: (hs[L - 1] - self.alpha * grad).detach()}
        with torch.no_grad():
            for l in range(L - 1, 1, -1):
                g = self.inverses[l - 2]
                diff = g(targets[l]) - g(hs[l])
                targets[l - 1] = hs[l - 1] + diff.view_as(hs[l - 1])
        # inverse losses (noise-preserving)
        inv_loss = 0
        for l in range(2, L):
            h_noisy = hs[l - 1] + self.sigma * torch.randn_like(hs[l - 1])
            with torch.no_grad():
                y_noisy = self.blocks[l - 1](h_noisy)
            rec = self.inverses[l - 2](y_noisy).view_as(h_noisy)
            inv_loss = inv_loss + (rec - h_noisy).pow(2).sum() / x.shape[0]
        self.inverse_optimizer.zero_grad()
        inv_loss.backward()
        self.inverse_optimizer.step()
        # forward losses
        total = task
        for l, t in targets.items():
            total = total + (outs[l - 1] - t).pow(2).sum() / x.shape[0]
        self.forward_optimizer.zero_grad()
        total.backward()
        self.forward_optimizer.step()
        return task.item()
