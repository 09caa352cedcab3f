#!/usr/bin/env python3
"""Benchmark of the locally connected 2D layer (bioplaus_kernels) against the unfold+bmm baseline.

For every shape and each of four passes it times ``ours`` (the bioplaus_kernels operators) and ``base``
(``reference.lc2d.lc2d_unfold_bmm``, the formulation users write today: unfold -> [P, N, K] -> torch.bmm
with its own [P, K, C_out] weight holding the same values), and reports median time, speedup
(base/ours), achieved GFLOP/s and GB/s, time over the shape's roofline floor, and the peak extra memory
of a full training step.

Passes
  fwd    forward under no_grad. ours: torch.ops.bioplaus.lc2d_forward; base: lc2d_unfold_bmm.
  dgrad  input gradient alone. ours: torch.ops.bioplaus.lc2d_backward_input(grad_y, weight) called
         directly; base: torch.autograd.grad(y, x, grad_y, retain_graph=True) on one forward graph built
         (untimed) before the repeats, i.e. the backward pieces for x only (bmm with W^T, permute, fold, pad).
  wgrad  weight and bias gradients alone. ours: torch.ops.bioplaus.lc2d_backward_weight(grad_y, x) (reads x;
         returns dW and db); base: torch.autograd.grad(y, (w, b), grad_y, retain_graph=True) on the same
         retained graph (the bmm of the im2col matrix saved by the forward, and the bias reduction; the
         unfold itself was paid in the forward and is not counted here).
  step   forward + backward to x, weight and bias with a fixed grad_y (torch.autograd.grad), each impl
         through its autograd formula. Peak memory is measured for this pass.

Shapes (SAME padding with TensorFlow semantics, out = ceil(in / stride), the odd pad at bottom/right):
every locally connected layer of the reference networks of Bartunov et al. 2018 (appendix Table 3) and a
224x224 3->64 7x7 stride-2 ImageNet stem with padding 3. Groups: mnist (2 layers), cifar (3), imagenet (7),
stem (1). --shape paper is the paper's layers (mnist, cifar, imagenet); --shape H,W,Cin,Cout,k,s one layer
of that geometry (input H x W, k x k kernel, stride s, SAME padding). The paper does not state its batch
size; 128 is used for every net unless --batch says otherwise (recorded per row).

Floors (per pass, elem = bytes per element of --dtype):
  FLOPs = 2 * N * P * C_out * K, P = H_out * W_out, K = C_in * kH * kW (the step counts three passes).
  Minimal bytes: fwd x + W + y + b; dgrad dy + W + dx; wgrad x + dy + dW + db; step the sum.
  floor = max(FLOPs / peak FLOP/s, bytes / peak bandwidth), with both ceilings measured in the same run:
  a large matmul in the run's dtype (CPU 2048^3 fp32; CUDA 8192^3, TF32 as torch is configured, off by
  default and recorded) and a large copy (bytes read + written). The columns t/floor say how far from it.

Timing: median of --repeats calls after --warmup calls, ours and base interleaved. CPU: perf_counter, a
64 MB buffer written between calls. CUDA: CUDA events around each call; a 256 MB buffer written between
calls (outside the timed region) flushes the L2, so no shape is timed from L2.

Peak memory (step): CUDA: torch.cuda.max_memory_allocated() after reset_peak_memory_stats(), minus the
memory allocated before the step (inputs, weights, grad_y). CPU: in a fresh Python process per (shape,
impl) (python -m bioplaus_kernels.bench.lc2d --mem-probe): warm the libraries up on a tiny layer, allocate
the inputs, run one untimed step of the shape (the steady state of training: one-time library buffers for
this shape exist from the second step on), release freed heap (malloc_trim), reset the RSS high-water mark
(/proc/self/clear_refs), read VmRSS, run exactly one more step, read the high-water mark VmHWM; the
difference is the step's extra peak. (getrusage's ru_maxrss is only the fallback: after fork + exec it
starts at the parent's peak.) The method is validated in the same run on a known 200 MB allocation and on
an empty step (reported in the JSON and the header).
"need" is what any step must hold beyond its inputs: y + dx + dW + db.

Feedback modes (--feedback): lc2d_backward_input per feedback spec on the same grad_y and weight, interleaved:
"weight" (backprop, or a stored B), "random" (B regenerated from the generator while staged, never stored),
"sign" (B = scale * sign(W) on the fly), "random_sign" (|R| * sign(W)); medians and the ratios mode/weight,
in the JSON's "feedback_rows" and a second table. Each mode is first checked to equal, bit for bit,
"weight" mode on the materialised B (ops.feedback_source).

Algorithms (--algorithm): "ours" is the selection a user gets (bioplaus_kernels.backends.lc2d: forced, autotuned
or the default table); each row records which algorithm every pass took ("selected"). --algorithm all also times
every algorithm of the device forced on every pass, interleaved with the rest ("algo_ms", "algo_over_floor"):
the data benchmarks/lc2d_selection_table.py builds the default table from. --algorithm NAME forces one.
--tf32 lets fp32 matmuls use TF32 (torch.backends.cuda.matmul.allow_tf32): the library algorithm, the
baseline's bmm and the ceiling then run on tensor cores, and fused_tc takes float32.

Output: a JSON file (machine, versions, git revision, date, settings, ceilings, memory-method
validation, shapes, one row per (shape, pass)) and a short table printed last. The same cases are
pytest-benchmark tests: ``pytest benchmarks/bench_lc2d.py`` (CUDA cases carry the `cuda` mark and are
skipped without a GPU; environment: BIOPLAUS_BENCH_SHAPES, BIOPLAUS_BENCH_BATCH, BIOPLAUS_BENCH_DTYPE,
BIOPLAUS_BENCH_ROUNDS).

Examples:
  bioplaus bench lc2d --shape paper --device cpu --batch 8      # the paper's 12 layers
  bioplaus bench lc2d --shape 32,32,3,64,5,2 --json out.json    # one layer: H,W,Cin,Cout,k,s
  python3 benchmarks/bench_lc2d.py --device cpu                 # mnist + cifar, batch 128 (~1 min, 2 cores)
  python3 benchmarks/bench_lc2d.py --device cpu --shapes all --batch 32
  python3 benchmarks/bench_lc2d.py --device cuda --dtype bfloat16 --json out.json --plot out.png
  python3 benchmarks/bench_lc2d.py --device cpu --feedback       # also the input gradient per feedback mode
  python3 benchmarks/bench_lc2d.py --table-from out.json
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

import bioplaus_kernels
from bioplaus_kernels import ops
from bioplaus_kernels._geometry import output_size, resolve_padding
from bioplaus_kernels.reference.lc2d import lc2d_unfold_bmm, weight_to_pkc

from . import common, jax_lc2d
from .common import UsageError

_ops = torch.ops.bioplaus
_lc2d = bioplaus_kernels.backends.lc2d

DEFAULT_BATCH = 128
BATCH_NOTE = ("Bartunov et al. 2018 do not state their batch size; 128 is this benchmark's choice for every "
              "net (override with --batch; the batch of each row is recorded)")
PASSES = ("fwd", "dgrad", "wgrad", "step")
IMPLS = ("ours", "base")
IMPL_NAMES = {"ours": "bioplaus_kernels (torch.ops.bioplaus.lc2d_*)",
              "base": "unfold+bmm (bioplaus_kernels.reference.lc2d.lc2d_unfold_bmm, weight [P, K, C_out])"}
DTYPE_NAMES = ("float32", "bfloat16", "float16")
DTYPES = {k: common.DTYPES[k] for k in DTYPE_NAMES}
FEEDBACK_MODES = ("weight", "random", "sign", "random_sign")
FEEDBACK_SPEC = dict(seed=1234, stream=3, step=17, scale=0.05)
# Sanity check of ours against base before timing: max |ours - base| / max |base| per tensor.
CHECK_TOL = {torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 2e-2}
SHAPE_FORM = "H,W,Cin,Cout,k,s"
_MODULE = __spec__.name if __spec__ else __name__  # what the memory probe runs with python -m (also as __main__)


# ---------------------------------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Shape:
    name: str
    group: str
    h: int             # input height
    w: int             # input width
    c_in: int
    c_out: int
    k: int
    s: int
    padding: object = "same"

    @property
    def hw(self) -> Tuple[int, int]:
        return (self.h, self.w)

    @property
    def padding4(self) -> Tuple[int, int, int, int]:
        return tuple(resolve_padding(self.padding, self.hw, (self.k, self.k), (self.s, self.s), (1, 1)))

    @property
    def out(self) -> Tuple[int, int]:
        return tuple(output_size(self.hw, (self.k, self.k), (self.s, self.s), self.padding4, (1, 1)))

    @property
    def P(self) -> int:
        return self.out[0] * self.out[1]

    @property
    def K(self) -> int:
        return self.c_in * self.k * self.k

    @property
    def params(self) -> int:
        return self.P * self.c_out * self.K + self.c_out * self.P

    def geometry(self) -> str:
        pad = "" if self.padding == "same" else f"p{self.padding}"
        return f"{self.h}x{self.w} {self.c_in}->{self.c_out} k{self.k}s{self.s}{pad}"


def _square(name: str, group: str, size: int, c_in: int, c_out: int, k: int, s: int, padding="same") -> Shape:
    return Shape(name, group, size, size, c_in, c_out, k, s, padding)


SHAPES: List[Shape] = [
    # Bartunov et al. 2018, appendix Table 3: LC(k x k, channels, stride), SAME padding.
    _square("mnist-L1", "mnist", 28, 1, 32, 3, 2),
    _square("mnist-L2", "mnist", 14, 32, 64, 3, 2),
    _square("cifar-L1", "cifar", 32, 3, 64, 5, 2),
    _square("cifar-L2", "cifar", 16, 64, 128, 5, 2),
    _square("cifar-L3", "cifar", 8, 128, 256, 3, 1),
    _square("imagenet-L1", "imagenet", 224, 3, 48, 9, 4),
    _square("imagenet-L2", "imagenet", 56, 48, 48, 3, 2),
    _square("imagenet-L3", "imagenet", 28, 48, 96, 5, 1),
    _square("imagenet-L4", "imagenet", 28, 96, 96, 3, 2),
    _square("imagenet-L5", "imagenet", 14, 96, 192, 3, 1),
    _square("imagenet-L6", "imagenet", 14, 192, 192, 3, 2),
    _square("imagenet-L7", "imagenet", 7, 192, 384, 3, 1),
    # An untied ImageNet stem (ResNet's 7x7/2 conv with its padding of 3).
    _square("stem", "stem", 224, 3, 64, 7, 2, 3),
]
GROUPS = ("mnist", "cifar", "imagenet", "stem")
PAPER_GROUPS = ("mnist", "cifar", "imagenet")
DEFAULT_GROUPS = {"cpu": ("mnist", "cifar"), "cuda": GROUPS}
TINY = _square("tiny", "tiny", 8, 2, 4, 3, 1)  # warms the libraries up in a memory probe


def custom_shape(fields: Tuple[int, ...]) -> Shape:
    """--shape H,W,Cin,Cout,k,s: one layer of that geometry, SAME padding."""
    return Shape("custom", "custom", *fields)


def select_shapes(spec: Optional[str], device: str, shape=None) -> List[Shape]:
    """--shape ("paper" or a field tuple) where given; else --shapes: 'default', 'all', or a comma list of
    group names and shape names."""
    if shape == "paper":
        spec = ",".join(PAPER_GROUPS)
    elif shape is not None:
        return [custom_shape(shape)]
    if spec in (None, "", "default"):
        names = DEFAULT_GROUPS[device]
    elif spec == "all":
        names = GROUPS
    else:
        names = tuple(t.strip() for t in spec.split(",") if t.strip())
    by_name = {s.name: s for s in SHAPES}
    out: List[Shape] = []
    for n in names:
        if n in GROUPS:
            out += [s for s in SHAPES if s.group == n]
        elif n in by_name:
            out.append(by_name[n])
        else:
            raise UsageError(f"unknown shape or group {n!r}; groups: {', '.join(GROUPS)}; shapes: "
                             f"{', '.join(by_name)}; or 'all' / 'default'")
    seen, uniq = set(), []
    for s in out:
        if s.name not in seen:
            seen.add(s.name)
            uniq.append(s)
    return uniq


def costs(shape: Shape, batch: int, elem: int) -> Dict[str, Dict[str, float]]:
    """FLOPs and minimal bytes per pass (see the module docstring)."""
    N, P, K, Co = batch, shape.P, shape.K, shape.c_out
    flops = 2.0 * N * P * Co * K
    x = N * shape.c_in * shape.h * shape.w
    w, y, b = P * Co * K, N * Co * P, Co * P
    c = {"fwd": {"flops": flops, "bytes": float(x + w + y + b) * elem},
         "dgrad": {"flops": flops, "bytes": float(y + w + x) * elem},
         "wgrad": {"flops": flops, "bytes": float(x + y + w + b) * elem}}
    c["step"] = {"flops": 3 * flops, "bytes": sum(v["bytes"] for v in c.values())}
    c["need_step_bytes"] = float(y + x + w + b) * elem  # y + dx + dW + db: what any step must allocate
    return c


# ---------------------------------------------------------------------------------------------------
# One (shape, batch, device, dtype): tensors and the timed callables
# ---------------------------------------------------------------------------------------------------
class Case:
    def __init__(self, shape: Shape, batch: int, device: str, dtype: torch.dtype, impls: Sequence[str] = IMPLS,
                 seed: int = 0):
        self.shape, self.batch, self.device, self.dtype = shape, batch, device, dtype
        self.stride, self.pad4, self.dil = [shape.s, shape.s], list(shape.padding4), [1, 1]
        self.ksize, self.out = [shape.k, shape.k], shape.out
        g = torch.Generator(device=device).manual_seed(seed)
        f = dict(device=device, dtype=dtype)
        # Glorot-uniform weights with the convolution fans, as LocallyConnected2d initialises them.
        bound = (6.0 / ((shape.c_in + shape.c_out) * shape.k * shape.k)) ** 0.5
        self.x = torch.randn(batch, shape.c_in, *shape.hw, generator=g, **f)
        w = (torch.rand(*self.out, shape.c_out, shape.c_in, shape.k, shape.k, generator=g, **f) * 2 - 1) * bound
        self.b = torch.randn(shape.c_out, *self.out, generator=g, **f) * 0.1
        self.gy = torch.randn(batch, shape.c_out, *self.out, generator=g, **f)
        self.w = w if "ours" in impls else None
        self.w_pkc = weight_to_pkc(w) if "base" in impls else None   # same values, the baseline's layout
        del w
        for t in (self.x, self.w, self.b, self.w_pkc):
            if t is not None:
                t.requires_grad_(True)

    # -- the two implementations --------------------------------------------------------------------
    def ours_forward(self, x, w, b):
        return _ops.lc2d(x, w, b, self.stride, self.pad4, self.dil)  # the layer op (its autograd: backprop)

    def base_forward(self, x, w_pkc, b):
        return lc2d_unfold_bmm(x, w_pkc, b, self.stride, self.pad4, self.dil, kernel_size=self.ksize,
                               output_size=self.out)

    def step_fn(self, impl: str) -> Callable[[], Tuple[torch.Tensor, ...]]:
        """Forward + backward to (x, weight, bias); returns (y, dx, dW, db)."""
        x, b, gy = self.x, self.b, self.gy
        if impl == "ours":
            w, fwd = self.w, self.ours_forward
        else:
            w, fwd = self.w_pkc, self.base_forward

        def step():
            y = fwd(x, w, b)
            return (y.detach(),) + torch.autograd.grad(y, (x, w, b), gy)
        return step

    def make_fn(self, impl: str, pass_: str) -> Callable[[], object]:
        """The callable timed for (impl, pass). For the baseline's dgrad/wgrad it holds a forward graph."""
        x, b, gy = self.x, self.b, self.gy
        if pass_ == "step":
            return self.step_fn(impl)
        if impl == "ours":
            w = self.w
            xd, wd, bd = x.detach(), w.detach(), b.detach()
            if pass_ == "fwd":
                return lambda: _ops.lc2d_forward(xd, wd, bd, self.stride, self.pad4, self.dil)
            if pass_ == "dgrad":
                hw = list(self.shape.hw)
                return lambda: _ops.lc2d_backward_input(gy, wd, hw, self.stride, self.pad4, self.dil)
            if pass_ == "wgrad":
                return lambda: _ops.lc2d_backward_weight(gy, xd, self.ksize, self.stride, self.pad4, self.dil)
        else:
            w = self.w_pkc
            if pass_ == "fwd":
                xd, wd, bd = x.detach(), w.detach(), b.detach()
                return lambda: self.base_forward(xd, wd, bd)
            y = self.base_forward(x, w, b)          # one retained graph, built outside the timed region
            if pass_ == "dgrad":
                return lambda: torch.autograd.grad(y, (x,), gy, retain_graph=True)
            if pass_ == "wgrad":
                return lambda: torch.autograd.grad(y, (w, b), gy, retain_graph=True)
        raise ValueError(f"unknown impl/pass {impl}/{pass_}")

    def verify(self) -> Dict[str, Dict[str, float]]:
        """One full step of each impl; the outputs and the three gradients must agree. Also checks the
        directly-called gradient operators against the autograd step."""
        tol = CHECK_TOL[self.dtype]
        got = self.step_fn("ours")()
        want = self.step_fn("base")()
        names = ("y", "dx", "dW", "db")
        got = list(got)
        got[2] = weight_to_pkc(got[2])
        res = {}
        for n, a, e in zip(names, got, want):
            assert a.shape == e.shape, f"{self.shape.name}: {n} shape {tuple(a.shape)} vs {tuple(e.shape)}"
            diff = (a.float() - e.float()).abs().max().item()
            scale = e.float().abs().max().item()
            rel = diff / max(scale, 1e-30)
            res[n] = {"max_abs_diff": diff, "max_abs_ref": scale, "rel": rel}
            assert rel <= tol and diff == diff, (f"{self.shape.name} ({self.device}, {self.dtype}): ours and the "
                                                 f"unfold+bmm baseline differ in {n}: max abs diff {diff:.3g}, "
                                                 f"{rel:.3g} of max |ref| {scale:.3g} (tolerance {tol})")
        with torch.no_grad():
            dx = self.make_fn("ours", "dgrad")()
            dw, db = self.make_fn("ours", "wgrad")()
        assert torch.equal(dx, got[1]) or (dx.float() - got[1].float()).abs().max().item() <= tol * max(
            res["dx"]["max_abs_ref"], 1e-30), f"{self.shape.name}: lc2d_backward_input differs from the step's dx"
        assert (weight_to_pkc(dw).float() - got[2].float()).abs().max().item() <= tol * max(
            res["dW"]["max_abs_ref"], 1e-30), f"{self.shape.name}: lc2d_backward_weight differs from the step's dW"
        del dx, dw, db, got, want
        return res


