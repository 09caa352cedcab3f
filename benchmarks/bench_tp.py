#!/usr/bin/env python3
"""Benchmark of a target-propagation training step against the backprop step of the same network.

For each of the reference networks of Bartunov et al. 2018 (appendix Table 3: MNIST and CIFAR-10, fully and
locally connected, tanh, SAME padding) it times one training step of

  bp       backprop: cross-entropy, backward, Adam step (torch's defaults);
  dtp      bioplaus_kernels.tp.Trainer(model, "dtp", schedule="parallel"): forward pass, fused difference
           targets, inverse losses with in-kernel noise and their gradients, local forward losses, two Adam
           steps (forward and inverse weights) -- the full work of a parallel step;
  sdtp     the same with "sdtp" (one more inverse, the output layer's, and no gradient step for t_{L-1});
  ref_dtp  reference.tp.StraightforwardDTP: the same DTP equations written as research code does (two
           separate inverse applications per target, autograd for everything, torch.randn noise, F.fold for
           the transposed LC layers) on the same network (its LC forward layers are the package's).

and reports the medians and the ratios dtp/bp, sdtp/bp and dtp/ref_dtp. The issue's target is dtp/bp <= 2.4
on the CPU. Batch 128 (the paper does not state one), float32, inputs and labels random (timing does not
depend on the values). Each implementation trains its own copy of the network; calls are interleaved
(bp, dtp, sdtp, ref_dtp, bp, ...) so that load drift on a shared machine hits all alike, with a 64 MB cache
flush before each call. Threads: --threads (default 1: on this 2-core machine, shared by other jobs, a second
intra-op thread makes every small op wait for a descheduled thread; both sides always use the same count).

  python3 benchmarks/bench_tp.py                      # mnist-fc mnist-lc cifar-fc cifar-lc, batch 128
  python3 benchmarks/bench_tp.py --nets mnist-fc --repeats 20
  pytest benchmarks/bench_tp.py                        # pytest-benchmark cases (BIOPLAUS_BENCH_NETS)

Output: benchmarks/results/tp-cpu-float32-<threads>thread.{json,log} (machine, versions, git revision, date,
settings, one row per net) and a table printed last.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from typing import Callable, Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from bioplaus_kernels.nn import LocallyConnected2d  # noqa: E402
from bioplaus_kernels.reference.tp import StraightforwardDTP  # noqa: E402
from bioplaus_kernels.tp import Trainer  # noqa: E402

IMPLS = ("bp", "dtp", "sdtp", "ref_dtp")


def _lc_stack(in_shape, specs):
    """LC(k, C, stride) layers with SAME padding and tanh, then Flatten."""
    c, hw = in_shape[0], in_shape[1]
    layers = []
    for k, out_c, s in specs:
        lc = LocallyConnected2d(c, out_c, hw, k, stride=s, padding="same")
        layers += [lc, nn.Tanh()]
        c, hw = out_c, lc.output_size[0]
    return layers + [nn.Flatten()], c * hw * hw


def _fc_stack(width, hidden):
    layers = []
    for h in hidden:
        layers += [nn.Linear(width, h), nn.Tanh()]
        width = h
    return layers, width


def build_net(name: str) -> nn.Sequential:
    """The paper's nets (docs/papers.md section 1, Table 3), softmax 10 as the last Linear's logits."""
    if name == "mnist-fc":
        layers, width = _fc_stack(784, [256] * 5)
    elif name == "cifar-fc":
        layers, width = _fc_stack(3072, [1024] * 3)
    elif name == "mnist-lc":
        layers, width = _lc_stack((1, 28), [(3, 32, 2), (3, 64, 2)])
        more, width = _fc_stack(width, [1024])
        layers += more
    elif name == "cifar-lc":
        layers, width = _lc_stack((3, 32), [(5, 64, 2), (5, 128, 2), (3, 256, 1)])
        more, width = _fc_stack(width, [1024])
        layers += more
    else:
        raise ValueError(f"unknown net {name!r}; choose from mnist-fc, mnist-lc, cifar-fc, cifar-lc")
    net = nn.Sequential(*layers, nn.Linear(width, 10))
    for m in net:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return net


def input_shape(name: str):
    return {"mnist-fc": (784,), "cifar-fc": (3072,), "mnist-lc": (1, 28, 28), "cifar-lc": (3, 32, 32)}[name]


def make_steps(name: str, batch: int, seed: int = 0) -> Dict[str, Callable[[], object]]:
    """One training-step closure per implementation, each on its own copy of the same initial network."""
    torch.manual_seed(seed)
    base = build_net(name)
    x = torch.rand(batch, *input_shape(name))
    y = torch.randint(0, 10, (batch,))
    bp_net = copy.deepcopy(base)
    bp_opt = torch.optim.Adam(bp_net.parameters())

    def bp():
        bp_opt.zero_grad(set_to_none=True)
        F.cross_entropy(bp_net(x), y).backward()
        bp_opt.step()

    dtp = Trainer(copy.deepcopy(base), "dtp", schedule="parallel")
    sdtp = Trainer(copy.deepcopy(base), "sdtp", schedule="parallel")
    ref = StraightforwardDTP(copy.deepcopy(base))
    return {"bp": bp, "dtp": lambda: dtp.step(x, y), "sdtp": lambda: sdtp.step(x, y), "ref_dtp": lambda: ref.step(x, y)}


def run_net(name: str, batch: int, repeats: int, warmup: int, max_seconds: float, flush) -> Dict:
    steps = make_steps(name, batch)
    fns = [steps[k] for k in IMPLS]
    t0 = time.perf_counter()
    common.time_interleaved(fns, "cpu", 1, warmup)  # warm-up round (allocations, Adam state)
    per_round = (time.perf_counter() - t0) / max(warmup, 1)
    reps = int(max(3, min(repeats, max_seconds / max(per_round, 1e-9))))
    samples = common.time_interleaved(fns, "cpu", reps, 0, flush)
    row = {"net": name, "batch": batch, "repeats": reps}
    for k, s in zip(IMPLS, samples):
        row[k] = common.summarize(s)
    med = {k: row[k]["median_ms"] for k in IMPLS}
    row["ratio"] = {"dtp/bp": med["dtp"] / med["bp"], "sdtp/bp": med["sdtp"] / med["bp"],
                    "dtp/ref_dtp": med["dtp"] / med["ref_dtp"], "ref_dtp/bp": med["ref_dtp"] / med["bp"]}
    return row


def table(rows: List[Dict]) -> str:
    head = f"{'net':<9} {'bp ms':>9} {'dtp ms':>9} {'sdtp ms':>9} {'ref_dtp ms':>10} {'dtp/bp':>7} {'sdtp/bp':>8} " \
           f"{'ref/bp':>7} {'dtp/ref':>8}"
    lines = [head]
    for r in rows:
        q = r["ratio"]
        lines.append(f"{r['net']:<9} {r['bp']['median_ms']:9.2f} {r['dtp']['median_ms']:9.2f} "
                     f"{r['sdtp']['median_ms']:9.2f} {r['ref_dtp']['median_ms']:10.2f} {q['dtp/bp']:7.2f} "
                     f"{q['sdtp/bp']:8.2f} {q['ref_dtp/bp']:7.2f} {q['dtp/ref_dtp']:8.2f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nets", default="mnist-fc,mnist-lc,cifar-fc,cifar-lc")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=30, help="timed rounds per net at most (median reported)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--max-case-seconds", type=float, default=60.0, help="time budget of one net's timed rounds")
    ap.add_argument("--no-flush", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    stem = args.json[:-5] if args.json and args.json.endswith(".json") else args.json or os.path.join(
        common.REPO_ROOT, "benchmarks", "results", f"tp-cpu-float32-{args.threads}thread")
    os.makedirs(os.path.dirname(stem), exist_ok=True)
    log = open(stem + ".log", "w")

    def say(msg):
        print(msg, flush=True)
        log.write(msg + "\n")

    flush = None if args.no_flush else common.Flusher("cpu")
    machine = common.machine_info("cpu")
    say(f"TP step benchmark: cpu float32, batch {args.batch}, {args.threads} thread(s), {machine['cpu_model']}, "
        f"load {machine['loadavg_start']}")
    rows = []
    for name in args.nets.split(","):
        rows.append(run_net(name, args.batch, args.repeats, args.warmup, args.max_case_seconds, flush))
        say(table(rows[-1:]).splitlines()[1])
    result = {"benchmark": "tp", "schema": 1, "date": common.now_iso(), "machine": machine,
              "versions": common.versions(), "git": common.git_info(), "device": "cpu", "dtype": "float32",
              "threads": args.threads, "batch": args.batch, "rows": rows, "loadavg_end": list(os.getloadavg())}
    with open(stem + ".json", "w") as f:
        json.dump(result, f, indent=1)
    say(table(rows))
    return 0


# ---------------------------------------------------------------------------------------------------
# pytest-benchmark: pytest benchmarks/bench_tp.py (BIOPLAUS_BENCH_NETS default mnist-fc,mnist-lc;
# BIOPLAUS_BENCH_BATCH default 128; BIOPLAUS_BENCH_THREADS default 1)
# ---------------------------------------------------------------------------------------------------
try:
    import pytest
except ImportError:  # pragma: no cover
    pytest = None

if pytest is not None:
    _NETS = os.environ.get("BIOPLAUS_BENCH_NETS", "mnist-fc,mnist-lc").split(",")

    @pytest.mark.parametrize("impl", IMPLS)
    @pytest.mark.parametrize("net", _NETS)
    def test_tp_step(benchmark, net, impl):
        threads = torch.get_num_threads()
        torch.set_num_threads(int(os.environ.get("BIOPLAUS_BENCH_THREADS", "1")))  # as the CLI's --threads
        try:
            batch = int(os.environ.get("BIOPLAUS_BENCH_BATCH", "128"))
            fn = make_steps(net, batch)[impl]
            benchmark.group = f"tp step cpu {net}"
            benchmark.extra_info.update({"batch": batch, "threads": torch.get_num_threads()})
            benchmark.pedantic(fn, rounds=5, warmup_rounds=1, iterations=1)
        finally:
            torch.set_num_threads(threads)


if __name__ == "__main__":
    sys.exit(main())
