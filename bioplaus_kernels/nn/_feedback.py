"""What Linear, Conv2d and LocallyConnected2d share about their feedback rule: its state (rule, seed, stream,
scale, step counter, stored matrix), the spec it hands to the kernels, ``feedback_weight()`` and the
state-dict entries."""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator, Optional

import torch

from .. import ops
from ..feedback import (LAYER_RULES, Fans, FeedbackSpec, Scale, check_rule, check_scale, draw_seed, spec_for)


class FeedbackMixin:
    """Mixed into a torch module that has ``weight``; the module calls :meth:`_init_feedback` at the end of
    its constructor and implements ``_fans()``.

    State:
        feedback: the rule ("bp", "fa", "usf", "frsf", "brsf"; "dfa" only when set by convert()).
        seed: the user's seed, or None. "fa" with seed=None stores B (buffer ``feedback_matrix``, saved in
            the state dict), drawn once from a seed taken from torch's generator; with a seed B is regenerated
            by the kernels and nothing is stored. "frsf"/"brsf" with seed=None draw their seed from torch's
            generator (saved in the state dict as ``feedback_seed``; M itself is never stored).
        stream: the layer id mixed into the generator's key (convert() numbers the layers 0, 1, 2, ...).
        feedback_step: "brsf" only: the number of training-mode forwards so far; each advances it by one
            and its backward uses the new value (captured at forward time), so M changes every step and
            (seed, step) reproduces it. Eval-mode forwards use the current value without advancing. Saved
            in the state dict as ``feedback_step``.
    """

    feedback: str
    feedback_matrix: Optional[torch.Tensor]

    def _init_feedback(self, feedback: str, seed: Optional[int], stream: int, scale: Scale) -> None:
        name = type(self).__name__
        self.feedback = check_rule(feedback, LAYER_RULES, where=f"{name}: feedback")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2 ** 63):
            raise ValueError(f"{name}: seed must be None or an int in [0, 2**63), got {seed!r}")
        if not isinstance(stream, int) or isinstance(stream, bool) or not 0 <= stream < 2 ** 63:
            raise ValueError(f"{name}: stream must be an int in [0, 2**63), got {stream!r}")
        self.seed = seed
        self.stream = stream
        self.feedback_scale = check_scale(scale, where=f"{name}: scale")
        self._seed = seed if seed is not None else (draw_seed() if self.feedback in ("fa", "frsf", "brsf") else 0)
        self.feedback_step = 0
        self._true_bp = False  # set by true_backprop(): metrics compare against backprop with it
        matrix = None
        if self.feedback == "fa" and seed is None:
            spec = self._spec()
            w = self.weight.detach()
            matrix = torch.ops.bioplaus.philox_fill(w, spec.seed, spec.stream, 0, spec.distribution, spec.scale)
        self.register_buffer("feedback_matrix", matrix)

    def _fans(self) -> Fans:
        raise NotImplementedError

    def _spec_args(self) -> tuple:
        """(feedback, seed, stream, step, distribution, scale) of the current step, positionally as the ops
        take them (does not advance the counter). The rule's mode, distribution and scale depend on the
        constructor's arguments only and are computed once."""
        base = self.__dict__.get("_spec_base")
        if base is None or base[0] != self.feedback:
            s = spec_for(self.feedback, self._fans(), scale=self.feedback_scale)
            base = self._spec_base = (self.feedback, s.feedback, s.distribution, s.scale)
        step = self.feedback_step if self.feedback == "brsf" else 0
        return (base[1], self._seed, self.stream, step, base[2], base[3])

    def _spec(self) -> FeedbackSpec:
        """The spec of the current step (does not advance the counter)."""
        return FeedbackSpec(*self._spec_args())

    def _forward_args(self) -> tuple:
        """The spec values for this forward's backward: "brsf" advances its counter first in training mode."""
        if self.feedback == "brsf" and self.training:
            self.feedback_step += 1
        return self._spec_args()

    def _forward_spec(self) -> FeedbackSpec:
        return FeedbackSpec(*self._forward_args())

    def _uses_backprop(self) -> bool:
        return self.feedback == "bp" or self._true_bp

    def feedback_weight(self) -> torch.Tensor:
        """The matrix (weight's shape) that the input gradient multiplies by at this step, materialised
        (for "brsf": the step of the latest training forward)."""
        if self.feedback == "dfa":
            raise RuntimeError(f"{type(self).__name__}: under 'dfa' the layer's input gradient is replaced by the "
                               "output error's projection; see DFA.feedback_matrices()")
        if self.feedback_matrix is not None:
            return self.feedback_matrix.detach().clone()
        return ops.feedback_source(self.weight.detach(), **self._spec().kwargs())

    # State-dict entries: only what cannot be rebuilt from the constructor's arguments, so that "bp", "usf"
    # and seeded layers have exactly torch's keys (a torch checkpoint loads into them, and back):
    #   feedback_matrix: "fa" with seed=None (a buffer);
    #   feedback_seed:   the drawn seed of "frsf"/"brsf" with seed=None (int64 scalar);
    #   feedback_step:   "brsf"'s step counter (int64 scalar).
    # The two scalars are kept as Python ints (no device sync or graph break in forward) and written/read here.
    def _scalar_state(self) -> Dict[str, int]:
        out = {}
        if self.seed is None and self.feedback in ("frsf", "brsf"):
            out["feedback_seed"] = self._seed
        if self.feedback == "brsf":
            out["feedback_step"] = self.feedback_step
        return out

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for key, value in self._scalar_state().items():
            destination[prefix + key] = torch.tensor(value, dtype=torch.int64)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        for key in self._scalar_state():
            full = prefix + key
            if full in unexpected_keys:
                unexpected_keys.remove(full)
            if full not in state_dict:
                missing_keys.append(full)
                continue
            value = int(state_dict[full])
            if key == "feedback_seed":
                self._seed = value
            else:
                self.feedback_step = value

    def _feedback_repr(self) -> str:
        if self.feedback in ("bp", "dfa"):
            return "" if self.feedback == "bp" else ", feedback='dfa'"
        s = f", feedback={self.feedback!r}"
        if self.feedback != "usf":
            s += f", seed={self.seed!r}"
        if self.stream:
            s += f", stream={self.stream}"
        return s + f", scale={self.feedback_scale!r}"