def feedback_dgrad_fn(case: Case, mode: str) -> Callable[[], torch.Tensor]:
    """lc2d_backward_input of the case's grad_y through the feedback matrix of `mode` (FEEDBACK_SPEC)."""
    w, gy, hw = case.w.detach(), case.gy, list(case.shape.hw)
    spec = (mode, FEEDBACK_SPEC["seed"], FEEDBACK_SPEC["stream"], FEEDBACK_SPEC["step"], "uniform",
            FEEDBACK_SPEC["scale"])
    return lambda: _ops.lc2d_backward_input(gy, w, hw, case.stride, case.pad4, case.dil, *spec)


def verify_feedback(case: Case) -> None:
    """Every mode equals "weight" mode on the materialised B, bit for bit."""
    for mode in FEEDBACK_MODES[1:]:
        B = ops.feedback_source(case.w.detach(), mode, distribution="uniform", **FEEDBACK_SPEC)
        want = _ops.lc2d_backward_input(case.gy, B, list(case.shape.hw), case.stride, case.pad4, case.dil)
        assert torch.equal(feedback_dgrad_fn(case, mode)(), want), f"{case.shape.name}: {mode} != weight mode on B"


def bench_feedback(shape: Shape, args, flush: common.Flusher) -> Dict:
    case = Case(shape, args.batch, args.device, DTYPES[args.dtype], impls=("ours",))
    verify_feedback(case)
    samples = common.time_interleaved([feedback_dgrad_fn(case, m) for m in FEEDBACK_MODES], args.device,
                                      args.repeats, args.warmup, flush)
    row = {"shape": shape.name, "geometry": shape.geometry(), "batch": args.batch, "dtype": args.dtype}
    for mode, smp in zip(FEEDBACK_MODES, samples):
        st = common.summarize(smp)
        row[f"{mode}_ms"], row[f"{mode}_iqr_ms"], row[f"{mode}_samples_ms"] = (
            st["median_ms"], [st["q1_ms"], st["q3_ms"]], st["samples_ms"])
    for mode in FEEDBACK_MODES:
        row[f"{mode}_over_weight"] = row[f"{mode}_ms"] / row["weight_ms"]
    return row


