#!/usr/bin/env python3
"""Benchmark of the feedback rules: one layer's training step under each rule against "bp" on the same layer,
and against a BioTorch-style pure-PyTorch implementation of the same rule (the straightforward baseline).

Step = forward + backward to x, W and b with a fixed grad_y (``torch.autograd.grad``), the layer as a module:
  ours   bioplaus_kernels.nn.Linear / Conv2d / LocallyConnected2d with feedback = "bp" (the baseline: torch's
         own Linear/Conv2d, our LC kernels), "fa" (stored B), "fa-seed" (B regenerated, nothing stored),
         "usf", "frsf", "brsf" (M redrawn every step).
  bt-*   "BioTorch style", the straightforward pure-PyTorch rule and the named baseline (Linear and Conv2d;
         BioTorch has no LC): a torch.autograd.Function per rule whose
         forward rebuilds its dense feedback tensor in Python on every step, as BioTorch 0.0.16 does
         (usf: scale * sign(W); frsf: |M| * sign(W) with M stored; brsf: M drawn with torch.randn on the CPU,
         copied to the layer's device, then |M| * sign(W); fa: the stored B) and whose backward calls
         F.linear / conv2d_input / conv2d_weight.
Reported per (shape, impl): median and minimum time, their ratios to "bp" on the same shape (the issue's
target: every rule within 10% of bp, i.e. ratio <= 1.10; on a machine shared with other jobs the ratio of
minima, the least-disturbed samples, is the steadier of the two) and the bytes the layer stores for its
feedback (buffers; the BioTorch-style fa/frsf also count their stored dense tensor).

Shapes: the layers of the reference networks (docs/papers.md section 1: MNIST/CIFAR FC nets, the FC1024 heads of
the LC nets, the LC layers, and their weight-shared conv twins, SAME padding) at --batch (128), and
ResNet-18's convolutions at 224x224 input (stem, one 3x3 conv per stage, fc) at --resnet-batch (8 on the CPU:
2 cores), and its fc once more at the training batch 256 (r18-fc-b256): --shape paper, the default.
--shape IN,OUT: one Linear(IN, OUT); --shape H,W,Cin,Cout,k,s: a Conv2d and a LocallyConnected2d of that
geometry (input H x W, k x k kernel, stride s; SAME padding for LC, k // 2 on each side for the conv).

Floor of a step: FLOPs 3 x the forward's (2 * N * outputs * fan-in), minimal bytes those of the forward
(x + W + y + b), the input gradient (dy + W + dx) and the weight gradient (x + dy + dW + db); floor =
max(FLOPs / peak FLOP/s, bytes / peak bandwidth), ceilings measured in the same run; bp/floor is bp's
median over it.

Timing: bioplaus_kernels/bench/common.py (perf_counter on the CPU, CUDA events on CUDA), all impls of a shape
interleaved, median of --repeats after --warmup; shapes whose step is short get more repeats, up to
--min-time seconds of samples per impl (at most --max-repeats).

Examples:
  bioplaus bench feedback --shape 256,256 --device cpu
  bioplaus bench feedback --shape 32,32,3,64,5,2 --json out.json
  python3 benchmarks/bench_feedback.py --device cpu                       # all groups (~5 min on 2 cores)
  python3 benchmarks/bench_feedback.py --device cpu --groups linear,lc --repeats 5
  python3 benchmarks/bench_feedback.py --table-from benchmarks/results/feedback-cpu-float32-1thread.json
  python3 -m pytest benchmarks/bench_feedback.py                          # pytest-benchmark cases
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F

from bioplaus_kernels.feedback import magnitude
from bioplaus_kernels.nn import Conv2d, Linear, LocallyConnected2d

from . import common
from .common import UsageError

RULES = ("bp", "fa", "fa-seed", "usf", "frsf", "brsf")
BT_RULES = ("bt-fa", "bt-usf", "bt-frsf", "bt-brsf")
DTYPE_NAMES = ("float32", "float64")
SHAPE_FORMS = ("IN,OUT", "H,W,Cin,Cout,k,s")


@dataclass(frozen=True)
class Shape:
    name: str
    group: str
    kind: str  # "linear", "conv", "lc"
    c_in: int
    c_out: int
    size: object = 0  # input H = W (conv, lc), or (H, W)
    k: int = 1
    stride: int = 1
    padding: object = "same"
    resnet: bool = False
    batch: int = 0  # a fixed batch for this shape (0: --batch, or --resnet-batch for ResNet shapes)

    @property
    def hw(self) -> Tuple[int, int]:
        return tuple(self.size) if isinstance(self.size, (tuple, list)) else (self.size, self.size)


SHAPES: List[Shape] = [
    Shape("mnist-fc1", "linear", "linear", 784, 256), Shape("mnist-fc2", "linear", "linear", 256, 256),
    Shape("cifar-fc1", "linear", "linear", 3072, 1024), Shape("cifar-fc2", "linear", "linear", 1024, 1024),
    Shape("mnist-lc-fc", "linear", "linear", 3136, 1024), Shape("cifar-lc-fc", "linear", "linear", 16384, 1024),
    Shape("mnist-c1", "conv", "conv", 1, 32, 28, 3, 2), Shape("mnist-c2", "conv", "conv", 32, 64, 14, 3, 2),
    Shape("cifar-c1", "conv", "conv", 3, 64, 32, 5, 2), Shape("cifar-c2", "conv", "conv", 64, 128, 16, 5, 2),
    Shape("cifar-c3", "conv", "conv", 128, 256, 8, 3, 1),
    Shape("mnist-lc1", "lc", "lc", 1, 32, 28, 3, 2), Shape("mnist-lc2", "lc", "lc", 32, 64, 14, 3, 2),
    Shape("cifar-lc1", "lc", "lc", 3, 64, 32, 5, 2), Shape("cifar-lc2", "lc", "lc", 64, 128, 16, 5, 2),
    Shape("cifar-lc3", "lc", "lc", 128, 256, 8, 3, 1),
    Shape("r18-stem", "resnet", "conv", 3, 64, 224, 7, 2, 3, True),
    Shape("r18-l1", "resnet", "conv", 64, 64, 56, 3, 1, 1, True),
    Shape("r18-l2", "resnet", "conv", 128, 128, 28, 3, 1, 1, True),
    Shape("r18-l3", "resnet", "conv", 256, 256, 14, 3, 1, 1, True),
    Shape("r18-l4", "resnet", "conv", 512, 512, 7, 3, 1, 1, True),
    Shape("r18-fc", "resnet", "linear", 512, 1000, resnet=True),
    # the fc layer again at Xiao et al.'s training batch: at batch 8 its step is memory-bound and a stored or
    # generated B is a visible share of it (docs/performance.md section 4)
    Shape("r18-fc-b256", "resnet", "linear", 512, 1000, resnet=True, batch=256),
]
GROUPS = ("linear", "conv", "lc", "resnet")


def custom_shapes(fields: Tuple[int, ...]) -> List[Shape]:
    """--shape IN,OUT: a Linear layer; --shape H,W,Cin,Cout,k,s: a Conv2d and an LC layer of that geometry."""
    if len(fields) == 2:
        return [Shape("custom", "custom", "linear", *fields)]
    h, w, c_in, c_out, k, s = fields
    return [Shape(f"custom-{kind}", "custom", kind, c_in, c_out, (h, w), k, s) for kind in ("conv", "lc")]


def select_shapes(args) -> List[Shape]:
    """--shape ("paper": every shape; or a custom one), else --shapes, else --groups."""
    if args.shape not in (None, "paper"):
        return custom_shapes(args.shape)
    if args.shape == "paper":
        return list(SHAPES)
    if args.shapes:
        wanted = args.shapes.split(",")
        unknown = sorted(set(wanted) - {s.name for s in SHAPES})
        if unknown:
            raise UsageError(f"unknown shape {', '.join(unknown)}; shapes: {', '.join(s.name for s in SHAPES)}")
        return [s for s in SHAPES if s.name in wanted]
    groups = args.groups.split(",")
    if set(groups) - set(GROUPS):
        raise UsageError(f"--groups: choose from {', '.join(GROUPS)}, got {args.groups}")
    return [s for s in SHAPES if s.group in groups]


def _conv_padding(shape: Shape):
    # TF SAME for stride 2 is asymmetric; torch's Conv2d takes "same" only for stride 1. The conv twins use
    # the symmetric k//2 padding (same output size for these odd kernels).
    return shape.k // 2 if shape.padding == "same" else shape.padding


def build(shape: Shape, rule: str, device: str, dtype: torch.dtype) -> torch.nn.Module:
    fb = {"feedback": "fa" if rule == "fa-seed" else rule, "seed": 1 if rule == "fa-seed" else None,
          "device": device, "dtype": dtype}
    if rule.startswith("bt-"):
        fb.update(feedback="bp", seed=None)
    if shape.kind == "linear":
        return Linear(shape.c_in, shape.c_out, **fb)
    if shape.kind == "conv":
        return Conv2d(shape.c_in, shape.c_out, shape.k, shape.stride, _conv_padding(shape), bias=not shape.resnet, **fb)
    return LocallyConnected2d(shape.c_in, shape.c_out, shape.hw, shape.k, shape.stride, shape.padding, **fb)


# ---------------------------------------------------------------------------------------------------
# BioTorch-style baseline: dense feedback tensors rebuilt in Python every step
# ---------------------------------------------------------------------------------------------------
class _BTLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, B):
        ctx.save_for_backward(x, w, B)
        return F.linear(x, w, b)

    @staticmethod
    def backward(ctx, g):
        x, w, B = ctx.saved_tensors
        return g.mm(B), g.t().mm(x), g.sum(0), None


class _BTConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, B, stride, padding):
        ctx.save_for_backward(x, w, B)
        ctx.hp = (stride, padding)
        return F.conv2d(x, w, b, stride, padding)

    @staticmethod
    def backward(ctx, g):
        x, w, B = ctx.saved_tensors
        s, p = ctx.hp
        gx = torch.nn.grad.conv2d_input(x.shape, B, g, s, p)
        gw = torch.nn.grad.conv2d_weight(x, w.shape, g, s, p)
        gb = g.sum((0, 2, 3)) if ctx.needs_input_grad[2] else None
        return gx, gw, gb, None, None, None


class BioTorchStyle:
    """The per-step work of BioTorch's layers for one rule, around module ``m`` (which holds W and b)."""

    def __init__(self, m: torch.nn.Module, rule: str):
        self.m, self.rule = m, rule
        _, self.scale = magnitude("usf" if rule == "usf" else "fa", "glorot", m._fans())
        w = m.weight.detach()
        self.stored = (torch.rand_like(w) * 2 - 1) * self.scale if rule in ("fa", "frsf") else None

    def matrix(self) -> torch.Tensor:
        w = self.m.weight.detach()
        if self.rule == "fa":
            return self.stored
        if self.rule == "usf":
            return torch.sign(w) * self.scale
        if self.rule == "frsf":
            return self.stored.abs() * torch.sign(w)
        M = (torch.randn(w.shape) * self.scale).to(w.device)  # drawn on the CPU, copied to the device
        return M.abs() * torch.sign(w)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        m = self.m
        if isinstance(m, torch.nn.Linear):
            return _BTLinear.apply(x, m.weight, m.bias, self.matrix())
        return _BTConv.apply(x, m.weight, m.bias, self.matrix(), m.stride, m.padding)


