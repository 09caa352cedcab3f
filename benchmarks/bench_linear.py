#!/usr/bin/env python3
"""linear_backward_input per feedback mode: ``bioplaus bench linear`` (bioplaus_kernels/bench/linear.py, ``--help``)
with the default JSON path benchmarks/results/linear-<device>-<dtype>-<host>-<date>.json, and the same cases as
pytest-benchmark tests (pytest benchmarks/bench_linear.py)."""
from __future__ import annotations

import os
import sys
from typing import Dict

import torch

import bioplaus_kernels
from bioplaus_kernels.bench import common, linear
from bioplaus_kernels.bench.linear import DEFAULT_BATCH, IMPLS, SHAPES, Case, select_shapes


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
    sys.exit(common.main(linear, save_default=True))