def format_feedback_table(result: Dict) -> str:
    rows = result.get("feedback_rows") or []
    head = f"{'shape':<11} {'geometry':<20} " + " ".join(f"{m:>11}" for m in FEEDBACK_MODES) + " | " + " ".join(
        f"{m + '/w':>13}" for m in FEEDBACK_MODES[1:])
    lines = ["lc2d_backward_input per feedback mode: median ms, and the ratio to weight mode (backprop)", head,
             "-" * len(head)]
    for r in rows:
        lines.append(f"{r['shape']:<11} {r['geometry']:<20} " + " ".join(f"{_ms(r[m + '_ms']):>11}" for m in FEEDBACK_MODES)
                     + " | " + " ".join(f"{r[m + '_over_weight']:13.2f}" for m in FEEDBACK_MODES[1:]))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# The CPU memory probe: runs in a fresh process (python -m bioplaus_kernels.bench.lc2d --mem-probe JSON)
# ---------------------------------------------------------------------------------------------------
def _mem_probe_main(spec_json: str) -> None:
    spec = json.loads(spec_json)
    torch.set_num_threads(int(spec.get("threads", torch.get_num_threads())))
    kind = spec["kind"]
    if kind == "case":
        impl, dtype = spec["impl"], DTYPES[spec["dtype"]]
        shape = Shape(**spec["shape"])
        # Warm the libraries up (OpenMP pool, BLAS, autograd) on a tiny layer first: their one-time buffers
        # are not the step's. The tiny layer's memory is freed and trimmed before the measurement.
        tiny = Case(TINY, 2, "cpu", dtype, impls=(impl,))
        tiny.step_fn(impl)()
        del tiny
        # Steady state: one untimed step of this shape first, then the measured step (as in training,
        # where every step after the first meets the same library buffers).
        res = common.rss_peak_growth(lambda: Case(shape, int(spec["batch"]), "cpu", dtype, impls=(impl,)),
                                     lambda case: case.step_fn(impl)(), warm_steps=1)
    else:
        step, expected = common.validation_step(kind)
        res = common.rss_peak_growth(lambda: None, step)
        res["expected_bytes"] = expected
    print(json.dumps(res))