def stored_bytes(m: torch.nn.Module) -> int:
    return sum(b.numel() * b.element_size() for b in m.buffers())


def _bt_stored_bytes(call) -> int:
    """The dense tensor a BioTorch-style fa / frsf keeps beside its module (0 for everything else)."""
    stored = getattr(call, "stored", None)
    return 0 if stored is None else stored.numel() * stored.element_size()


class Case:
    """Inputs and every impl's module for one shape; ``step(impl)`` returns the timed closure."""

    def __init__(self, shape: Shape, batch: int, device: str, dtype: torch.dtype, impls: Sequence[str]):
        g = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        self.shape, self.batch, self.device, self.dtype = shape, batch, device, dtype
        if shape.kind == "linear":
            x = torch.randn(batch, shape.c_in, generator=g)
        else:
            x = torch.randn(batch, shape.c_in, *shape.hw, generator=g)
        self.x = x.to(device, dtype).requires_grad_(True)
        self.modules: Dict[str, torch.nn.Module] = {}
        self.calls: Dict[str, Callable] = {}
        bp = build(shape, "bp", device, dtype)
        for impl in impls:
            m = build(shape, impl[3:] if impl.startswith("bt-") else impl, device, dtype)
            with torch.no_grad():
                m.weight.copy_(bp.weight)
                if m.bias is not None:
                    m.bias.copy_(bp.bias)
            self.modules[impl] = m
            self.calls[impl] = BioTorchStyle(m, impl[3:]) if impl.startswith("bt-") else m
        with torch.no_grad():
            y = bp(self.x)
        self.gy = torch.randn(y.shape, generator=g).to(device, dtype)

    def step(self, impl: str) -> Callable[[], object]:
        call, m = self.calls[impl], self.modules[impl]
        params = [self.x] + [p for p in m.parameters()]

        def fn():
            return torch.autograd.grad(call(self.x), params, self.gy)
        return fn

    def costs(self) -> Dict[str, float]:
        """FLOPs and minimal bytes of one step (the module docstring's floor)."""
        m = self.modules["bp"]
        w, nb = m.weight, (m.bias.numel() if m.bias is not None else 0)
        per_sample = self.gy[0].numel()
        fan_in = w.numel() // (per_sample if self.shape.kind == "lc" else w.shape[0])
        x, y = self.x.numel(), self.gy.numel()
        return {"flops": 3 * 2.0 * y * fan_in,
                "bytes": float(3 * x + 3 * w.numel() + 3 * y + 2 * nb) * self.x.element_size()}

    def verify(self) -> None:
        """Weight gradients of every impl equal bp's (only the input gradient may differ)."""
        ref = self.step("bp")()
        for impl in self.calls:
            got = self.step(impl)()
            for a, b in zip(got[1:], ref[1:]):
                torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)


