"""Benchmark of a target-propagation training step against the backprop step of the same network.

For each of the reference networks of Bartunov et al. 2018 (appendix Table 3: MNIST and CIFAR-10, fully and
locally connected, tanh, SAME padding) it times one training step of

  bp       backprop: cross-entropy, backward, Adam step (torch's defaults);
  dtp      bioplaus_kernels.tp.Trainer(model, "dtp", schedule="parallel"): forward pass, fused difference
           targets, inverse losses with in-kernel noise and their gradients, local forward losses, two Adam
           steps (forward and inverse weights) -- the full work of a parallel step;
  sdtp     the same with "sdtp" (one more inverse, the output layer's, and no gradient step for t_{L-1});
  ref_dtp  reference.tp.StraightforwardDTP, the pure-PyTorch DTP and the named baseline: the same DTP
           equations written as research code does (two separate inverse applications per target, autograd
           for everything, torch.randn noise, F.fold for the transposed LC layers) on the same network (its LC
           forward layers are the package's).

and reports the medians, the ratios dtp/bp, sdtp/bp, ref_dtp/bp and dtp/ref_dtp, and bp's and dtp's time over
the floor. The issue's target is dtp/bp <= 2.4 on the CPU. Batch 128 (the paper does not state one), inputs and
labels random (timing does not depend on the values). Each implementation trains its own copy of the network;
calls are interleaved (bp, dtp, sdtp, ref_dtp, bp, ...) so that load drift on a shared machine hits all alike,
with a cache flush before each call (CPU 64 MB; CUDA 256 MB, CUDA events). Every case runs on the CPU and on
CUDA (--device). Threads: --threads (default 1: on a 2-core machine shared by other jobs, a second intra-op
thread makes every small op wait for a descheduled thread; all implementations always use the same count).

Nets: --nets (mnist-fc, mnist-lc, cifar-fc, cifar-lc; --shape paper is all four), or --shape IN,HIDDEN,DEPTH (a
tanh FC net: IN inputs, DEPTH >= 2 hidden layers of HIDDEN units, 10 outputs; mnist-fc is 784,256,5) or
--shape H,W,Cin,Cout,k,s (the paper's LC net form with one LC layer: LC k x k, Cout channels, stride s, SAME
padding on a Cin x H x W input, tanh, FC 1024 tanh, 10 outputs).

Floor: that of the BP step, which bounds every implementation from below: FLOPs 3 x 2 x batch x (sum of the
weights of the Linear and LC layers: each weight is one multiply-add per sample), bytes (10 x parameters:
weights read twice, gradients written, Adam reading p, g, m, v and writing p, m, v; plus batch x (input + 2 x
the layers' outputs)) x element size; floor = max(FLOPs / peak FLOP/s, bytes / peak bandwidth), ceilings
measured in the same run.

  bioplaus bench tp --shape paper --device cpu
  bioplaus bench tp --shape 784,256,5 --device cuda --json out.json
  python3 benchmarks/bench_tp.py                      # mnist-fc mnist-lc cifar-fc cifar-lc, batch 128
  python3 benchmarks/bench_tp.py --nets mnist-fc --repeats 20
  pytest benchmarks/bench_tp.py                        # pytest-benchmark cases (BIOPLAUS_BENCH_NETS)

Output: a JSON (machine, versions, git revision, date, settings, one row per net) with a .log of the printed
lines beside it (benchmarks/bench_tp.py: benchmarks/results/tp-<device>-<dtype>-<threads>thread.{json,log}
by default), and a table printed last.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import sys
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from bioplaus_kernels.nn import LocallyConnected2d
from bioplaus_kernels.reference.tp import StraightforwardDTP
from bioplaus_kernels.tp import Trainer

from . import common
from .common import UsageError

IMPLS = ("bp", "dtp", "sdtp", "ref_dtp")
DTYPE_NAMES = ("float32", "float64")
SHAPE_FORMS = ("IN,HIDDEN,DEPTH", "H,W,Cin,Cout,k,s")
CLASSES = 10


@dataclasses.dataclass(frozen=True)
class Net:
    """A tanh net of Bartunov et al.'s form: LC layers (SAME padding), then FC layers, then CLASSES logits."""
    name: str
    input: Tuple[int, ...]                      # one sample's shape: (features,) or (C, H, W)
    lc: Tuple[Tuple[int, int, int], ...] = ()   # (k, C_out, stride) per LC layer
    hidden: Tuple[int, ...] = ()                # widths of the FC layers after them


NETS: Dict[str, Net] = {n.name: n for n in (
    # docs/papers.md section 1, Table 3
    Net("mnist-fc", (784,), hidden=(256,) * 5),
    Net("mnist-lc", (1, 28, 28), ((3, 32, 2), (3, 64, 2)), (1024,)),
    Net("cifar-fc", (3072,), hidden=(1024,) * 3),
    Net("cifar-lc", (3, 32, 32), ((5, 64, 2), (5, 128, 2), (3, 256, 1)), (1024,)),
)}


