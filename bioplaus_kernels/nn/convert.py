"""convert(): swap a model's Linear / Conv2d (and LocallyConnected2d) layers for the library's modules with a
feedback rule, or untie its convolutions into locally connected layers."""
from __future__ import annotations

import fnmatch
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..feedback import RULES, Scale, check_rule, check_scale
from .conv2d import Conv2d
from .dfa import DFA
from .lc2d import LocallyConnected2d
from .linear import Linear

_LAYERS = (nn.Linear, nn.Conv2d, LocallyConnected2d)
Exclude = Union[str, type, Iterable[Union[str, type]]]


def convert(model: nn.Module, feedback: str, *, exclude: Exclude = (), copy_weights: bool = True,
            untie: bool = False, input_size: Optional[Sequence[int]] = None, seed: Optional[int] = None,
            output_dim: Optional[int] = None, last_layer: str = "bp", scale: Scale = "glorot") -> nn.Module:
    """Give every Linear, Conv2d and LocallyConnected2d layer of ``model`` the feedback rule ``feedback``.

    IN PLACE: the layers are replaced inside ``model`` (new module objects in the same places) and ``model``
    is returned (for "dfa": a :class:`~bioplaus_kernels.nn.dfa.DFA` wrapper around it). Pass
    ``copy.deepcopy(model)`` to keep the original.

    Args:
        feedback: "bp", "fa", "usf", "frsf", "brsf" or "dfa" (bioplaus_kernels.feedback).
        exclude: layer names (fnmatch patterns on the qualified name, e.g. "layer4.*") and/or module types
            to leave untouched.
        copy_weights: True: the new layers start from the old weights and biases (outputs are identical);
            False: they keep their own fresh initialisation (torch's for Linear/Conv2d).
        untie: turn every Conv2d into a LocallyConnected2d (LocallyConnected2d.from_conv2d); each layer's
            input size comes from a dry run of the model (eval mode, no gradients, one zero sample of
            ``input_size``, restoring the training flags afterwards).
        input_size: the shape of ONE input sample without the batch dimension, e.g. (3, 224, 224); needed by
            untie=True.
        seed: None: every layer draws its own seed from torch's generator ("fa" then stores B); an int:
            every layer uses this seed with its own stream (its index in the order of conversion), and
            nothing is stored.
        output_dim: the size K of the model's output; required by "dfa".
        last_layer: "bp" (default; Xiao et al.): the last Linear/Conv2d/LC layer in registration order keeps
            backprop (it is still replaced, with feedback="bp", so that metrics report it, and untie still
            unties it); "convert": it gets the rule too (Bartunov et al.'s FA and DFA).
        scale: "glorot" (default), "xiao" or a positive float (bioplaus_kernels.feedback); DFA takes "glorot"
            or a float (see nn.dfa).

    Every layer's weight and bias gradients remain the true local gradients; only the signal sent to the
    layer below changes. Layers inside nn.MultiheadAttention (which reads their weights without calling
    them) are left as they are. Modules keep their training flag and parameters their requires_grad.
    """
    rule = check_rule(feedback, RULES, where="convert: feedback")
    if last_layer not in ("bp", "convert"):
        raise ValueError(f"convert: last_layer must be 'bp' or 'convert', got {last_layer!r}")
    if rule == "dfa" and output_dim is None:
        raise ValueError("convert: feedback='dfa' needs output_dim (the size of the model's output, e.g. the "
                         "number of classes): every layer receives the output error through a [output_dim, D] "
                         "matrix")
    if untie and input_size is None:
        raise ValueError("convert: untie=True needs input_size, the shape of one input sample (e.g. (3, 32, 32)), "
                         "for the dry run that finds each convolution's input size")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
        raise ValueError(f"convert: seed must be None or a non-negative int, got {seed!r}")
    check_scale(scale, where="convert: scale")
    names, types = _split_exclude(exclude)
    # nn.MultiheadAttention reads its out_proj's weight directly and never calls its forward: left alone
    inside_attention = {id(c) for m in model.modules() if isinstance(m, nn.MultiheadAttention) for c in m.modules()}
    layers = [(n, m) for n, m in model.named_modules()
              if isinstance(m, _LAYERS) and n and id(m) not in inside_attention]
    if not layers and isinstance(model, _LAYERS):
        raise ValueError("convert: model is itself a single layer; wrap it (e.g. in nn.Sequential) to convert it")
    last_name = layers[-1][0] if layers else None
    sizes = _conv_input_sizes(model, input_size) if untie else {}
    layer_rule = "bp" if rule == "dfa" else rule
    stream = 0
    for name, old in layers:
        if any(fnmatch.fnmatchcase(name, p) for p in names) or isinstance(old, types):
            continue
        keep_bp = name == last_name and last_layer == "bp"
        this_rule = "bp" if keep_bp else layer_rule
        to_lc = untie and isinstance(old, nn.Conv2d)
        if to_lc and name not in sizes:
            raise ValueError(f"convert: untie: the dry run at input_size={tuple(input_size)} did not run the "
                             f"Conv2d {name!r}, so its input size is unknown (exclude it)")
        try:
            new = _replacement(old, this_rule, seed, stream, scale, copy_weights, sizes.get(name) if to_lc else None)
        except (ValueError, TypeError) as err:
            raise type(err)(f"convert: layer {name!r}: {err}") from None
        if rule == "dfa" and not keep_bp:
            new.feedback = "dfa"
        stream += 1
        new.train(old.training)
        _set_submodule(model, name, new)
    if rule == "dfa":
        return DFA(model, output_dim, seed=seed, scale=scale)
    return model