def bench_shape(shape: Shape, args, ceilings: Dict, log) -> List[Dict]:
    batch = shape.batch or (args.resnet_batch if shape.resnet else args.batch)
    impls = list(RULES) + (list(BT_RULES) if shape.kind != "lc" else [])
    case = Case(shape, batch, args.device, common.DTYPES[args.dtype], impls)
    case.verify()
    cost = case.costs()
    fl = common.floor(cost["flops"], cost["bytes"], ceilings)
    steps = [case.step(i) for i in impls]
    repeats = args.repeats
    if args.min_time > 0:
        # Small layers take well under a millisecond a step: time them until every impl has --min-time
        # seconds of samples, so that their medians are as steady as the large layers'.
        (probe,) = common.time_interleaved([steps[0]], args.device, 3, 0)
        repeats = max(repeats, min(args.max_repeats, math.ceil(args.min_time * 1e3 / max(min(probe), 1e-3))))
    samples = common.time_interleaved(steps, args.device, repeats, args.warmup)
    med = {i: statistics.median(s) for i, s in zip(impls, samples)}
    best = {i: min(s) for i, s in zip(impls, samples)}
    rows = []
    for impl, s in zip(impls, samples):
        row = {"shape": shape.name, "group": shape.group, "kind": shape.kind, "batch": batch, "impl": impl,
               "repeats": repeats,
               "geometry": asdict(shape), "ratio_to_bp": med[impl] / med["bp"],
               "ratio_min_to_bp": best[impl] / best["bp"], **cost, **fl, "over_floor": med[impl] / fl["floor_ms"],
               "stored_bytes": stored_bytes(case.modules[impl]) + _bt_stored_bytes(case.calls[impl])}
        if args.device == "cuda":
            # The step's transient memory beyond inputs and parameters: shows whether B or a transformed
            # weight is materialised per step (fa-seed and the sign rules on Linear/LC should add nothing).
            row["peak_extra_bytes"] = common.cuda_peak_extra_bytes(case.step(impl))
        row.update(common.summarize(s))
        rows.append(row)
    log(f"{shape.name:12s} b{batch:<4d} " + " ".join(f"{i}={med[i]:.2f}ms({med[i] / med['bp']:.2f})" for i in impls))
    return rows


