"""Shared test setup: CUDA cases carry the `cuda` mark and are skipped (shown, never silently missing)
where no CUDA device or no CUDA build of the kernels is present."""
import pytest
import torch

import bioplaus_kernels

HAS_CUDA = torch.cuda.is_available() and bioplaus_kernels.with_cuda
CUDA_SKIP_REASON = ("no CUDA device visible" if not torch.cuda.is_available()
                    else "bioplaus_kernels was built without its CUDA kernels")

#: parametrize over this to run a test on the CPU and, marked `cuda`, on the GPU.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason=CUDA_SKIP_REASON)
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
