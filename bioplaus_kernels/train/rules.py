"""Learners: one object per learning rule that turns a minibatch into an update.

- Feedback rules (bp, fa, dfa, usf, frsf, brsf): ``bioplaus_kernels.convert(model, rule)`` swaps the layers'
  backward passes (bp keeps the model as it is), and the ordinary loop ``cross_entropy(model(x), y).backward();
  optimizer.step()`` trains it. Under torchrun the converted model is wrapped in DistributedDataParallel:
  DDP's gradient all-reduce hooks sit on the parameters and fire after the rule's own backward hooks (DFA's
  output-error projections included), so every rule is synchronised exactly like backprop.
- Target propagation (dtp, sdtp, ao-sdtp): ``bioplaus_kernels.tp.Trainer`` owns the inverse layers and two
  optimizers; it is never wrapped in DDP. Its forward and inverse losses are local, so it all-reduces
  (averages) the gradients of forward and inverse parameters itself before each optimizer step.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UsageError
from .presets import TP_RULES, Hyper

PAPER_ARCHS = ("fc", "lc", "conv")


def make_optimizer(params, name: str, lr: float, *, betas=(0.9, 0.999), eps=1e-8, momentum=0.9,
                   weight_decay=0.0) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "bm":
        from ..optim import BatchManhattan
        return BatchManhattan(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise UsageError(f"unknown optimizer {name!r}; choose adam, sgd or bm")


def _forward_optimizer(params, h: Hyper) -> torch.optim.Optimizer:
    return make_optimizer(params, h.optimizer, h.lr, betas=(h.beta1, h.beta2), eps=h.eps, momentum=h.momentum,
                          weight_decay=h.weight_decay)


def _autocast(amp: bool):
    return torch.autocast("cuda", dtype=torch.bfloat16) if amp else contextlib.nullcontext()


@dataclass
class StepStats:
    """Sums over the samples of a step; tensors stay on the device until a log line needs them."""
    loss_sum: torch.Tensor | float
    correct: torch.Tensor | float
    count: int
    extra: dict


class FeedbackLearner:
    """bp, fa, dfa, usf, frsf, brsf: convert, then the ordinary autograd loop."""

    def __init__(self, model: nn.Module, rule: str, h: Hyper, *, arch: str, num_classes: int, seed: int,
                 device: torch.device, distributed: bool, amp: bool) -> None:
        if rule != "bp":
            model = _convert(model, rule, h, arch=arch, num_classes=num_classes, seed=seed)
        self.module = model.to(device)
        self.net = self.module
        if distributed:
            from torch.nn.parallel import DistributedDataParallel
            self.net = DistributedDataParallel(self.module, device_ids=[device.index] if device.type == "cuda"
                                               else None)
        self.rule, self.amp = rule, amp
        self.optimizers = [_forward_optimizer(self.module.parameters(), h)]

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> StepStats:
        self.net.train()
        opt = self.optimizers[0]
        opt.zero_grad(set_to_none=True)
        with _autocast(self.amp):
            logits = self.net(x)
            loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        opt.step()
        n = y.shape[0]
        return StepStats(loss.detach() * n, (logits.detach().argmax(1) == y).sum(), n, {})

    def end_epoch(self) -> None:
        pass

    def diagnostics(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        """Alignment of the rule's feedback with backprop on a fixed probe batch (nothing for bp)."""
        if self.rule == "bp":
            return {}
        from ..metrics import alignment
        self.module.train()
        out = {}
        for layer, values in alignment(self.module, x, y).items():
            for key, v in values.items():
                out[f"align/{layer}/{key}"] = float(v)
        self.optimizers[0].zero_grad(set_to_none=True)
        return out

    def eval_module(self) -> nn.Module:
        return self.net

    def state_dict(self) -> dict:
        return {"model": self.module.state_dict(), "optimizer": self.optimizers[0].state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["model"])
        self.optimizers[0].load_state_dict(state["optimizer"])


