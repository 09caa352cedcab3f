"""Optimizers from the reference works.

BatchManhattan (Xiao et al. 2018, "Biologically-plausible learning algorithms can scale to large datasets"):
SGD in which every parameter's gradient is replaced by its sign (sign(0) = 0) before weight decay and
momentum are applied, so each step moves a parameter by the learning rate times a direction built from
signs only. The update, per parameter p with gradient g:

    d = sign(g) + weight_decay * p
    buf = d                                   (first step)
    buf = momentum * buf + (1 - dampening) * d (later steps)
    d = d + momentum * buf if nesterov else buf   (when momentum > 0)
    p = p - lr * d
"""
from __future__ import annotations

import torch
from torch.optim import Optimizer


class BatchManhattan(Optimizer):
    """SGD on the sign of the gradient (Batch-Manhattan). Same arguments as ``torch.optim.SGD``."""

    def __init__(self, params, lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False) -> None:
        for name, v in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
            if not v >= 0.0:
                raise ValueError(f"BatchManhattan: {name} must be >= 0, got {v}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("BatchManhattan: nesterov needs momentum > 0 and dampening = 0, got "
                             f"momentum={momentum}, dampening={dampening}")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum, dampening = group["lr"], group["momentum"], group["dampening"]
            weight_decay, nesterov = group["weight_decay"], group["nesterov"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("BatchManhattan: sparse gradients are not supported")
                d = torch.sign(p.grad)
                if weight_decay != 0:
                    d = d.add(p, alpha=weight_decay)
                if momentum != 0:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = d.clone()
                    else:
                        buf.mul_(momentum).add_(d, alpha=1 - dampening)
                    d = d.add(buf, alpha=momentum) if nesterov else buf
                p.add_(d, alpha=-lr)
        return loss