def format_table(result: Dict) -> str:
    impls = list(RULES) + list(BT_RULES)
    rows = result["rows"]
    peaks = any("peak_extra_bytes" in r for r in rows)
    st = result["settings"]
    lines = [f"feedback rules, one layer's step, {st['device']}, {st.get('dtype', 'float32')}, "
             f"{result['machine']['torch_threads']} threads; median ms (ratio of medians to bp / ratio of minima); "
             f"bt-*: the BioTorch-style pure-PyTorch rule (the baseline); "
             f"bytes stored for B by fa and fa-seed; seed/fa: regenerated over stored B, ratio of medians; "
             f"bp/floor: bp's step over the roofline floor"
             + ("; peak MB: transient memory of one step (fa, fa-seed)" if peaks else "")]
    lines.append(f"{'shape':12s} {'batch':>5s} " + " ".join(f"{i:>20s}" for i in impls) + f" {'fa B bytes':>11s} "
                 f"{'fa-seed':>8s} {'seed/fa':>7s} {'bp/floor':>8s}" + (f" {'peak MB fa/seed':>16s}" if peaks else ""))
    for name in dict.fromkeys(r["shape"] for r in rows):
        by = {r["impl"]: r for r in rows if r["shape"] == name}
        cells = [f"{by[i]['median_ms']:8.2f} ({by[i]['ratio_to_bp']:.2f}/{by[i]['ratio_min_to_bp']:.2f})" if i in by
                 else "-" for i in impls]
        line = (f"{name:12s} {by['bp']['batch']:5d} " + " ".join(f"{c:>20s}" for c in cells) +
                f" {by['fa']['stored_bytes']:11d} {by['fa-seed']['stored_bytes']:8d}"
                f" {by['fa-seed']['median_ms'] / by['fa']['median_ms']:7.2f}"
                f" {by['bp']['over_floor'] if 'over_floor' in by['bp'] else float('nan'):8.1f}")
        if peaks:
            line += f" {by['fa']['peak_extra_bytes'] / 1e6:7.2f}/{by['fa-seed']['peak_extra_bytes'] / 1e6:<8.2f}"
        lines.append(line)
    for key in ("ratio_to_bp", "ratio_min_to_bp"):
        worst = max((r for r in rows if r["impl"] in RULES), key=lambda r: r[key])
        within = sum(r[key] <= 1.10 for r in rows if r["impl"] in RULES[1:])
        total = sum(1 for r in rows if r["impl"] in RULES[1:])
        lines.append(f"{key}: {within}/{total} rule cases within 1.10 of bp; worst {worst[key]:.3f} ({worst['impl']} on "
                     f"{worst['shape']})")
    against_bt = []
    med = {(r["shape"], r["impl"]): r["median_ms"] for r in rows}
    for bt in BT_RULES:
        q = [med[(name, bt[3:])] / med[(name, bt)] for name, impl in med if impl == bt and (name, bt[3:]) in med]
        if q:
            against_bt.append(f"{bt[3:]} x{statistics.geometric_mean(q):.2f}")
    if against_bt:
        lines.append("ours over the BioTorch-style rule (geometric mean of the ratios of medians over the shapes): "
                     + ", ".join(against_bt))
    for e in result.get("errors", []):
        lines.append(f"FAILED {e['shape']}: {e['error']}")
    return "\n".join(lines)


