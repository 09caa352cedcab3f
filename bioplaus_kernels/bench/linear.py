"""Benchmark of linear_backward_input (the input gradient of a fully connected layer) per feedback mode.

For every shape it times, interleaved on the same grad_y [batch, out] and weight [out, in]:
  mm           torch.mm(grad_y, B) with B materialised beforehand (a stored feedback matrix)
  torch        torch's own layer, the baseline: torch.autograd.grad of torch.nn.functional.linear(x, B) for x,
               on one graph built before timing (the input gradient a stored-B layer written with F.linear gets)
  weight       torch.ops.bioplaus.linear_backward_input(grad_y, weight)  (backprop, or a stored B)
  random       ... feedback="random"       B regenerated from (seed, stream, step) tile by tile, never stored
  sign         ... feedback="sign"         B = scale * sign(weight) tile by tile (uSF)
  random_sign  ... feedback="random_sign"  B = |R| * sign(weight) tile by tile (frSF / brSF)
  rebuild      ops.feedback_source(weight, "random_sign", ...) then torch.mm: a dense B rebuilt every call,
               as BioTorch does in Python (for reference)
and reports medians and minima, the ratios mode/weight and weight/mm, weight/torch of each, and weight mode's
time over the roofline floor. Every mode is first checked: its result must equal, bit for bit, "weight" mode
on the materialised B (ops.feedback_source).

Shapes: the layers of the reference nets of Bartunov et al. 2018 (docs/papers.md section 1)
whose input gradient is needed (hidden and output layers; not the first layer, whose input is the image):
MNIST FC (FC256 x5): 256->256 and 256->10; CIFAR FC (FC1024 x3): 1024->1024 and 1024->10; the FC layers of the
LC nets: MNIST 3136 (7x7x64) -> 1024, CIFAR 16384 (8x8x256) -> 1024, and their 1024->10 outputs
(--shape paper, the default). --shape IN,OUT: one layer nn.Linear(IN, OUT) (grad_y [batch, OUT], weight
[OUT, IN]). Batch 128 (the paper does not state one; override with --batch).

Floor: FLOPs 2 * batch * out * in, minimal bytes grad_y + weight + grad_x; floor = max(FLOPs / peak FLOP/s,
bytes / peak bandwidth), both ceilings measured in the same run (common.measure_ceilings); t/floor is
weight mode's median over it.

Timing: common.time_interleaved (CPU: perf_counter, a 64 MB buffer written between calls; CUDA: events and a
256 MB L2 flush), median of --repeats calls after --warmup calls.

The same cases are pytest-benchmark tests: ``pytest benchmarks/bench_linear.py`` (CUDA cases carry the `cuda`
mark; environment: BIOPLAUS_BENCH_SHAPES, BIOPLAUS_BENCH_BATCH).

Examples:
  bioplaus bench linear --shape paper --device cpu
  bioplaus bench linear --shape 4096,4096 --batch 256 --json out.json
  python3 benchmarks/bench_linear.py --device cuda --dtype bfloat16 --json out.json
  python3 benchmarks/bench_linear.py --table-from out.json
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

from bioplaus_kernels import ops

from . import common
from .common import UsageError

DEFAULT_BATCH = 128
DTYPE_NAMES = ("float32", "float64", "bfloat16", "float16")
DTYPES = {k: common.DTYPES[k] for k in DTYPE_NAMES}
MODES = ("weight", "random", "sign", "random_sign")
IMPLS = ("mm", "torch") + MODES + ("rebuild",)
SPEC = dict(seed=1234, stream=5, step=17)
SHAPE_FORM = "IN,OUT"


@dataclasses.dataclass(frozen=True)
class Shape:
    name: str
    net: str
    out: int   # out_features: grad_y's width
    inp: int   # in_features: grad_x's width


SHAPES: List[Shape] = [
    Shape("mnist-fc-hidden", "mnist-fc", 256, 256),
    Shape("mnist-fc-out", "mnist-fc", 10, 256),
    Shape("cifar-fc-hidden", "cifar-fc", 1024, 1024),
    Shape("cifar-fc-out", "cifar-fc", 10, 1024),
    Shape("mnist-lc-fc", "mnist-lc", 1024, 3136),
    Shape("cifar-lc-fc", "cifar-lc", 1024, 16384),
    Shape("lc-out", "lc", 10, 1024),
]


def select_shapes(spec: Optional[str], shape=None) -> List[Shape]:
    """--shape ("paper" or (IN, OUT)) where given; else --shapes: a comma list of shape or net names."""
    if shape not in (None, "paper"):
        inp, out = shape
        return [Shape("custom", "custom", out, inp)]
    if shape == "paper" or spec in (None, "", "all", "default"):
        return list(SHAPES)
    names = [t.strip() for t in spec.split(",") if t.strip()]
    out = [s for s in SHAPES if s.name in names or s.net in names]
    if not out:
        raise UsageError(f"no shape matches {spec!r}; shapes: {', '.join(s.name for s in SHAPES)}")
    return out


def scale_for(shape: Shape) -> float:
    """Glorot-uniform bound of the layer: the scale a random B of it would use."""
    return (6.0 / (shape.out + shape.inp)) ** 0.5


def costs(shape: Shape, batch: int, elem: int) -> Dict[str, float]:
    """FLOPs and minimal bytes of one input gradient: grad_x [batch, in] = grad_y [batch, out] @ B [out, in]."""
    return {"flops": 2.0 * batch * shape.out * shape.inp,
            "bytes": float(batch * shape.out + shape.out * shape.inp + batch * shape.inp) * elem}


class Case:
    def __init__(self, shape: Shape, batch: int, device: str, dtype: torch.dtype):
        g = torch.Generator(device=device).manual_seed(0)
        f = dict(device=device, dtype=dtype)
        s = scale_for(shape)
        self.shape, self.spec = shape, dict(SPEC, scale=s)
        self.gy = torch.randn(batch, shape.out, generator=g, **f)
        self.w = (torch.rand(shape.out, shape.inp, generator=g, **f) * 2 - 1) * s
        self.B = ops.feedback_source(self.w, "random", **self.spec)  # the stored B of the baselines
        self.x = torch.randn(batch, shape.inp, generator=g, **f).requires_grad_(True)

    def fn(self, impl: str) -> Callable[[], torch.Tensor]:
        gy, w, B, spec = self.gy, self.w, self.B, self.spec
        if impl == "mm":
            return lambda: torch.mm(gy, B)
        if impl == "torch":
            x = self.x
            y = F.linear(x, B)  # one retained graph, built outside the timed region
            return lambda: torch.autograd.grad(y, (x,), gy, retain_graph=True)[0]
        if impl == "rebuild":
            return lambda: torch.mm(gy, ops.feedback_source(w, "random_sign", **spec))
        return lambda: ops.linear_backward_input(gy, w, feedback=impl, **spec)

    def verify(self) -> None:
        for mode in MODES[1:]:
            got = self.fn(mode)()
            want = ops.linear_backward_input(self.gy, ops.feedback_source(self.w, mode, **self.spec))
            assert torch.equal(got, want), f"{self.shape.name}: {mode} differs from weight mode on the materialised B"
        torch.testing.assert_close(self.fn("torch")(), self.fn("mm")())


def bench_shape(shape: Shape, args, ceilings: Dict, flush) -> Dict:
    dtype = DTYPES[args.dtype]
    case = Case(shape, args.batch, args.device, dtype)
    case.verify()
    fns = [case.fn(i) for i in IMPLS]
    samples = common.time_interleaved(fns, args.device, args.repeats, args.warmup, flush)
    c = costs(shape, args.batch, torch.empty((), dtype=dtype).element_size())
    row = {"shape": shape.name, "net": shape.net, "batch": args.batch, "out": shape.out, "in": shape.inp,
           "dtype": args.dtype, **c, **common.floor(c["flops"], c["bytes"], ceilings)}
    for impl, s in zip(IMPLS, samples):
        st = common.summarize(s)
        row[f"{impl}_ms"] = st["median_ms"]
        row[f"{impl}_min_ms"] = st["min_ms"]
        row[f"{impl}_iqr_ms"] = [st["q1_ms"], st["q3_ms"]]
        row[f"{impl}_samples_ms"] = st["samples_ms"]
    for stat in ("", "_min"):
        for impl in IMPLS:
            row[f"{impl}{stat}_over_weight"] = row[f"{impl}{stat}_ms"] / row[f"weight{stat}_ms"]
        row[f"weight{stat}_over_mm"] = row[f"weight{stat}_ms"] / row[f"mm{stat}_ms"]
        row[f"weight{stat}_over_torch"] = row[f"weight{stat}_ms"] / row[f"torch{stat}_ms"]
        row[f"weight{stat}_over_floor"] = row[f"weight{stat}_ms"] / row["floor_ms"]
    return row


def _cell(row: Dict, key: str, fmt: str) -> str:
    """One table cell; "-" where a saved result has no such key (a result from before it was measured)."""
    v = row.get(key)
    return "-".rjust(len(format(0.0, fmt))) if v is None else format(v, fmt)


def format_table(result: Dict) -> str:
    """Medians, then minima (on a contended machine the minimum is the steadier statistic)."""
    st = result["settings"]
    head = (f"{'shape':<16} {'out x in':>12} {'mm':>8} {'F.linear':>8} {'weight':>8} {'random':>8} {'sign':>8} "
            f"{'rnd_sign':>8} {'rebuild':>8} | {'w/F.l':>5} {'w/mm':>5} {'rnd/w':>5} {'sgn/w':>5} {'rs/w':>5} "
            f"{'reb/w':>5} | {'t/floor':>7}")
    lines = [f"linear_backward_input {st['device']} {st['dtype']}, batch {st['batch']}, on "
             f"{common.machine_label(result['machine'])}; {st['repeats']} interleaved runs",
             "baseline F.linear = torch's own layer (autograd of torch.nn.functional.linear for x, stored B); "
             "mm = torch.mm with a stored B;",
             "ratios: w/F.l = weight mode / F.linear, w/mm = weight mode / mm, x/w = mode x / weight mode; "
             "t/floor = weight mode / roofline floor"]
    for stat, label in (("", "median ms"), ("_min", "minimum ms")):
        lines += [f"-- {label}", head, "-" * len(head)]
        for r in result["rows"]:
            t = " ".join(_cell(r, f"{i}{stat}_ms", "8.3f") for i in IMPLS)
            q = " ".join(_cell(r, f"{i}{stat}_over_weight", "5.2f")
                         for i in ("random", "sign", "random_sign", "rebuild"))
            lines.append(f"{r['shape']:<16} {str(r['out']) + 'x' + str(r['in']):>12} {t} | "
                         f"{_cell(r, f'weight{stat}_over_torch', '5.2f')} {_cell(r, f'weight{stat}_over_mm', '5.2f')} "
                         f"{q} | {_cell(r, f'weight{stat}_over_floor', '7.1f')}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# Command line: bioplaus bench linear, benchmarks/bench_linear.py, python -m bioplaus_kernels.bench.linear
# ---------------------------------------------------------------------------------------------------
def add_arguments(ap: argparse.ArgumentParser, save_default: bool = False) -> None:
    common.add_run_arguments(ap, DTYPE_NAMES, save_default, "linear-<device>-<dtype>-<gpu name or hostname>")
    which = common.add_shape_argument(
        ap, [SHAPE_FORM],
        "paper: the hidden and output layers of Bartunov et al. 2018's nets (the default); "
        "IN,OUT: one layer nn.Linear(IN, OUT) (grad_y [batch, OUT], weight [OUT, IN])")
    which.add_argument("--shapes", default="all", help="comma list of shape or net names (default: all): "
                       + ", ".join(s.name for s in SHAPES))
    ap.add_argument("--batch", type=int, default=DEFAULT_BATCH, help=f"rows of grad_y (default {DEFAULT_BATCH})")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per impl (default: cpu 30, cuda 50)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed calls first (default 3)")
    ap.add_argument("--threads", type=int, default=None, help="cpu: torch.set_num_threads (default: torch's)")
    ap.add_argument("--no-flush", action="store_true", help="do not write a cache-flush buffer between timed calls")


def run(args) -> int:
    if args.table_from:
        print(format_table(common.load_result(args.table_from)))
        return 0
    common.resolve_device(args)
    common.positive(args, "batch", "repeats", "threads")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.repeats = args.repeats or (50 if args.device == "cuda" else 30)
    shapes = select_shapes(args.shapes, args.shape)
    t0 = time.perf_counter()
    machine = common.machine_info(args.device)
    print(f"linear_backward_input benchmark: {args.device} {args.dtype}, batch {args.batch}, shapes "
          f"{', '.join(s.name for s in shapes)}", flush=True)
    ceilings = common.measure_ceilings(args.device, DTYPES[args.dtype])
    print(f"  {common.describe_ceilings(ceilings)}", flush=True)
    flush = common.Flusher(args.device, enabled=not args.no_flush)
    rows = []
    for s in shapes:
        rows.append(bench_shape(s, args, ceilings, flush))
        r = rows[-1]
        print(f"  {s.name:<16} weight {r['weight_ms']:.3f} ms  F.linear {r['torch_ms']:.3f}  mm {r['mm_ms']:.3f}  "
              f"random/weight {r['random_over_weight']:.2f}", flush=True)
    machine["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    result = {"benchmark": "linear_backward_input", "schema": 1, "date": common.now_iso(),
              "command": common.command_line(), "machine": machine,
              "versions": common.versions(), "git": common.git_info(),
              "settings": {"device": args.device, "dtype": args.dtype, "batch": args.batch, "repeats": args.repeats,
                           "warmup": args.warmup, "statistic": "median", "impls": list(IMPLS), "spec": SPEC,
                           "scale": "Glorot-uniform bound of each layer", "flush": not args.no_flush},
              "ceilings": ceilings, "rows": rows, "wall_s": time.perf_counter() - t0}
    path = common.result_path(args, f"linear-{args.device}-{args.dtype}-{common.machine_slug(machine)}")
    print(f"{common.write_json(result, path)}; total {result['wall_s']:.1f} s\n")
    print(format_table(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(common.main(sys.modules[__name__]))