def _split_exclude(exclude: Exclude) -> Tuple[List[str], Tuple[type, ...]]:
    items = [exclude] if isinstance(exclude, (str, type)) else list(exclude)
    names = [e for e in items if isinstance(e, str)]
    types = tuple(e for e in items if isinstance(e, type))
    bad = [e for e in items if not isinstance(e, (str, type))]
    if bad:
        raise TypeError(f"convert: exclude takes layer names and module types, got {bad!r}")
    return names, types


def _replacement(old: nn.Module, rule: str, seed: Optional[int], stream: int, scale: Scale, copy_weights: bool,
                 lc_input_size: Optional[Tuple[int, int]]) -> nn.Module:
    fb = dict(feedback=rule, seed=seed, stream=stream, scale=scale)
    w = old.weight
    factory = dict(device=w.device, dtype=w.dtype)
    has_bias = old.bias is not None
    if lc_input_size is not None:
        new = LocallyConnected2d.from_conv2d(old, lc_input_size, **fb)
        if not copy_weights:
            new.reset_parameters()
        _copy_requires_grad(old, new)
        return new
    if isinstance(old, nn.Linear):
        new = Linear(old.in_features, old.out_features, has_bias, **factory, **fb)
    elif isinstance(old, nn.Conv2d):
        new = Conv2d(old.in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, old.dilation,
                     old.groups, has_bias, old.padding_mode, **factory, **fb)
    else:
        new = LocallyConnected2d(old.in_channels, old.out_channels, old.input_size, old.kernel_size, old.stride,
                                 old.padding, old.dilation, has_bias, **factory, **fb)
    if copy_weights:
        with torch.no_grad():
            new.weight.copy_(old.weight)
            if has_bias:
                new.bias.copy_(old.bias)
    _copy_requires_grad(old, new)
    return new


def _copy_requires_grad(old: nn.Module, new: nn.Module) -> None:
    new.weight.requires_grad_(old.weight.requires_grad)
    if old.bias is not None:
        new.bias.requires_grad_(old.bias.requires_grad)


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _conv_input_sizes(model: nn.Module, input_size: Sequence[int]) -> Dict[str, Tuple[int, int]]:
    """{conv name: (H, W) of its input} from one forward of a zero sample of ``input_size``."""
    convs = {m: n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    seen: Dict[str, Tuple[int, int]] = {}

    def hook(module, args):
        name = convs[module]
        hw = tuple(int(v) for v in args[0].shape[-2:])
        if seen.setdefault(name, hw) != hw:
            raise ValueError(f"convert: untie: the Conv2d {name!r} runs on inputs of two sizes ({seen[name]} and "
                             f"{hw}); a locally connected layer needs one")

    try:
        p = next(model.parameters())
        factory = dict(device=p.device, dtype=p.dtype)
    except StopIteration:
        factory = {}
    handles = [m.register_forward_pre_hook(hook) for m in convs]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_size, **factory))
    finally:
        for h in handles:
            h.remove()
        for m, t in modes.items():
            m.training = t
    return seen
