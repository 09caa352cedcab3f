#!/usr/bin/env python3
"""Benchmark of linear_backward_input (the input gradient of a fully connected layer) per feedback mode.

For every shape it times, interleaved on the same grad_y [batch, out] and weight [out, in]:
  mm           torch.mm(grad_y, B) with B materialised beforehand (a stored feedback matrix): the baseline
  weight       torch.ops.bioplaus.linear_backward_input(grad_y, weight)  (backprop, or a stored B)
  random       ... feedback="random"       B regenerated from (seed, stream, step) tile by tile, never stored
  sign         ... feedback="sign"         B = scale * sign(weight) tile by tile (uSF)
  random_sign  ... feedback="random_sign"  B = |R| * sign(weight) tile by tile (frSF / brSF)
  rebuild      ops.feedback_source(weight, "random_sign", ...) then torch.mm: a dense B rebuilt every call,
               as BioTorch does in Python (for reference)
and reports medians and minima, and the ratios mode/weight and weight/mm of each. Every mode is first checked: its result
must equal, bit for bit, "weight" mode on the materialised B (ops.feedback_source).

Shapes: the layers of the reference nets of Bartunov et al. 2018 (docs/papers.md section 1)
whose input gradient is needed (hidden and output layers; not the first layer, whose input is the image):
MNIST FC (FC256 x5): 256->256 and 256->10; CIFAR FC (FC1024 x3): 1024->1024 and 1024->10; the FC layers of the
LC nets: MNIST 3136 (7x7x64) -> 1024, CIFAR 16384 (8x8x256) -> 1024, and their 1024->10 outputs.
Batch 128 (the paper does not state one; override with --batch).

Timing: common.time_interleaved (CPU: perf_counter, a 64 MB buffer written between calls; CUDA: events and a
256 MB L2 flush), median of --repeats calls after --warmup calls.

The same cases are pytest-benchmark tests: ``pytest benchmarks/bench_linear.py`` (CUDA cases carry the `cuda`
mark; environment: BIOPLAUS_BENCH_SHAPES, BIOPLAUS_BENCH_BATCH).

Examples:
  python3 benchmarks/bench_linear.py --device cpu
  python3 benchmarks/bench_linear.py --device cuda --dtype bfloat16 --json out.json
  python3 benchmarks/bench_linear.py --table-from out.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Callable, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import torch  # noqa: E402

import bioplaus_kernels  # noqa: E402
from bioplaus_kernels import ops  # noqa: E402

DEFAULT_BATCH = 128
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
MODES = ("weight", "random", "sign", "random_sign")
IMPLS = ("mm",) + MODES + ("rebuild",)
SPEC = dict(seed=1234, stream=5, step=17)


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


def select_shapes(spec: Optional[str]) -> List[Shape]:
    if spec in (None, "", "all", "default"):
        return list(SHAPES)
    names = [t.strip() for t in spec.split(",") if t.strip()]
    out = [s for s in SHAPES if s.name in names or s.net in names]
    if not out:
        raise SystemExit(f"no shape matches {spec!r}; shapes: {', '.join(s.name for s in SHAPES)}")
    return out


def scale_for(shape: Shape) -> float:
    """Glorot-uniform bound of the layer: the scale a random B of it would use."""
    return (6.0 / (shape.out + shape.inp)) ** 0.5


class Case:
    def __init__(self, shape: Shape, batch: int, device: str, dtype: torch.dtype):
        g = torch.Generator(device=device).manual_seed(0)
        f = dict(device=device, dtype=dtype)
        s = scale_for(shape)
        self.shape, self.spec = shape, dict(SPEC, scale=s)
        self.gy = torch.randn(batch, shape.out, generator=g, **f)
        self.w = (torch.rand(shape.out, shape.inp, generator=g, **f) * 2 - 1) * s
        self.B = ops.feedback_source(self.w, "random", **self.spec)  # the stored B of the baseline

    def fn(self, impl: str) -> Callable[[], torch.Tensor]:
        gy, w, B, spec = self.gy, self.w, self.B, self.spec
        if impl == "mm":
            return lambda: torch.mm(gy, B)
        if impl == "rebuild":
            return lambda: torch.mm(gy, ops.feedback_source(w, "random_sign", **spec))
        return lambda: ops.linear_backward_input(gy, w, feedback=impl, **spec)

    def verify(self) -> None:
        for mode in MODES[1:]:
            got = self.fn(mode)()
            want = ops.linear_backward_input(self.gy, ops.feedback_source(self.w, mode, **self.spec))
            assert torch.equal(got, want), f"{self.shape.name}: {mode} differs from weight mode on the materialised B"


def bench_shape(shape: Shape, args, flush) -> Dict:
    case = Case(shape, args.batch, args.device, DTYPES[args.dtype])
    case.verify()
    fns = [case.fn(i) for i in IMPLS]
    samples = common.time_interleaved(fns, args.device, args.repeats, args.warmup, flush)
    row = {"shape": shape.name, "net": shape.net, "batch": args.batch, "out": shape.out, "in": shape.inp,
           "dtype": args.dtype}
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
    return row


def format_table(result: Dict) -> str:
    """Medians, then minima (on a contended machine the minimum is the steadier statistic)."""
    st, m = result["settings"], result["machine"]
    where = m["gpu"]["name"] if m.get("gpu") else f"{m['cpu_model']}, {m['torch_threads']} threads"
    head = (f"{'shape':<16} {'out x in':>12} {'mm':>8} {'weight':>8} {'random':>8} {'sign':>8} {'rnd_sign':>8} "
            f"{'rebuild':>8} | {'w/mm':>5} {'rnd/w':>5} {'sgn/w':>5} {'rs/w':>5} {'reb/w':>5}")
    lines = [f"linear_backward_input {st['device']} {st['dtype']}, batch {st['batch']}, on {where}; "
             f"{st['repeats']} interleaved runs",
             "mm = torch.mm with a stored B; ratios: w/mm = weight mode / mm, x/w = mode x / weight mode"]
    for stat, label in (("", "median ms"), ("_min", "minimum ms")):
        lines += [f"-- {label}", head, "-" * len(head)]
        for r in result["rows"]:
            t = " ".join(f"{r[f'{i}{stat}_ms']:8.3f}" for i in IMPLS)
            q = " ".join(f"{r[f'{i}{stat}_over_weight']:5.2f}" for i in ("random", "sign", "random_sign", "rebuild"))
            lines.append(f"{r['shape']:<16} {str(r['out']) + 'x' + str(r['in']):>12} {t} | "
                         f"{r[f'weight{stat}_over_mm']:5.2f} {q}")
    return "\n".join(lines)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="bench_linear.py", description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cpu", "cuda"), default=None,
                    help="default: cuda when a GPU is visible and the kernels were built with CUDA, else cpu")
    ap.add_argument("--dtype", choices=tuple(DTYPES), default="float32",
                    help="float32 (default), float64; bfloat16 and float16 on cuda only")
    ap.add_argument("--shapes", default="all", help="comma list of shape or net names (default: all): "
                    + ", ".join(s.name for s in SHAPES))
    ap.add_argument("--batch", type=int, default=DEFAULT_BATCH, help=f"rows of grad_y (default {DEFAULT_BATCH})")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per impl (default: cpu 30, cuda 50)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed calls first (default 3)")
    ap.add_argument("--threads", type=int, default=None, help="cpu: torch.set_num_threads (default: torch's)")
    ap.add_argument("--no-flush", action="store_true", help="do not write a cache-flush buffer between timed calls")
    ap.add_argument("--json", default=None, help="output path (default: benchmarks/results/linear-<device>-<dtype>-"
                    "<gpu name or hostname>-<date>.json)")
    ap.add_argument("--table-from", default=None, metavar="JSON", help="print the table of a saved result and exit")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.table_from:
        return common.print_saved_table(args.table_from, format_table)
    has_cuda = torch.cuda.is_available() and bool(bioplaus_kernels.with_cuda)
    args.device = args.device or ("cuda" if has_cuda else "cpu")
    if args.device == "cuda" and not has_cuda:
        print("--device cuda: no CUDA device, or the kernels were built without CUDA", file=sys.stderr)
        return 2
    if args.device == "cpu" and args.dtype not in ("float32", "float64"):
        print(f"--dtype {args.dtype} is CUDA-only (the CPU kernels take float32 and float64)", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    args.repeats = args.repeats or (50 if args.device == "cuda" else 30)
    shapes = select_shapes(args.shapes)
    t0 = time.perf_counter()
    machine = common.machine_info(args.device)
    flush = common.Flusher(args.device, enabled=not args.no_flush)
    rows = []
    for s in shapes:
        rows.append(bench_shape(s, args, flush))
        r = rows[-1]
        print(f"  {s.name:<16} weight {r['weight_ms']:.3f} ms  mm {r['mm_ms']:.3f}  random/weight "
              f"{r['random_over_weight']:.2f}", flush=True)
    machine["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    result = {"benchmark": "linear_backward_input", "schema": 1, "date": common.now_iso(),
              "command": " ".join([os.path.basename(sys.executable)] + sys.argv), "machine": machine,
              "versions": common.versions(), "git": common.git_info(),
              "settings": {"device": args.device, "dtype": args.dtype, "batch": args.batch, "repeats": args.repeats,
                           "warmup": args.warmup, "statistic": "median", "impls": list(IMPLS), "spec": SPEC,
                           "scale": "Glorot-uniform bound of each layer", "flush": not args.no_flush},
              "rows": rows, "wall_s": time.perf_counter() - t0}
    who = machine["gpu"]["name"] if machine.get("gpu") else machine["hostname"]
    path = args.json or os.path.join(common.REPO_ROOT, "benchmarks", "results",
                                     f"linear-{args.device}-{args.dtype}-{common.slug(who)}-"
                                     f"{time.strftime('%Y%m%d-%H%M%S')}.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {path}; total {result['wall_s']:.1f} s\n")
    print(format_table(result), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------------
# pytest-benchmark: the same cases (pytest benchmarks/bench_linear.py)
# ---------------------------------------------------------------------------------------------------
try:
    import pytest
    import pytest_benchmark  # noqa: F401
except ImportError:
    pytest = None

if pytest is not None:
    HAS_CUDA = torch.cuda.is_available() and bool(bioplaus_kernels.with_cuda)
    _BATCH = int(os.environ.get("BIOPLAUS_BENCH_BATCH", DEFAULT_BATCH))
    _CASES: Dict = {}

    def _params():
        out = []
        for dev in ("cpu", "cuda"):
            marks = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device or CUDA build")] \
                if dev == "cuda" else []
            for s in select_shapes(os.environ.get("BIOPLAUS_BENCH_SHAPES")):
                for impl in IMPLS:
                    out.append(pytest.param(dev, s.name, impl, marks=marks, id=f"{dev}-{s.name}-{impl}"))
        return out

    @pytest.mark.parametrize("device,shape,impl", _params())
    def test_linear_backward_input(benchmark, device, shape, impl):
        key = (device, shape)
        if key not in _CASES:
            _CASES.clear()
            _CASES[key] = Case({s.name: s for s in SHAPES}[shape], _BATCH, device, torch.float32)
            _CASES[key].verify()
        fn = _CASES[key].fn(impl)
        benchmark.group = f"linear_backward_input {device} {shape}"
        benchmark.extra_info.update({"batch": _BATCH, "impl": impl})
        out = common.run_pytest_benchmark(benchmark, fn, device)
        assert out is not None


if __name__ == "__main__":
    sys.exit(main())
