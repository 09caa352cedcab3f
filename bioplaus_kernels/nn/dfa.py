"""Direct feedback alignment (Nokland 2016) as a model wrapper.

``convert(model, "dfa", output_dim=K)`` replaces the layers to train with the library's modules in "dfa"
mode (forward unchanged, true weight and bias gradients, no input gradient of their own) and wraps the model
in :class:`DFA`. The wrapper's forward equals the model's; in the backward:

1. The gradient of the loss with respect to the model's output, e [N, K], arrives at a hook on the output.
   There, ONE projection ``P = e @ [B_1 ... B_L]`` gives every layer its signal ([N, sum_l D_l]).
2. The input of every converted layer l (when it needs a gradient, i.e. all but the first layer) passes
   through an identity-in-forward function whose backward replaces its gradient by ``P[:, slice_l]``,
   reshaped to the input's shape: dense, one feedback weight per position and channel
   (B_l is [K, C*H*W] for a convolution's or LC layer's input; no spatial broadcast).
3. Ordinary autograd carries that gradient back through the activation (and normalisation) in front of the
   layer to the layer below, whose weight gradient therefore is ``(B e) * f'(a)`` as in Nokland's
   delta_l. This is why the error enters at the INPUT of the next converted layer (the first place past
   the activation that a module hook reaches) and not at a layer's own output: there it would miss f'.

The output layer's weights always train on e itself. With ``last_layer="bp"`` (convert's default) the
output layer stays an ordinary layer and sends e @ W_L to the top hidden layer; with
``last_layer="convert"`` the top hidden layer gets e @ B as well (the DFA of Nokland and Bartunov et al.).

The feedback matrices: element (k, j) of the concatenation B = [B_1 ... B_L] ([K, D] with D = sum D_l, in
the order the layers run) is ``a_l * philox(seed, stream=0, step=0, "uniform")[k, j]``: U(-1, 1) scaled per
layer by a_l (``scale="glorot"``: sqrt(6 / (K + D_l)); a float: that bound). With ``seed=None`` a seed is
drawn from torch's generator and B is materialised once and kept (memory: K*D elements); with an int seed B
is never stored: each step's projection runs ``ops.linear_backward_input`` in "random" mode, which generates
B while multiplying. The state dict holds the seed (and the layout), from which B is rebuilt.
The layout (which inputs get the error, their sizes) is fixed by the first forward that needs gradients.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from .. import ops
from ..feedback import Fans, Scale, check_scale, draw_seed, magnitude
from ._feedback import FeedbackMixin


class _Pass:
    """One forward's injection points, and the projection once the output error has arrived."""

    def __init__(self) -> None:
        self.names: List[str] = []  # the layers whose inputs receive the error, in run order
        self.sizes: List[Tuple[int, ...]] = []  # per-sample shapes of those inputs
        self.projection: Optional[torch.Tensor] = None
        self.offsets: List[int] = []


class _Inject(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, state: _Pass, k: int):
        ctx.state, ctx.k = state, k
        return x.view_as(x)

    @staticmethod
    def backward(ctx, _grad):
        state = ctx.state
        if state.projection is None:
            raise RuntimeError("DFA: a layer's gradient was requested before the output error arrived; the loss "
                               "must be computed from the DFA wrapper's output")
        lo = state.offsets[ctx.k]
        hi = lo + _numel(state.sizes[ctx.k])
        p = state.projection[:, lo:hi]
        return p.reshape(p.shape[0], *state.sizes[ctx.k]), None, None


class _Output(torch.autograd.Function):
    @staticmethod
    def forward(ctx, out, wrapper: "DFA", state: _Pass):
        ctx.wrapper, ctx.state = wrapper, state
        return out.view_as(out)

    @staticmethod
    def backward(ctx, e):
        ctx.state.projection = ctx.wrapper._project(e)
        return e, None, None