def cpu_memory_validation(threads: int) -> Dict:
    out = {}
    for kind in ("alloc200", "none"):
        r = common.cpu_peak_rss_probe(_MODULE, {"kind": kind, "threads": threads})
        out[kind] = {"expected_mb": r["expected_bytes"] / common.MB, "measured_mb": r["extra_bytes"] / common.MB,
                     "hwm_reset": r["hwm_reset"], "upper_bound_only": r["upper_bound_only"]}
    return out


# ---------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------
def _rate(v: float, ms: float) -> Optional[float]:
    return v / (ms * 1e-3) / 1e9 if ms and ms > 0 else None


# The selection pass each timed pass runs (the step runs all three).
SELECTION_PASS = {"fwd": "forward", "dgrad": "backward_input", "wgrad": "backward_weight"}


def forced_passes(algorithm: str, device: str, dtype: torch.dtype) -> Dict[str, str]:
    """{pass: algorithm} for the passes that have `algorithm` on device in dtype (the others keep the
    default selection)."""
    return {q: algorithm for q in SELECTION_PASS.values()
            if algorithm in bioplaus_kernels.backends.candidates(device, dtype, q)}


def forcing(fn: Callable[[], object], passes: Dict[str, str]) -> Callable[[], object]:
    """fn with the algorithms of `passes` forced while it runs."""
    def run():
        with _lc2d.force(**passes):
            return fn()
    return run


