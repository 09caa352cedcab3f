#!/usr/bin/env python3
"""The LC layer against unfold+bmm: ``bioplaus bench lc2d`` (bioplaus_kernels/bench/lc2d.py, ``--help``) with the
default JSON path benchmarks/results/lc2d-<device>-<dtype>-<host>-<date>.json, and the same cases as
pytest-benchmark tests (pytest benchmarks/bench_lc2d.py)."""
from __future__ import annotations

import gc
import os
import sys
from typing import Dict

import torch

import bioplaus_kernels
from bioplaus_kernels.bench import common, lc2d
from bioplaus_kernels.bench.lc2d import (DEFAULT_BATCH, DTYPES, FEEDBACK_MODES, IMPL_NAMES, IMPLS, PASSES, SHAPES, Case,
                                         costs, cpu_memory_validation, feedback_dgrad_fn, select_shapes,
                                         verify_feedback)


# ---------------------------------------------------------------------------------------------------
# pytest-benchmark: the same cases (pytest benchmarks/bench_lc2d.py)
# ---------------------------------------------------------------------------------------------------
try:
    import pytest
    import pytest_benchmark  # noqa: F401
except ImportError:  # running as a script without pytest: the CLI above is all there is
    pytest = None

if pytest is not None:
    HAS_CUDA = torch.cuda.is_available() and bool(bioplaus_kernels.with_cuda)
    _CUDA_SKIP = ("no CUDA device visible" if not torch.cuda.is_available()
                  else "bioplaus_kernels was built without its CUDA kernels")
    _ENV_SHAPES = os.environ.get("BIOPLAUS_BENCH_SHAPES")
    _ENV_BATCH = int(os.environ.get("BIOPLAUS_BENCH_BATCH", DEFAULT_BATCH))
    _ENV_DTYPE = os.environ.get("BIOPLAUS_BENCH_DTYPE", "float32")

    def _device_shape_params(variants):
        """(device, shape name, *variant) for every device, selected shape and variant (a tuple of strings)."""
        out = []
        for dev in ("cpu", "cuda"):
            if dev == "cpu" and _ENV_DTYPE != "float32":
                continue
            marks = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason=_CUDA_SKIP)] if dev == "cuda" else []
            for s in select_shapes(_ENV_SHAPES, dev):
                for v in variants:
                    out.append(pytest.param(dev, s.name, *v, marks=marks, id="-".join((dev, s.name) + v)))
        return out

    def _params():
        return _device_shape_params([(p, impl) for p in PASSES for impl in IMPLS])

    _CACHE: Dict = {}

    def _case(dev: str, name: str) -> Case:
        """One Case alive at a time (the parameters run shape by shape); verified once when built."""
        key = (dev, name, _ENV_BATCH, _ENV_DTYPE)
        if key not in _CACHE:
            _CACHE.clear()
            gc.collect()
            if dev == "cuda":
                torch.cuda.empty_cache()
            case = Case({s.name: s for s in SHAPES}[name], _ENV_BATCH, dev, DTYPES[_ENV_DTYPE])
            case.verify()
            _CACHE[key] = case
        return _CACHE[key]

    _FLUSH: Dict = {}

    @pytest.mark.parametrize("device,shape,pass_,impl", _params())
    def test_lc2d(benchmark, device, shape, pass_, impl):
        case = _case(device, shape)
        fn = case.make_fn(impl, pass_)
        elem = torch.empty((), dtype=case.dtype).element_size()
        c = costs(case.shape, case.batch, elem)[pass_]
        benchmark.group = f"lc2d {device} {shape} {pass_}"
        benchmark.extra_info.update({"batch": case.batch, "dtype": _ENV_DTYPE, "impl": IMPL_NAMES[impl],
                                     "flops": c["flops"], "min_bytes": c["bytes"], "geometry": case.shape.geometry()})
        if device == "cuda":
            if "cuda" not in _FLUSH:
                _FLUSH["cuda"] = common.Flusher("cuda")
            flush = _FLUSH["cuda"]

            def setup():
                flush()
                torch.cuda.synchronize()

            def target():
                out = fn()
                torch.cuda.synchronize()
                return out

            rounds = int(os.environ.get("BIOPLAUS_BENCH_ROUNDS", 20))
            out = benchmark.pedantic(target, setup=setup, rounds=rounds, warmup_rounds=3, iterations=1)
            if pass_ == "step":
                benchmark.extra_info["peak_extra_mb"] = common.cuda_peak_extra_bytes(fn) / common.MB
        else:
            out = benchmark(fn)
        assert out is not None

    @pytest.mark.parametrize("device,shape,mode", _device_shape_params([(m,) for m in FEEDBACK_MODES]))
    def test_lc2d_feedback_dgrad(benchmark, device, shape, mode):
        """lc2d_backward_input per feedback mode (compare within the group: weight is backprop)."""
        case = _case(device, shape)
        if mode == FEEDBACK_MODES[1]:
            verify_feedback(case)
        fn = feedback_dgrad_fn(case, mode)
        benchmark.group = f"lc2d {device} {shape} dgrad-feedback"
        benchmark.extra_info.update({"batch": case.batch, "dtype": _ENV_DTYPE, "feedback": mode,
                                     "geometry": case.shape.geometry()})
        out = common.run_pytest_benchmark(benchmark, fn, device,
                                          rounds=int(os.environ.get("BIOPLAUS_BENCH_ROUNDS", 20)))
        assert out is not None

    def test_rss_method_measures_a_known_allocation():
        """The CPU memory method must see a 200 MB allocation as ~200 MB and an empty step as ~0."""
        v = cpu_memory_validation(torch.get_num_threads())
        assert abs(v["alloc200"]["measured_mb"] - 200.0) < 10.0, v
        assert v["none"]["measured_mb"] < 10.0, v


if __name__ == "__main__":
    sys.exit(common.main(lc2d, save_default=True))
