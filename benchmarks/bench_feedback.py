#!/usr/bin/env python3
"""Each feedback rule's layer step against bp and the BioTorch-style rule: ``bioplaus bench feedback``
(bioplaus_kernels/bench/feedback.py, ``--help``) with the default JSON path
benchmarks/results/feedback-<device>-<dtype>-<host>-<date>.json, and the same cases as pytest-benchmark tests
(python3 -m pytest benchmarks/bench_feedback.py)."""
from __future__ import annotations

import os
import sys
from typing import Dict

import torch

from bioplaus_kernels.bench import common, feedback
from bioplaus_kernels.bench.feedback import BT_RULES, RULES, SHAPES, Case, stored_bytes


# ---------------------------------------------------------------------------------------------------
# pytest-benchmark cases (a small subset by default; BIOPLAUS_BENCH_SHAPES=all for every shape)
# ---------------------------------------------------------------------------------------------------
if "pytest" in sys.modules:
    import pytest

    _ENV = os.environ.get("BIOPLAUS_BENCH_SHAPES", "mnist-fc1,mnist-c2,mnist-lc2")
    _NAMES = [s.name for s in SHAPES] if _ENV == "all" else _ENV.split(",")
    _CASES: Dict = {}

    def _params():
        out = []
        for s in SHAPES:
            if s.name not in _NAMES:
                continue
            for impl in list(RULES) + (list(BT_RULES) if s.kind != "lc" else []):
                out.append(pytest.param("cpu", s.name, impl))
                out.append(pytest.param("cuda", s.name, impl, marks=pytest.mark.cuda))
        return out

    @pytest.mark.parametrize("device,shape,impl", _params())
    def test_feedback_step(benchmark, device, shape, impl):
        if device == "cuda" and not torch.cuda.is_available():
            pytest.skip("no CUDA device visible")
        key = (device, shape)
        if key not in _CASES:
            _CASES.clear()
            sh = {s.name: s for s in SHAPES}[shape]
            batch = 8 if sh.resnet else 128
            _CASES[key] = Case(sh, batch, device, torch.float32,
                               list(RULES) + (list(BT_RULES) if sh.kind != "lc" else []))
            _CASES[key].verify()
        case = _CASES[key]
        fn = case.step(impl)
        benchmark.group = f"feedback {device} {shape}"
        benchmark.extra_info.update({"impl": impl, "batch": case.batch, "stored_bytes": stored_bytes(case.modules[impl])})
        out = common.run_pytest_benchmark(benchmark, fn, device)
        assert out is not None


if __name__ == "__main__":
    sys.exit(common.main(feedback, save_default=True))