def bench_shape(shape: Shape, args, ceilings: Dict, flush: common.Flusher, log) -> Tuple[Dict, List[Dict]]:
    dev, dtype, batch = args.device, DTYPES[args.dtype], args.batch
    elem = torch.empty((), dtype=dtype).element_size()
    t0 = time.perf_counter()
    case = Case(shape, batch, dev, dtype)
    check = case.verify()
    c = costs(shape, batch, elem)
    rows = []
    jax_step = None
    if args.jax:  # the peer: JAX's conv_general_dilated_local, full step only, timed beside ours
        platform = jax_lc2d.backend(dev)
        if platform is None:
            log(f"  {shape.name}: no JAX backend for {dev}; the jax row is left out")
        else:
            jax_step = jax_lc2d.make_step(case, platform)
            check["jax"] = jax_lc2d.compare(case, jax_step(), case.step_fn("ours")())
            assert max(check["jax"].values()) <= CHECK_TOL[dtype], f"{shape.name}: JAX's step differs: {check['jax']}"
    algorithms = bioplaus_kernels.backends.ALGORITHMS[dev] if args.algorithm == "all" else ()
    for p in PASSES:
        # the algorithms that run this pass (the step: those that run any of its three passes)
        runs = [a for a in algorithms if (forced_passes(a, dev, dtype) if p == "step"
                                          else SELECTION_PASS[p] in forced_passes(a, dev, dtype))]
        names = list(IMPLS)
        fns = [case.make_fn("ours", p), case.make_fn("base", p)]
        fns[0]()
        selected = {k: v for k, v in _lc2d.last().items() if p == "step" or k == SELECTION_PASS[p]}
        if p == "step" and jax_step is not None:
            names.append("jax")
            fns.append(jax_step)
        for a in runs:
            names.append(f"algo:{a}")
            fns.append(forcing(case.make_fn("ours", p), forced_passes(a, dev, dtype)))
        repeats = args.repeats
        # One untimed-for-the-record round: warm-up, and an estimate for the per-case time budget.
        warm = common.time_interleaved(fns, dev, 1, max(0, args.warmup - 1), flush)
        per_round_s = sum(w[0] for w in warm) * 1e-3
        if dev == "cpu" and args.max_case_seconds > 0 and per_round_s * repeats > args.max_case_seconds:
            repeats = max(3, int(args.max_case_seconds / max(per_round_s, 1e-9)))
        samples = common.time_interleaved(fns, dev, repeats, 0, flush)
        del fns
        flops, nbytes = c[p]["flops"], c[p]["bytes"]
        row = {"shape": shape.name, "group": shape.group, "geometry": shape.geometry(), "batch": batch,
               "dtype": args.dtype, "pass": p, "repeats": repeats, "flops": flops, "bytes": nbytes,
               **common.floor(flops, nbytes, ceilings), "selected": selected}
        floor_ms = row["floor_ms"]
        for impl, s in zip(names, samples):
            st = common.summarize(s)
            ms = st["median_ms"]
            if impl.startswith("algo:"):
                row.setdefault("algo_ms", {})[impl[5:]] = ms
                row.setdefault("algo_over_floor", {})[impl[5:]] = ms / floor_ms
                continue
            row[f"{impl}_ms"] = ms
            row[f"{impl}_min_ms"] = st["min_ms"]
            row[f"{impl}_iqr_ms"] = [st["q1_ms"], st["q3_ms"]]
            row[f"{impl}_gflops"] = _rate(flops, ms)
            row[f"{impl}_gbs"] = _rate(nbytes, ms)
            row[f"{impl}_over_floor"] = ms / floor_ms
            row[f"{impl}_samples_ms"] = st["samples_ms"]
        row["speedup"] = row["base_ms"] / row["ours_ms"]
        if "jax_ms" in row:
            row["jax_speedup"] = row["jax_ms"] / row["ours_ms"]  # > 1: ours is faster than JAX
        for k in ("ours_peak_mb", "base_peak_mb", "mem_ratio", "need_mb"):
            row[k] = None
        rows.append(row)
    # Peak extra memory of one full step.
    step_row = rows[-1]
    step_row["need_mb"] = c["need_step_bytes"] / common.MB
    mem_detail = {}
    if args.no_memory:
        del case
    elif dev == "cuda":
        gc.collect()
        for impl in IMPLS:
            step_row[f"{impl}_peak_mb"] = common.cuda_peak_extra_bytes(case.step_fn(impl)) / common.MB
        del case
        torch.cuda.empty_cache()
    else:
        del case
        gc.collect()
        for impl in IMPLS:
            r = common.cpu_peak_rss_probe(_MODULE, {"kind": "case", "shape": dataclasses.asdict(shape),
                                                     "batch": batch, "impl": impl, "dtype": args.dtype,
                                                     "threads": torch.get_num_threads()})
            step_row[f"{impl}_peak_mb"] = r["extra_bytes"] / common.MB
            mem_detail[impl] = {k: r[k] for k in ("rss_before_kib", "hwm_after_kib", "hwm_reset", "upper_bound_only")}
    if step_row["base_peak_mb"] and step_row["ours_peak_mb"] is not None:
        step_row["mem_ratio"] = step_row["ours_peak_mb"] / step_row["base_peak_mb"]
    info = {"name": shape.name, "group": shape.group, "geometry": shape.geometry(), "batch": batch,
            "input": [batch, shape.c_in, shape.h, shape.w], "c_out": shape.c_out, "kernel": shape.k,
            "stride": shape.s, "padding": shape.padding, "padding4": list(shape.padding4), "output": list(shape.out),
            "P": shape.P, "K": shape.K, "params": shape.params, "weight_mb": shape.P * shape.c_out * shape.K * elem / common.MB,
            "check": check, "memory_probe": mem_detail or None, "wall_s": time.perf_counter() - t0}
    jax_part = f"jax {step_row['jax_ms']:9.3f} ms  x{step_row['jax_speedup']:.2f}  " if "jax_ms" in step_row else ""
    log(f"  {shape.name:<12} {shape.geometry():<22} N={batch:<4} step ours {step_row['ours_ms']:9.3f} ms  "
        f"base {step_row['base_ms']:9.3f} ms  x{step_row['speedup']:.2f}  {jax_part}peak MB "
        f"{_f(step_row['ours_peak_mb'], '{:.1f}')}/{_f(step_row['base_peak_mb'], '{:.1f}')}  ({info['wall_s']:.1f} s)")
    return info, rows


