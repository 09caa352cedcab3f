"""Target-propagation trainer: DTP, SDTP and AO-SDTP (Bartunov et al. 2018, docs/papers.md section 1).

Notation: the model is split into L blocks, block l = (shape ops such as Flatten) + one parametrised layer
f_l (Linear or LocallyConnected2d) + its elementwise activation; h_0 = x, h_l = block_l(h_{l-1}), h_L the
logits. Inverse g_l maps h_l to block l's layer input (h_{l-1}, flattened for a Linear layer) with the
activation of block l-1.

One ``step(x, y)``:

1. forward pass, every block's input detached (no gradient crosses layers);
2. targets (forward updates only), from the inverses as they are before this step's inverse update (the
   paper's Algorithm 1: targets, then inverse updates, then forward updates): t_{L-1} from the output, then
   t_{l-1} = h_{l-1} + g_l(t_l) - g_l(h_l) for l = L-1 .. 2 (fused kernel ``difference_target``):
   * DTP: t_{L-1} = h_{L-1} - alpha * dLoss/dh_{L-1}, with Loss each example's own cross-entropy (the
     gradient is not divided by the batch size, so targets do not depend on it);
   * SDTP: t_{L-1} = h_{L-1} - g_L(h_L') + g_L(t_L'), the output inverse g_L reading h_L' and t_L':
     ``output_inverse="probabilities"`` (the paper's "correct label distribution"): h_L' = softmax of the
     logits, t_L' = one-hot label. ``"logits"`` (default): h_L' = logits, t_L' = logits + (one-hot - softmax),
     i.e. minus the logits' cross-entropy gradient, a logit-space move toward the label (a one-hot vector
     is not a logit vector, and g_L is only trained around logits). The default is "logits" because the
     probabilities reading diverged on real MNIST with the paper's SDTP hyperparameters (docs/tp.md);
   * AO-SDTP: as SDTP with g_L reading [h_L', z] and [t_L', z], z = R h_{L-1} the same auxiliary outputs in
     both calls: ``aux_width`` random, untrained, linear features (R Glorot-uniform, drawn from Philox with
     the trainer's seed, no bias, no activation, like the logits they sit beside);
3. inverse losses (inverse updates only), for every g_l, l = 2 .. L-1 (DTP) or 2 .. L (SDTP, AO-SDTP), with
   eps ~ N(0, sigma^2) drawn once per layer and step (``ops.inverse_loss_noisy_input``, Philox: the
   trainer's seed, stream = l + 2^20 * rank, step = the step counter) for the noisy forward f_l(h~),
   h~ = h_{l-1} + eps: DTP noise-preserving ||g_l(f_l(h~)) - h~||^2 (the ``inverse_loss`` target is h~);
   SDTP/AO-SDTP de-noising ||g_l(f_l(h~)) - h_{l-1}||^2 (the target is h_{l-1}; f_L includes the
   softmax/aux outputs as above). The gradients of V_l and c_l come in closed form from the op's outputs
   (``ops.inverse_loss.parameter_grads``, the function of its registered backward) with no graph: nothing
   else is differentiated through the inverses;
4. forward losses: ||block_l(h_{l-1}) - t_l||^2 for l < L and the task cross-entropy for the last layer
   (delta rule). Squared errors sum over a sample's units and average over the batch.

Schedules: ``"parallel"`` does 3 and 4 on every minibatch; ``"alternating"`` trains the inverses for a whole
epoch, then the forward weights for the next, and so on; it starts with the inverse phase (so the first
forward epoch already uses trained inverses), and ``end_epoch()`` switches. The diagnostics reported are
those the phase computes: ``inverse_error/<l>`` (the inverse loss of g_l) in inverse updates,
``target_distance/<l>`` (mean over the batch of ||t_l - h_l||^2) in forward updates.

Distributed: when torch.distributed is initialised, the gradients of the forward and inverse parameters are
averaged over ranks (all_reduce, then divided by the world size) before each optimizer step, so every rank
keeps identical weights if it starts from identical ones; noise differs per rank (the rank is in the stream).
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..nn import LocallyConnected2d
from .inverses import LinearInverse, LocallyConnected2dInverse

ALGORITHMS = ("dtp", "sdtp", "ao-sdtp")
SCHEDULES = ("parallel", "alternating")
OUTPUT_INVERSES = ("probabilities", "logits")
PHASES = ("inverse", "forward")
ACTIVATIONS = {nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.ReLU: "relu"}
_AUX_STREAM = 1 << 30  # Philox stream of the auxiliary features R (noise streams are l + 2^20 * rank)

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


class _Block:
    """Shape ops (Flatten) + one parametrised layer + at most one elementwise activation."""

    def __init__(self, index: int, pre: List[nn.Module], layer: nn.Module):
        self.index, self.pre, self.layer, self.act, self.activation = index, pre, layer, None, "identity"

    def layer_input(self, h: torch.Tensor) -> torch.Tensor:
        for m in self.pre:
            h = m(h)
        return h

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        out = self.layer(self.layer_input(h))
        return out if self.act is None else self.act(out)


def _split_blocks(model: nn.Module) -> List[_Block]:
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"Trainer: model must be a torch.nn.Sequential, got {type(model).__name__}")
    blocks: List[_Block] = []
    pre: List[nn.Module] = []
    for i, child in enumerate(model):
        if isinstance(child, (nn.Linear, LocallyConnected2d)):
            if isinstance(child, LocallyConnected2d) and pre:
                raise TypeError(f"Trainer: child {i} ({type(child).__name__}) follows a Flatten; a locally "
                                "connected layer needs its 4-D input")
            blocks.append(_Block(len(blocks) + 1, pre, child))
            pre = []
        elif isinstance(child, nn.Flatten):
            pre.append(child)
        elif isinstance(child, nn.Identity):
            continue
        elif type(child) in ACTIVATIONS:
            if not blocks or pre or blocks[-1].act is not None:
                raise TypeError(f"Trainer: child {i} ({type(child).__name__}) must directly follow a Linear or "
                                "LocallyConnected2d layer (one activation per layer)")
            blocks[-1].act, blocks[-1].activation = child, ACTIVATIONS[type(child)]
        else:
            raise TypeError(f"Trainer: child {i} ({type(child).__name__}) has no inverse; target propagation "
                            "supports torch.nn.Linear, bioplaus_kernels.nn.LocallyConnected2d, nn.Flatten and "
                            "the activations nn.Tanh, nn.Sigmoid, nn.ReLU")
    if len(blocks) < 2:
        raise ValueError(f"Trainer: model needs at least 2 parametrised layers, got {len(blocks)}")
    if pre or not isinstance(blocks[-1].layer, nn.Linear) or blocks[-1].act is not None:
        raise TypeError("Trainer: the last child of the model must be the output nn.Linear (the logits)")
    return blocks


def _adam(params):
    return torch.optim.Adam(params)


class Trainer:
    """Trains ``model`` (an nn.Sequential, see the module doc) with target propagation.

    Args:
        model: nn.Sequential of Linear / LocallyConnected2d layers, elementwise activations and Flatten; the last
            child is the output Linear (logits).
        algorithm: "dtp" | "sdtp" | "ao-sdtp".
        schedule: "parallel" | "alternating" (starts with the inverse phase; ``end_epoch()`` switches).
        alpha: DTP's step size for the penultimate target.
        sigma: standard deviation of the inverse losses' noise.
        aux_width: number of auxiliary outputs z (AO-SDTP only).
        output_inverse: what the output inverse reads (SDTP, AO-SDTP): "logits" (default) or "probabilities".
        forward_optimizer, inverse_optimizer: callables params -> torch.optim.Optimizer (default Adam with
            torch's defaults); the forward one gets the model's parameters, the inverse one ``trainer.inverses``.
        seed: seeds the inverses' initialisation (torch.random.fork_rng), the noise and the auxiliary features.
    """

    def __init__(self, model: nn.Module, algorithm: str, *, schedule: str = "alternating", alpha: float = 0.1,
                 sigma: float = 0.1, aux_width: int = 512, output_inverse: str = "logits",
                 forward_optimizer: Optional[OptimizerFactory] = None,
                 inverse_optimizer: Optional[OptimizerFactory] = None, seed: int = 0):
        _choice("algorithm", algorithm, ALGORITHMS)
        _choice("schedule", schedule, SCHEDULES)
        _choice("output_inverse", output_inverse, OUTPUT_INVERSES)
        if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"Trainer: alpha must be a finite number > 0, got {alpha!r}")
        if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"Trainer: sigma must be a finite number >= 0, got {sigma!r}")
        if algorithm == "ao-sdtp" and not (isinstance(aux_width, int) and aux_width >= 1):
            raise ValueError(f"Trainer: aux_width must be a positive int for 'ao-sdtp', got {aux_width!r}")
        if not (isinstance(seed, int) and seed >= 0):
            raise ValueError(f"Trainer: seed must be an int >= 0, got {seed!r}")
        self.model, self.algorithm, self.schedule = model, algorithm, schedule
        self.alpha, self.sigma, self.output_inverse, self.seed = float(alpha), float(sigma), output_inverse, seed
        self.aux_width = aux_width if algorithm == "ao-sdtp" else 0
        self.blocks = _split_blocks(model)
        self.phase = "inverse" if schedule == "alternating" else "both"
        self.step_count = 0
        last = self.blocks[-1].layer
        self.num_classes = last.out_features
        w = last.weight
        self.aux = None
        if self.aux_width:
            bound = math.sqrt(6.0 / (last.in_features + self.aux_width))
            self.aux = ops.philox((self.aux_width, last.in_features), seed, _AUX_STREAM, 0, "uniform", bound,
                                  dtype=w.dtype, device=w.device)
        with torch.random.fork_rng(devices=[w.device] if w.device.type == "cuda" else []):
            torch.manual_seed(seed)
            self.inverses = nn.ModuleDict(self._build_inverses())
        self.forward_optimizer = (forward_optimizer or _adam)(list(model.parameters()))
        self.inverse_optimizer = (inverse_optimizer or _adam)(list(self.inverses.parameters()))

    # -- construction -----------------------------------------------------------------------------------
    def _build_inverses(self) -> Dict[str, nn.Module]:
        inverses: Dict[str, nn.Module] = {}
        top = len(self.blocks) if self.algorithm != "dtp" else len(self.blocks) - 1
        for l in range(2, top + 1):
            block, act = self.blocks[l - 1], self.blocks[l - 2].activation
            layer = block.layer
            if isinstance(layer, LocallyConnected2d):
                inverses[str(l)] = LocallyConnected2dInverse(layer, act)
            else:
                width = layer.out_features + (self.aux_width if l == len(self.blocks) else 0)
                inverses[str(l)] = LinearInverse(layer.in_features, width, act, device=layer.weight.device,
                                                 dtype=layer.weight.dtype)
        return inverses

    # -- the step ---------------------------------------------------------------------------------------
    def _output_code(self, logits: torch.Tensor, h_in: torch.Tensor) -> torch.Tensor:
        """What the output inverse g_L reads for logits computed from layer input h_in."""
        code = logits.softmax(-1) if self.output_inverse == "probabilities" else logits
        return code if self.aux is None else torch.cat([code, h_in @ self.aux.t()], 1)

    def _penultimate_target(self, h_in: torch.Tensor, logits: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        """t_{L-1} in the space of the output layer's input (flattened h_{L-1})."""
        p = logits.softmax(-1)
        if self.algorithm == "dtp":
            return h_in - self.alpha * ((p - onehot) @ self.blocks[-1].layer.weight)
        h_code = self._output_code(logits, h_in)
        if self.output_inverse == "probabilities":
            t_code = onehot
        else:
            t_code = logits + (onehot - p)
        if self.aux is not None:
            t_code = torch.cat([t_code, h_code[:, self.num_classes:]], 1)
        return self.inverses[str(len(self.blocks))].difference_target(h_in, t_code, h_code)

    def _targets(self, hs: List[torch.Tensor], onehot: torch.Tensor) -> Dict[int, torch.Tensor]:
        L = len(self.blocks)
        top = self.blocks[-1]
        targets = {L - 1: self._penultimate_target(top.layer_input(hs[L - 1]), hs[L], onehot).view_as(hs[L - 1])}
        for l in range(L - 1, 1, -1):
            block = self.blocks[l - 1]
            t = self.inverses[str(l)].difference_target(block.layer_input(hs[l - 1]), targets[l], hs[l])
            targets[l - 1] = t.view_as(hs[l - 1])
        return targets

    def _inverse_losses(self, hs: List[torch.Tensor]) -> Dict[int, torch.Tensor]:
        """The inverse losses of step 3, with each inverse's weight and bias gradient written to its .grad."""
        rank = _rank()
        preserve = self.algorithm == "dtp"
        losses = {}
        for key, inverse in self.inverses.items():
            l = int(key)
            block = self.blocks[l - 1]
            h = block.layer_input(hs[l - 1])
            noise = dict(sigma=self.sigma, seed=self.seed, stream=l + (rank << 20), step=self.step_count)
            h_noisy = ops.inverse_loss_noisy_input(h, **noise)
            y = block(h_noisy)
            if l == len(self.blocks):
                y = self._output_code(y, h_noisy)
            # DTP reconstructs h~ itself, SDTP/AO-SDTP the clean h.
            losses[l], x_hat, residual = inverse.inverse_loss(y, h_noisy if preserve else h)
            inverse.weight.grad, inverse.bias.grad = inverse.parameter_grads(y, x_hat, residual)
        return losses

    def step(self, x: torch.Tensor, y: torch.Tensor) -> Dict[str, float]:
        """One minibatch: forward pass, then the inverse and/or forward updates of the current phase.
        Returns "loss" (task cross-entropy before the update), "accuracy" and the phase's diagnostics."""
        train_inverse = self.phase in ("both", "inverse")
        train_forward = self.phase in ("both", "forward")
        hs = [x]
        outs = []
        with torch.set_grad_enabled(train_forward):
            for block in self.blocks:
                out = block(hs[-1].detach())
                outs.append(out)
                hs.append(out.detach())
        with torch.no_grad():
            stats = {"loss": F.cross_entropy(hs[-1], y), "accuracy": (hs[-1].argmax(1) == y).float().mean()}
        if train_forward:
            # Targets first, from the inverses before this step's inverse update (Algorithm 1 of the paper:
            # targets, then inverse updates, then forward updates). The local losses' gradients at the block
            # outputs come in closed form (one backward through the blocks, no graph for the losses):
            # d/d out_l of ||out_l - t_l||^2 / N is 2 (h_l - t_l) / N, the task loss's d/d logits is
            # (softmax - one-hot) / N.
            n = max(x.shape[0], 1)
            with torch.no_grad():
                onehot = F.one_hot(y, self.num_classes).to(hs[-1].dtype)
                targets = self._targets(hs, onehot)
                grads = [(hs[-1].softmax(-1) - onehot) / n]
                for l, t in targets.items():
                    diff = (hs[l] - t).view(-1)
                    stats[f"target_distance/{l}"] = torch.dot(diff, diff) / n  # one pass, no temporary
                    grads.append(diff.mul_(2.0 / n).view_as(t))
        if train_inverse:
            self.inverse_optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                losses = self._inverse_losses(hs)
            if losses:
                _average_gradients(self.inverses.parameters())
                self.inverse_optimizer.step()
            stats.update({f"inverse_error/{l}": v for l, v in losses.items()})
        if train_forward:
            self.forward_optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward([outs[-1]] + [outs[l - 1] for l in targets], grads)
            _average_gradients(self.model.parameters())
            self.forward_optimizer.step()
        self.step_count += 1
        keys = list(stats)
        values = torch.stack([stats[k].detach().float() for k in keys]).tolist()
        return dict(zip(keys, values))

    @torch.no_grad()
    def targets(self, x: torch.Tensor, y: torch.Tensor) -> Tuple[Dict[int, torch.Tensor], List[torch.Tensor]]:
        """({l: t_l} for l = 1 .. L-1, [h_0, .., h_L]): the targets this trainer gives the minibatch now and the
        activations they refer to (t_l has h_l's shape), without updating anything."""
        hs = [x]
        for block in self.blocks:
            hs.append(block(hs[-1]))
        onehot = F.one_hot(y, self.num_classes).to(hs[-1].dtype)
        return self._targets(hs, onehot), hs

    def end_epoch(self) -> None:
        """Alternating schedule: switch between the inverse and the forward phase (no-op when parallel)."""
        if self.schedule == "alternating":
            self.phase = "forward" if self.phase == "inverse" else "inverse"

    # -- checkpoints --------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Inverses, both optimizers, phase and step counter (the model's own weights are not included)."""
        return {"inverses": self.inverses.state_dict(), "forward_optimizer": self.forward_optimizer.state_dict(),
                "inverse_optimizer": self.inverse_optimizer.state_dict(), "phase": self.phase,
                "step": self.step_count, "algorithm": self.algorithm, "schedule": self.schedule}

    def load_state_dict(self, state: dict) -> None:
        for k in ("algorithm", "schedule"):
            if state.get(k) != getattr(self, k):
                raise ValueError(f"Trainer.load_state_dict: the state was saved with {k}={state.get(k)!r} but this "
                                 f"trainer uses {getattr(self, k)!r}")
        self.inverses.load_state_dict(state["inverses"])
        self.forward_optimizer.load_state_dict(state["forward_optimizer"])
        self.inverse_optimizer.load_state_dict(state["inverse_optimizer"])
        self.phase, self.step_count = state["phase"], int(state["step"])


def _choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"Trainer: {name} must be one of {', '.join(repr(a) for a in allowed)}, got {value!r}")


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _rank() -> int:
    return torch.distributed.get_rank() if _distributed() else 0


def _average_gradients(params: Iterable[nn.Parameter]) -> None:
    if not _distributed():
        return
    world = torch.distributed.get_world_size()
    for p in params:
        if p.grad is not None:
            torch.distributed.all_reduce(p.grad)
            p.grad.div_(world)