class TPLearner:
    """dtp, sdtp, ao-sdtp through bioplaus_kernels.tp.Trainer (separate Adam for forward and inverse layers).

    Training steps run in float32 even with --amp: the target-propagation kernels have no autocast
    registrations (evaluation still autocasts)."""

    def __init__(self, model: nn.Module, rule: str, h: Hyper, *, arch: str, schedule: str, seed: int,
                 device: torch.device) -> None:
        check_available(rule)
        from .. import tp
        if not isinstance(model, nn.Sequential):
            raise UsageError(f"rule {rule} trains an nn.Sequential of Linear/LocallyConnected2d/activation/Flatten "
                             f"layers (--arch fc or lc); --arch {arch} is not one")
        self.module = model.to(device)
        self.optimizers: list[torch.optim.Optimizer] = []

        def forward_opt(params):
            self.optimizers.append(_forward_optimizer(params, h))
            return self.optimizers[-1]

        def inverse_opt(params):
            inv = h.inverse
            self.optimizers.append(make_optimizer(params, "adam", inv.lr, betas=(inv.beta1, inv.beta2),
                                                  eps=inv.eps))
            return self.optimizers[-1]

        try:
            self.trainer = tp.Trainer(self.module, rule, schedule=schedule, alpha=h.alpha, sigma=h.sigma,
                                      aux_width=h.aux_width, output_inverse=h.output_inverse,
                                      forward_optimizer=forward_opt,
                                      inverse_optimizer=inverse_opt, seed=seed)
        except (ValueError, TypeError) as e:
            raise UsageError(f"rule {rule} cannot train --arch {arch}: {e}") from None

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> StepStats:
        self.module.train()
        d = self.trainer.step(x, y)
        n = y.shape[0]
        extra = {k: float(v) for k, v in d.items() if k not in ("loss", "accuracy")}
        return StepStats(float(d["loss"]) * n, float(d["accuracy"]) * n, n, extra)

    def end_epoch(self) -> None:
        self.trainer.end_epoch()

    def diagnostics(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        return {}  # inverse errors come from every step's diagnostics, averaged over the epoch

    def eval_module(self) -> nn.Module:
        return self.module

    def state_dict(self) -> dict:
        return {"model": self.module.state_dict(), "trainer": self.trainer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["model"])
        self.trainer.load_state_dict(state["trainer"])


def _convert(model: nn.Module, rule: str, h: Hyper, *, arch: str, num_classes: int, seed: int) -> nn.Module:
    check_available(rule)
    from .. import convert
    last_layer = h.last_layer or ("convert" if arch in PAPER_ARCHS else "bp")
    kwargs = dict(seed=seed, last_layer=last_layer)
    if rule == "dfa":
        kwargs["output_dim"] = num_classes
    try:
        return convert(model, rule, **kwargs)
    except (ValueError, TypeError, NotImplementedError) as e:
        raise UsageError(f"rule {rule} cannot convert --arch {arch}: {e}") from None


def check_available(rule: str) -> None:
    """Fail before any training when a rule's implementation is not in this build."""
    import importlib
    if rule == "bp":
        return
    module, attr = ("bioplaus_kernels.tp", "Trainer") if rule in TP_RULES else ("bioplaus_kernels", "convert")
    try:
        ok = hasattr(importlib.import_module(module), attr)
    except ImportError:
        ok = False
    if not ok:
        raise UsageError(f"rule {rule} is not available in this build yet ({module}.{attr} is missing)")


def make_learner(rule: str, model: nn.Module, h: Hyper, *, arch: str, schedule: str, num_classes: int,
                 seed: int, device: torch.device, distributed: bool, amp: bool):
    if rule in TP_RULES:
        return TPLearner(model, rule, h, arch=arch, schedule=schedule, seed=seed, device=device)
    return FeedbackLearner(model, rule, h, arch=arch, num_classes=num_classes, seed=seed, device=device,
                           distributed=distributed, amp=amp)