# ---------------------------------------------------------------------------------------------------
# Table and plot
# ---------------------------------------------------------------------------------------------------
def _f(v, fmt="{:.2f}", width=0) -> str:
    s = "-" if v is None else fmt.format(v)
    return s.rjust(width) if width else s


def _ms(v: Optional[float]) -> str:
    if v is None:
        return "-"
    return f"{v:.1f}" if v >= 100 else f"{v:.2f}" if v >= 10 else f"{v:.3f}" if v >= 0.1 else f"{v:.4f}"


def format_table(result: Dict) -> str:
    """The short table (under 120 columns): one line per shape."""
    st, rows = result["settings"], result["rows"]
    where = common.machine_label(result["machine"])
    by: Dict[str, Dict[str, Dict]] = {}
    for r in rows:
        by.setdefault(r["shape"], {})[r["pass"]] = r
    batches = sorted({r["batch"] for r in rows})
    head = (f"{'shape':<11} {'geometry':<20} {'step ms ours/base':>17} {'spdup':>6} {'peak MB ours/base':>17} "
            f"{'mem':>5} {'need':>6} | {'fwd':>5} {'dgrad':>5} {'wgrad':>5} | {'t/floor':>7}")
    lines = [f"lc2d {st['device']} {st['dtype']}, batch {'/'.join(map(str, batches))}, on {where}; "
             f"median of up to {st['repeats']} runs",
             "spdup = base/ours (base = unfold+bmm) for the step and per pass; peak MB = extra memory of one step,",
             "need = y+dx+dW+db (what any step allocates); mem = peak ours/base; t/floor = ours' step / roofline floor",
             head, "-" * len(head)]
    for name, ps in by.items():
        s = ps.get("step")
        if s is None:
            continue
        sp = lambda p: _f(ps[p]["speedup"] if p in ps else None, "{:.2f}", 5)  # noqa: E731
        t = f"{_ms(s['ours_ms'])}/{_ms(s['base_ms'])}"
        mb = f"{_f(s['ours_peak_mb'], '{:.1f}')}/{_f(s['base_peak_mb'], '{:.1f}')}"
        lines.append(f"{name:<11} {s['geometry']:<20} {t:>17} {_f(s['speedup'], '{:.2f}', 6)} {mb:>17} "
                     f"{_f(s['mem_ratio'], '{:.2f}', 5)} {_f(s['need_mb'], '{:.1f}', 6)} | {sp('fwd')} {sp('dgrad')} "
                     f"{sp('wgrad')} | {_f(s['ours_over_floor'], '{:.1f}', 7)}")
    steps = [ps["step"] for ps in by.values() if "step" in ps]
    if steps:
        tot_o, tot_b = sum(r["ours_ms"] for r in steps), sum(r["base_ms"] for r in steps)
        geo = statistics.geometric_mean([r["speedup"] for r in steps])
        lines.append(f"step times summed over the shapes: ours {_ms(tot_o)} ms, base {_ms(tot_b)} ms "
                     f"(x{tot_b / tot_o:.2f}); geometric mean of the step speedups x{geo:.2f}")
    jax_rows = [r for r in steps if r.get("jax_ms")]
    if jax_rows:
        lines.append("JAX (conv_general_dilated_local, jit) step ms / ours, per shape: " + ", ".join(
            f"{r['shape']} {_ms(r['jax_ms'])} / {_ms(r['ours_ms'])} (x{r['jax_speedup']:.2f})" for r in jax_rows))
    algo_shapes = [(name, ps) for name, ps in by.items() if any(r.get("algo_ms") for r in ps.values())]
    if algo_shapes:
        lines.append("every algorithm forced, ms per pass (* = what the default selection ran):")
        for name, ps in algo_shapes:
            parts = []
            for p in PASSES:
                r = ps.get(p)
                if r is None or not r.get("algo_ms"):
                    continue
                picked = set(r.get("selected", {}).values()) if p != "step" else set()
                parts.append(f"{p} " + " ".join(f"{a}{'*' if a in picked else ''} {_ms(ms)}"
                                                for a, ms in r["algo_ms"].items()))
            lines.append(f"  {name:<11} " + " | ".join(parts))
    return "\n".join(lines)


