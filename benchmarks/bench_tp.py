#!/usr/bin/env python3
"""A TP training step against the BP step and a straightforward pure-PyTorch DTP: ``bioplaus bench tp``
(bioplaus_kernels/bench/tp.py, ``--help``) with the default output benchmarks/results/tp-<device>-<dtype>-
<threads>thread.{json,log}, and the same cases as pytest-benchmark tests (pytest benchmarks/bench_tp.py)."""
from __future__ import annotations

import os
import sys

import torch

from bioplaus_kernels.bench import common, tp
from bioplaus_kernels.bench.tp import IMPLS, NETS, make_steps

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
            fn = make_steps(NETS[net], batch)[0][impl]
            benchmark.group = f"tp step cpu {net}"
            benchmark.extra_info.update({"batch": batch, "threads": torch.get_num_threads()})
            benchmark.pedantic(fn, rounds=5, warmup_rounds=1, iterations=1)
        finally:
            torch.set_num_threads(threads)


if __name__ == "__main__":
    sys.exit(common.main(tp, save_default=True))