def _numel(shape: Tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


class DFA(nn.Module):
    """Wraps a model converted with ``convert(model, "dfa", output_dim=...)`` (see the module docstring).

    Args:
        model: the converted model (its "dfa" layers are found by type).
        output_dim: K, the size of the model's output (the output must be [N, K]).
        seed: None (B stored) or an int (B regenerated every step, nothing stored).
        scale: "glorot" or a positive float (see the module docstring).
    """

    def __init__(self, model: nn.Module, output_dim: int, *, seed: Optional[int] = None,
                 scale: Scale = "glorot") -> None:
        super().__init__()
        if not isinstance(output_dim, int) or isinstance(output_dim, bool) or output_dim < 1:
            raise ValueError(f"DFA: output_dim must be a positive int, got {output_dim!r}")
        self.model = model
        self.output_dim = output_dim
        self.seed = seed
        self._seed = seed if seed is not None else draw_seed()
        self.scale = check_scale(scale, where="DFA: scale")
        if self.scale == "xiao":
            raise ValueError("DFA: scale must be 'glorot' or a positive float ('xiao' defines no DFA scale)")
        self._dfa_injection_off = False
        self.layer_names = [n for n, m in model.named_modules() if isinstance(m, FeedbackMixin) and m.feedback == "dfa"]
        if not self.layer_names:
            raise ValueError("DFA: the model has no layer in 'dfa' mode; build it with "
                             "bioplaus_kernels.convert(model, 'dfa', output_dim=...)")
        self._set_layout(None)
        self._pass: Optional[_Pass] = None
        self.register_buffer("_stored", None, persistent=False)
        modules = dict(model.named_modules())
        for name in self.layer_names:
            modules[name].register_forward_pre_hook(self._make_hook(name))

    # -- forward -------------------------------------------------------------------------------------
    def _make_hook(self, name: str):
        def hook(module, args):
            state = self._pass
            # inputs that need a gradient get the error (not the data in front of the first layer); once the
            # first forward has fixed the layout, exactly its layers do
            if state is None or not args or not isinstance(args[0], torch.Tensor) or not args[0].requires_grad:
                return None
            if self._layout is not None and name not in self._layout_names:
                return None
            x = args[0]
            state.sizes.append(tuple(x.shape[1:]))
            state.names.append(name)
            return (_Inject.apply(x, state, len(state.sizes) - 1),) + tuple(args[1:])
        return hook

    def forward(self, *args, **kwargs):
        if self._dfa_injection_off or not torch.is_grad_enabled():
            return self.model(*args, **kwargs)
        state = _Pass()
        self._pass = state
        try:
            out = self.model(*args, **kwargs)
        finally:
            self._pass = None
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] != self.output_dim:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"DFA: the model's output must be a [N, output_dim={self.output_dim}] tensor, got {got}")
        if not state.sizes:
            return out
        layout = list(zip(state.names, state.sizes))
        if self._layout is None:
            self._set_layout(layout)
        elif layout != self._layout:
            raise ValueError(f"DFA: this forward's layer inputs {layout} differ from the layout fixed by the first "
                             f"forward {self._layout}; DFA's feedback matrices need fixed input sizes")
        state.offsets = self._offsets()
        return _Output.apply(out, self, state)

    def _set_layout(self, layout: Optional[List[Tuple[str, Tuple[int, ...]]]]) -> None:
        self._layout = layout
        self._layout_names = {n for n, _ in layout} if layout else set()

    # -- feedback matrices ---------------------------------------------------------------------------
    def _offsets(self) -> List[int]:
        offs, o = [], 0
        for _, shape in self._layout:
            offs.append(o)
            o += _numel(shape)
        return offs + [o]

    def _scales(self) -> List[float]:
        return [magnitude("fa", self.scale, Fans.linear(self.output_dim, _numel(s)))[1] for _, s in self._layout]

    def _like(self, e: torch.Tensor) -> torch.Tensor:
        # zero-stride: shape, dtype and device only (the "random" feedback never reads its values)
        return torch.zeros((), dtype=e.dtype, device=e.device).expand(self.output_dim, self._offsets()[-1])

    def _scale_columns(self, t: torch.Tensor) -> torch.Tensor:
        offs = self._offsets()
        for i, a in enumerate(self._scales()):
            t[:, offs[i]:offs[i + 1]].mul_(a)
        return t

    def _project(self, e: torch.Tensor) -> torch.Tensor:
        """e @ [B_1 ... B_L] in one product: [N, K] -> [N, D]."""
        if self.seed is None:
            if self._stored is None or self._stored.dtype != e.dtype or self._stored.device != e.device:
                self._stored = self._materialise(e.dtype, e.device)
            return e.mm(self._stored)
        p = ops.linear_backward_input(e, self._like(e), feedback="random", seed=self._seed, stream=0, step=0,
                                      distribution="uniform", scale=1.0)
        return self._scale_columns(p)

    def _materialise(self, dtype: torch.dtype, device) -> torch.Tensor:
        like = torch.zeros((), dtype=dtype, device=device).expand(self.output_dim, self._offsets()[-1])
        raw = torch.ops.bioplaus.philox_fill(like, self._seed, 0, 0, "uniform", 1.0)
        return self._scale_columns(raw)

    def feedback_matrices(self) -> Dict[str, torch.Tensor]:
        """B_l ([K, D_l]) of every layer that receives the error, keyed by layer name (after a forward)."""
        if self._layout is None:
            raise RuntimeError("DFA: the feedback matrices are laid out by the first forward with gradients; "
                               "run one first")
        p = next(self.model.parameters())
        full = self._materialise(p.dtype, p.device)
        offs = self._offsets()
        return {name: full[:, offs[i]:offs[i + 1]] for i, (name, _) in enumerate(self._layout)}

    # -- state ---------------------------------------------------------------------------------------
    def get_extra_state(self) -> Dict[str, Any]:
        return {"seed": self._seed, "layout": [[n, list(s)] for n, s in self._layout] if self._layout else None}

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        self._seed = int(state["seed"])
        self._set_layout([(n, tuple(s)) for n, s in state["layout"]] if state["layout"] is not None else None)
        self._stored = None