def write_plot(result: Dict, path: str) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--plot: matplotlib is not installed; no plot written", file=sys.stderr)
        return False
    steps = [r for r in result["rows"] if r["pass"] == "step"]
    names = [r["shape"] for r in steps]
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(max(6, 0.7 * len(names) + 2), 6), sharex=True)
    a1.bar(names, [r["speedup"] for r in steps], color="tab:blue")
    a1.axhline(1.0, color="k", lw=0.8)
    a1.set_ylabel("step speedup (base/ours)")
    a2.bar(names, [r["mem_ratio"] or 0 for r in steps], color="tab:orange")
    a2.axhline(1.0, color="k", lw=0.8)
    a2.set_ylabel("peak memory ours/base")
    a2.tick_params(axis="x", rotation=45)
    st = result["settings"]
    a1.set_title(f"lc2d vs unfold+bmm: {st['device']} {st['dtype']}, batch {st['batch']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------------------
# Command line: bioplaus bench lc2d, benchmarks/bench_lc2d.py, python -m bioplaus_kernels.bench.lc2d
# ---------------------------------------------------------------------------------------------------
def add_arguments(ap: argparse.ArgumentParser, save_default: bool = False) -> None:
    common.add_run_arguments(ap, DTYPE_NAMES, save_default, "lc2d-<device>-<dtype>-<gpu name or hostname>")
    which = common.add_shape_argument(
        ap, [SHAPE_FORM],
        "paper: the locally connected layers of Bartunov et al. 2018 (mnist, cifar, imagenet); "
        "H,W,Cin,Cout,k,s: one layer, input H x W, k x k kernel, stride s, SAME padding")
    which.add_argument("--shapes", default=None,
                       help="'default' (cpu: mnist,cifar; cuda: all), 'all', or a comma list of groups "
                            f"({', '.join(GROUPS)}) and shape names ({', '.join(s.name for s in SHAPES)})")
    ap.add_argument("--batch", type=int, default=DEFAULT_BATCH,
                    help=f"batch size for every shape (default {DEFAULT_BATCH}; e.g. 32 for --shapes all on the CPU)")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per (shape, pass, impl); median "
                    "reported (default: cpu 7, cuda 25)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed calls first (default: cpu 1, cuda 3)")
    ap.add_argument("--max-case-seconds", type=float, default=20.0,
                    help="cpu only: fewer repeats (at least 3) where a (shape, pass) would take longer (default 20)")
    ap.add_argument("--no-flush", action="store_true", help="do not write a cache-flush buffer between timed calls")
    ap.add_argument("--jax", action="store_true", help="also time JAX's jax.lax.conv_general_dilated_local (jit, full "
                    "step) beside ours where jax with a backend for --device can be imported (jax_speedup = jax/ours)")
    ap.add_argument("--algorithm", default="default",
                    help="'default' (the selection as configured: bioplaus_kernels.backends.lc2d), 'all' (also time "
                         "every algorithm of the device, forced), or one algorithm's name (forced for ours)")
    ap.add_argument("--tf32", action="store_true", help="cuda float32: allow TF32 in matmuls (library algorithm, "
                    "baseline, ceiling and fused_tc)")
    ap.add_argument("--feedback", action="store_true", help="also time lc2d_backward_input per feedback mode "
                    "(weight, random, sign, random_sign)")
    ap.add_argument("--no-memory", action="store_true", help="time only: skip the peak-memory measurement (on the "
                    "CPU, a fresh process per shape and implementation)")
    ap.add_argument("--plot", default=None, help="also write a bar chart (PNG) of step speedup and memory ratio; "
                    "needs matplotlib (skipped with a note otherwise)")
    ap.add_argument("--list-shapes", action="store_true", help="print the shapes with their sizes and floors, and exit")
    ap.add_argument("--mem-probe", default=None, help=argparse.SUPPRESS)  # internal: the CPU memory probe


@contextlib.contextmanager
def _selection(args):
    """--algorithm NAME and --tf32 for the duration of the run; the previous settings come back afterwards
    (``bioplaus bench`` can run inside a longer-lived process)."""
    tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        if args.tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
        forced = (_lc2d.force(**forced_passes(args.algorithm, args.device, DTYPES[args.dtype]))
                  if args.algorithm not in ("default", "all") else contextlib.nullcontext())
        with forced:
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