def autocast_inputs(*tensors: Optional[torch.Tensor]):
    """Under autocast, the floating tensors cast to autocast's dtype (as autocast does for F.linear/conv2d):
    the rule's ops then see one dtype in the forward and the backward (grad_y in that dtype, the saved
    tensors too), and the casts' own backward returns the gradients to the parameters' dtype. Unchanged
    otherwise. The first tensor (the layer's input) is never None."""
    # The common case first, without reading a tensor's device: that read and a generator here are a
    # noticeable share of a small layer's step (docs/performance.md section 7).
    if not (torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda")):
        return tensors
    device = tensors[0].device.type
    if device not in ("cpu", "cuda") or not torch.is_autocast_enabled(device):  # e.g. "meta" has no autocast
        return tensors
    dtype = torch.get_autocast_dtype(device)
    return tuple(t.to(dtype) if t is not None and t.is_floating_point() else t for t in tensors)


@contextlib.contextmanager
def true_backprop(model: torch.nn.Module) -> Iterator[None]:
    """Inside the block every feedback module of ``model`` (and DFA's error injection) runs plain backprop."""
    mods = [m for m in model.modules() if isinstance(m, FeedbackMixin) or hasattr(m, "_dfa_injection_off")]
    saved = [m._true_bp if isinstance(m, FeedbackMixin) else m._dfa_injection_off for m in mods]
    try:
        for m in mods:
            if isinstance(m, FeedbackMixin):
                m._true_bp = True
            else:
                m._dfa_injection_off = True
        yield
    finally:
        for m, v in zip(mods, saved):
            if isinstance(m, FeedbackMixin):
                m._true_bp = v
            else:
                m._dfa_injection_off = v