def custom_net(fields: Tuple[int, ...]) -> Net:
    """--shape IN,HIDDEN,DEPTH (an FC net) or H,W,Cin,Cout,k,s (one LC layer, then FC 1024)."""
    if len(fields) == 3:
        inp, hidden, depth = fields
        if depth < 2:  # target propagation needs a hidden layer below the penultimate one to send a target to
            raise UsageError(f"--shape {inp},{hidden},{depth}: DEPTH must be >= 2 (a target-propagation net "
                             "needs two hidden layers)")
        return Net("custom-fc", (inp,), hidden=(hidden,) * depth)
    h, w, c_in, c_out, k, s = fields
    return Net("custom-lc", (c_in, h, w), ((k, c_out, s),), (1024,))


def select_nets(args) -> List[Net]:
    if args.shape not in (None, "paper"):
        return [custom_net(args.shape)]
    names = list(NETS) if args.shape == "paper" else [n for n in args.nets.split(",") if n]
    unknown = [n for n in names if n not in NETS]
    if unknown:
        raise UsageError(f"unknown net {', '.join(unknown)}; choose from {', '.join(NETS)}")
    return [NETS[n] for n in names]


def build_net(net: Net) -> nn.Sequential:
    """The net, Glorot-uniform Linear weights and zero biases (the LC layers initialise themselves)."""
    layers: List[nn.Module] = []
    if net.lc:
        c, hw = net.input[0], tuple(net.input[1:])
        for k, out_c, s in net.lc:
            lc = LocallyConnected2d(c, out_c, hw, k, stride=s, padding="same")
            layers += [lc, nn.Tanh()]
            c, hw = out_c, tuple(lc.output_size)
        layers.append(nn.Flatten())
        width = c * hw[0] * hw[1]
    else:
        width = net.input[0]
    for h in net.hidden:
        layers += [nn.Linear(width, h), nn.Tanh()]
        width = h
    model = nn.Sequential(*layers, nn.Linear(width, CLASSES))
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def costs(model: nn.Sequential, net: Net, batch: int, elem: int) -> Dict[str, float]:
    """FLOPs and minimal bytes of one BP step (the module docstring's floor)."""
    weights = sum(m.weight.numel() for m in model if isinstance(m, (nn.Linear, LocallyConnected2d)))
    params = sum(p.numel() for p in model.parameters())
    p = model[0].weight
    x = torch.zeros(1, *net.input, device=p.device, dtype=p.dtype)
    outputs = 0
    with torch.no_grad():
        for m in model:
            x = m(x)
            if isinstance(m, (nn.Linear, LocallyConnected2d)):
                outputs += x.numel()
    inp = 1
    for d in net.input:
        inp *= d
    return {"flops": 3 * 2.0 * batch * weights, "bytes": float(10 * params + batch * (inp + 2 * outputs)) * elem}


def make_steps(net: Net, batch: int, device: str = "cpu", dtype: torch.dtype = torch.float32,
               seed: int = 0) -> Tuple[Dict[str, Callable[[], object]], nn.Sequential]:
    """One training-step closure per implementation, each on its own copy of the same initial network on
    ``device``; and that initial network."""
    torch.manual_seed(seed)
    base = build_net(net).to(device, dtype)
    x = torch.rand(batch, *net.input, device=device, dtype=dtype)
    y = torch.randint(0, CLASSES, (batch,), device=device)
    bp_net = copy.deepcopy(base)
    bp_opt = torch.optim.Adam(bp_net.parameters())

    def bp():
        bp_opt.zero_grad(set_to_none=True)
        F.cross_entropy(bp_net(x), y).backward()
        bp_opt.step()

    dtp = Trainer(copy.deepcopy(base), "dtp", schedule="parallel")
    sdtp = Trainer(copy.deepcopy(base), "sdtp", schedule="parallel")
    ref = StraightforwardDTP(copy.deepcopy(base))
    steps = {"bp": bp, "dtp": lambda: dtp.step(x, y), "sdtp": lambda: sdtp.step(x, y),
             "ref_dtp": lambda: ref.step(x, y)}
    return steps, base


def run_net(net: Net, args, ceilings: Dict, flush) -> Dict:
    dtype = common.DTYPES[args.dtype]
    steps, base = make_steps(net, args.batch, args.device, dtype)
    fns = [steps[k] for k in IMPLS]
    # Warm-up (allocations, Adam state); its last round, timed like the samples, sizes the repeats to the budget.
    warm = common.time_interleaved(fns, args.device, 1, max(0, args.warmup - 1), flush)
    per_round_s = sum(w[0] for w in warm) * 1e-3
    reps = int(max(3, min(args.repeats, args.max_case_seconds / max(per_round_s, 1e-9))))
    samples = common.time_interleaved(fns, args.device, reps, 0, flush)
    c = costs(base, net, args.batch, torch.empty((), dtype=dtype).element_size())
    row = {"net": net.name, "batch": args.batch, "repeats": reps, "geometry": dataclasses.asdict(net), **c,
           **common.floor(c["flops"], c["bytes"], ceilings)}
    for k, s in zip(IMPLS, samples):
        row[k] = common.summarize(s)
    med = {k: row[k]["median_ms"] for k in IMPLS}
    row["ratio"] = {"dtp/bp": med["dtp"] / med["bp"], "sdtp/bp": med["sdtp"] / med["bp"],
                    "dtp/ref_dtp": med["dtp"] / med["ref_dtp"], "ref_dtp/bp": med["ref_dtp"] / med["bp"]}
    row["over_floor"] = {k: med[k] / row["floor_ms"] for k in IMPLS}
    return row