def run(args) -> int:
    if args.mem_probe:
        _mem_probe_main(args.mem_probe)
        return 0
    if args.table_from:
        saved = common.load_result(args.table_from)
        print(format_table(saved))
        if saved.get("feedback_rows"):
            print()
            print(format_feedback_table(saved))
        return 0
    common.resolve_device(args)
    common.positive(args, "batch", "repeats", "warmup")
    known = bioplaus_kernels.backends.ALGORITHMS[args.device]
    if args.algorithm not in ("default", "all") + tuple(known):
        raise UsageError(f"--algorithm must be default, all or one of {', '.join(known)} on {args.device}, "
                         f"got {args.algorithm}")
    if args.tf32 and (args.device != "cuda" or args.dtype != "float32"):
        raise UsageError("--tf32 needs --device cuda --dtype float32")
    args.repeats = args.repeats or (25 if args.device == "cuda" else 7)
    args.warmup = args.warmup if args.warmup is not None else (3 if args.device == "cuda" else 1)
    shapes = select_shapes(args.shapes, args.device, args.shape)
    if args.list_shapes:
        elem = torch.empty((), dtype=DTYPES[args.dtype]).element_size()
        for s in shapes:
            c = costs(s, args.batch, elem)
            print(f"{s.name:<12} {s.geometry():<22} pad4={s.padding4} out={s.out} P={s.P} K={s.K} "
                  f"params={s.params / 1e6:.2f}M  N={args.batch}: {c['fwd']['flops'] / 1e9:.2f} GFLOP/pass, "
                  f"fwd bytes {c['fwd']['bytes'] / common.MB:.1f} MB")
        return 0
    with _selection(args):
        return _run(args, shapes)


def _run(args, shapes: List[Shape]) -> int:
    def log(msg):
        print(msg, flush=True)

    t_start = time.perf_counter()
    torch.manual_seed(0)
    machine = common.machine_info(args.device)
    log(f"lc2d benchmark: {args.device} {args.dtype}, batch {args.batch}, shapes {', '.join(s.name for s in shapes)}")
    log(f"  {BATCH_NOTE}")
    ceilings = common.measure_ceilings(args.device, DTYPES[args.dtype])
    log(f"  {common.describe_ceilings(ceilings)}")
    mem_method = {"extra_peak": "bytes above what was allocated before the step (inputs, weights, grad_y), "
                                "at the step's peak; results (y, dx, dW, db) included"}
    if args.no_memory:
        mem_method["how"] = "not measured (--no-memory)"
    elif args.device == "cuda":
        mem_method["how"] = "torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus memory_allocated before"
        mem_method["tf32"] = common.tf32_setting()
        if mem_method["tf32"]["tf32_on"]:
            log("  WARNING: TF32 is enabled for fp32 matmuls: the baseline's bmm and the ceiling use it")
    else:
        mem_method["how"] = ("fresh process per (shape, impl): tiny warm-up, inputs allocated, one untimed step, malloc_trim, RSS "
                             "high-water mark reset (/proc/self/clear_refs 5), VmRSS read, one step, "
                             "VmHWM read (ru_maxrss only without /proc: it inherits the parent's peak through fork + exec); "
                             "extra = high-water mark - VmRSS before")
        mem_method["validation"] = cpu_memory_validation(torch.get_num_threads())
        v = mem_method["validation"]
        log(f"  memory method check: 200 MB allocation measured {v['alloc200']['measured_mb']:.1f} MB; "
            f"empty step {v['none']['measured_mb']:.1f} MB")
    flush = common.Flusher(args.device, enabled=not args.no_flush)
    shape_info, rows = [], []
    for s in shapes:
        info, r = bench_shape(s, args, ceilings, flush, log)
        shape_info.append(info)
        rows += r
    feedback_rows = []
    if args.feedback:
        for s in shapes:
            feedback_rows.append(bench_feedback(s, args, flush))
            log(f"  {s.name:<12} dgrad per feedback mode: " + ", ".join(
                f"{m} x{feedback_rows[-1][m + '_over_weight']:.2f}" for m in FEEDBACK_MODES[1:]))
    del flush
    machine["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    result = {
        "benchmark": "lc2d", "schema": 1, "date": common.now_iso(), "command": common.command_line(),
        "machine": machine, "versions": common.versions(), "git": common.git_info(),
        "settings": {"device": args.device, "dtype": args.dtype, "batch": args.batch, "batch_note": BATCH_NOTE,
                     "repeats": args.repeats, "warmup": args.warmup, "max_case_seconds": args.max_case_seconds,
                     "cache_flush_mb": None if args.no_flush else (common.CUDA_FLUSH_BYTES if args.device == "cuda"
                                                                   else common.CPU_FLUSH_BYTES) / common.MB,
                     "statistic": "median", "impls": IMPL_NAMES, "passes": list(PASSES),
                     "algorithm": args.algorithm, "tf32": args.tf32,
                     "selection": {"autotune": _lc2d.autotune, "forced": _lc2d.forced(),
                                   "workspace_limit": _lc2d.workspace_limit},
                     "shapes": [s.name for s in shapes], "units": "ms, MB = 1e6 bytes, GB/s = 1e9 B/s, GFLOP/s"},
        "ceilings": ceilings, "memory_method": mem_method, "shapes": shape_info, "rows": rows,
        "feedback_spec": FEEDBACK_SPEC if args.feedback else None, "feedback_rows": feedback_rows,
        "wall_s": time.perf_counter() - t_start,
    }
    path = common.result_path(args, f"lc2d-{args.device}-{args.dtype}-{common.machine_slug(machine)}")
    log(f"{common.write_json(result, path)}; total {result['wall_s']:.1f} s")
    if args.plot and write_plot(result, args.plot):
        log(f"wrote {args.plot}")
    print()
    print(format_table(result), flush=True)
    if feedback_rows:
        print()
        print(format_feedback_table(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(common.main(sys.modules[__name__]))