def write_plot(result: Dict, path: str) -> bool:
    """One panel per layer kind: each rule's step time over bp's (ratio of medians) per shape, the 1.10 target
    dashed; BioTorch-style impls are left out (their brSF runs to 200x on CUDA and would flatten the rest)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--plot: matplotlib is not installed; no plot written", file=sys.stderr)
        return False
    rules = [r for r in RULES if r != "bp"]
    kinds = [k for k in ("linear", "conv", "lc") if any(r["kind"] == k for r in result["rows"])]
    shapes = {k: list(dict.fromkeys(r["shape"] for r in result["rows"] if r["kind"] == k)) for k in kinds}
    ratio = {(r["shape"], r["impl"]): r["ratio_to_bp"] for r in result["rows"]}
    fig, axes = plt.subplots(len(kinds), 1, figsize=(max(8, 0.75 * max(len(v) for v in shapes.values()) + 3),
                                                     2.8 * len(kinds)), squeeze=False)
    width = 0.8 / len(rules)
    for ax, kind in zip(axes[:, 0], kinds):
        for j, rule in enumerate(rules):
            xs = [i + (j - (len(rules) - 1) / 2) * width for i in range(len(shapes[kind]))]
            ax.bar(xs, [ratio.get((s, rule), float("nan")) for s in shapes[kind]], width, label=rule)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.axhline(1.10, color="tab:red", lw=0.8, ls="--")
        ax.set_xticks(range(len(shapes[kind])), shapes[kind], rotation=30, ha="right")
        ax.set_ylabel(f"{kind}: step / bp")
        vals = [ratio[(s, r)] for s in shapes[kind] for r in rules if (s, r) in ratio]
        ax.set_ylim(max(0.0, min(0.8, min(vals) * 0.9)), max(1.6, min(2.5, max(vals) * 1.05)))
    axes[0, 0].legend(ncol=len(rules), fontsize=8, loc="upper left")
    where = common.machine_label(result["machine"])
    axes[0, 0].set_title(f"feedback rules: one layer's step against bp ({result['settings']['device']}, {where}; "
                         "ratio of medians)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------------------
# Command line: bioplaus bench feedback, benchmarks/bench_feedback.py, python -m bioplaus_kernels.bench.feedback
# ---------------------------------------------------------------------------------------------------
def add_arguments(ap: argparse.ArgumentParser, save_default: bool = False) -> None:
    common.add_run_arguments(ap, DTYPE_NAMES, save_default, "feedback-<device>-<dtype>-<gpu name or hostname>")
    which = common.add_shape_argument(
        ap, SHAPE_FORMS,
        "paper: the layers of the reference nets and of ResNet-18 (every shape, the default); "
        "IN,OUT: one Linear(IN, OUT); H,W,Cin,Cout,k,s: a Conv2d and an LC layer, input H x W, "
        "k x k kernel, stride s (overrides --groups)")
    which.add_argument("--shapes", default=None, help="comma-separated shape names (overrides --groups)")
    ap.add_argument("--groups", default=",".join(GROUPS), help=f"comma-separated subset of {GROUPS}")
    ap.add_argument("--batch", type=int, default=128, help="batch of the reference nets' layers and of --shape")
    ap.add_argument("--resnet-batch", type=int, default=None, help="batch of the ResNet-18 shapes (cpu 8, cuda 64)")
    ap.add_argument("--repeats", type=int, default=None, help="timed steps per impl (cpu 7, cuda 30)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (cpu 1, cuda 3)")
    ap.add_argument("--min-time", type=float, default=None,
                    help="seconds of samples per impl at least: more repeats on fast shapes (cpu 0.5, cuda 0.2; "
                         "0: exactly --repeats)")
    ap.add_argument("--max-repeats", type=int, default=2000, help="cap on the repeats --min-time adds")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--plot", default=None, metavar="PNG", help="also write a bar chart of the rule/bp ratios "
                    "(with --table-from: of the saved result); needs matplotlib")


def run(args) -> int:
    if args.table_from:
        saved = common.load_result(args.table_from)
        if args.plot and write_plot(saved, args.plot):
            print(f"wrote {args.plot}")
        print(format_table(saved))
        return 0
    common.resolve_device(args)
    common.positive(args, "batch", "resnet_batch", "repeats", "max_repeats", "threads")
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = args.device == "cpu"
    args.resnet_batch = args.resnet_batch or (8 if cpu else 64)
    args.repeats = args.repeats or (7 if cpu else 30)
    args.warmup = args.warmup if args.warmup is not None else (1 if cpu else 3)
    args.min_time = args.min_time if args.min_time is not None else (0.5 if cpu else 0.2)
    shapes = select_shapes(args)
    machine = common.machine_info(args.device)
    t0 = time.time()
    print(f"feedback benchmark: {args.device} {args.dtype}, shapes {', '.join(s.name for s in shapes)}", flush=True)
    ceilings = common.measure_ceilings(args.device, common.DTYPES[args.dtype])
    print(f"  {common.describe_ceilings(ceilings)}", flush=True)
    rows: List[Dict] = []
    errors: List[Dict] = []
    for shape in shapes:
        try:
            rows += bench_shape(shape, args, ceilings, lambda s: print(s, flush=True))
        except Exception as e:  # one failing shape (a kernel error, a mismatch) must not lose the others
            print(f"{shape.name}: FAILED: {type(e).__name__}: {e}", flush=True)
            errors.append({"shape": shape.name, "error": f"{type(e).__name__}: {e}"})
    result = {"benchmark": "feedback", "date": common.now_iso(), "command": common.command_line(), "machine": machine,
              "versions": common.versions(), "git": common.git_info(),
              "settings": {"device": args.device, "dtype": args.dtype, "batch": args.batch,
                           "resnet_batch": args.resnet_batch, "repeats": args.repeats, "warmup": args.warmup,
                           "min_time_s": args.min_time, "max_repeats": args.max_repeats},
              "ceilings": ceilings, "rows": rows, "errors": errors, "wall_s": time.time() - t0}
    path = common.result_path(args, f"feedback-{args.device}-{args.dtype}-{common.machine_slug(machine)}")
    print(common.write_json(result, path))
    if args.plot and rows and write_plot(result, args.plot):
        print(f"wrote {args.plot}")
    if rows:
        print(format_table(result))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(common.main(sys.modules[__name__]))