def table(rows: List[Dict]) -> str:
    head = f"{'net':<9} {'bp ms':>9} {'dtp ms':>9} {'sdtp ms':>9} {'ref_dtp ms':>10} {'dtp/bp':>7} {'sdtp/bp':>8} " \
           f"{'ref/bp':>7} {'dtp/ref':>8} {'bp/floor':>8} {'dtp/floor':>9}"
    lines = [head]
    for r in rows:
        q, fl = r["ratio"], r.get("over_floor", {})
        floors = " ".join(f"{fl[k]:{w}.1f}" if k in fl else "-".rjust(w) for k, w in (("bp", 8), ("dtp", 9)))
        lines.append(f"{r['net']:<9} {r['bp']['median_ms']:9.2f} {r['dtp']['median_ms']:9.2f} "
                     f"{r['sdtp']['median_ms']:9.2f} {r['ref_dtp']['median_ms']:10.2f} {q['dtp/bp']:7.2f} "
                     f"{q['sdtp/bp']:8.2f} {q['ref_dtp/bp']:7.2f} {q['dtp/ref_dtp']:8.2f} {floors}")
    return "\n".join(lines)


def format_table(result: Dict) -> str:
    return "\n".join([
        f"TP step {result['device']} {result['dtype']}, batch {result['batch']}, on "
        f"{common.machine_label(result['machine'])}; median ms",
        "ref_dtp = the straightforward pure-PyTorch DTP (reference.tp.StraightforwardDTP), the baseline; "
        "x/floor = median / the BP step's roofline floor",
        table(result["rows"])])


# ---------------------------------------------------------------------------------------------------
# Command line: bioplaus bench tp, benchmarks/bench_tp.py, python -m bioplaus_kernels.bench.tp
# ---------------------------------------------------------------------------------------------------
def add_arguments(ap: argparse.ArgumentParser, save_default: bool = False) -> None:
    common.add_run_arguments(ap, DTYPE_NAMES, save_default, "tp-<device>-<dtype>-<threads>thread")
    which = common.add_shape_argument(
        ap, SHAPE_FORMS,
        "paper: the four nets of Bartunov et al. 2018; IN,HIDDEN,DEPTH: a tanh FC net with DEPTH "
        ">= 2 hidden layers; H,W,Cin,Cout,k,s: one LC layer (SAME padding), FC 1024, 10 outputs")
    which.add_argument("--nets", default=",".join(NETS), help=f"comma list of {', '.join(NETS)} (default: all)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=30, help="timed rounds per net at most (median reported)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--max-case-seconds", type=float, default=60.0, help="time budget of one net's timed rounds")
    ap.add_argument("--no-flush", action="store_true")


def run(args) -> int:
    if args.table_from:
        print(format_table(common.load_result(args.table_from)))
        return 0
    common.resolve_device(args)
    common.positive(args, "batch", "threads", "repeats")
    nets = select_nets(args)
    torch.set_num_threads(args.threads)
    path = args.json or (os.path.join(common.RESULTS_DIR, f"tp-{args.device}-{args.dtype}-{args.threads}thread.json")
                         if args.save_default else None)
    lines: List[str] = []

    def say(msg):
        print(msg, flush=True)
        lines.append(msg)

    flush = None if args.no_flush else common.Flusher(args.device)
    machine = common.machine_info(args.device)
    say(f"TP step benchmark: {args.device} {args.dtype}, batch {args.batch}, {common.machine_label(machine)}, "
        f"load {machine['loadavg_start']}")
    ceilings = common.measure_ceilings(args.device, common.DTYPES[args.dtype])
    say(f"  {common.describe_ceilings(ceilings)}")
    rows = []
    for net in nets:
        rows.append(run_net(net, args, ceilings, flush))
        say(table(rows[-1:]).splitlines()[1])
    result = {"benchmark": "tp", "schema": 1, "date": common.now_iso(), "command": common.command_line(),
              "machine": machine, "versions": common.versions(), "git": common.git_info(), "device": args.device,
              "dtype": args.dtype, "threads": args.threads, "batch": args.batch, "ceilings": ceilings, "rows": rows,
              "loadavg_end": list(os.getloadavg())}
    say(common.write_json(result, path))
    say(format_table(result))
    if path is not None:
        with open(os.path.splitext(path)[0] + ".log", "w") as f:
            f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(common.main(sys.modules[__name__]))
