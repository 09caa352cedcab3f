"""Shared test setup: CUDA cases carry the `cuda` mark and are skipped (shown, never silently missing)
where no CUDA device or no CUDA build of the kernels is present. The CUDA kernels' own cases run twice:
marked `emulation`, in the CPU execution layer on every run (docs/emulation.md), and marked `cuda` on a GPU."""
import contextlib

import pytest
import torch

import bioplaus_kernels
import emulated_cuda

HAS_CUDA = torch.cuda.is_available() and bioplaus_kernels.with_cuda
CUDA_SKIP_REASON = ("no CUDA device visible" if not torch.cuda.is_available()
                    else "bioplaus_kernels was built without its CUDA kernels")

#: parametrize over this to run a test on the CPU and, marked `cuda`, on the GPU.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]

#: parametrize over this to run a CUDA kernel's case in the CPU execution layer ("emu") and on the GPU.
KERNEL_DEVICES = [pytest.param("emu", marks=pytest.mark.emulation), pytest.param("cuda", marks=pytest.mark.cuda)]
KERNEL_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def kernel_ops(device):
    """(operator namespace, tensor device) that runs the CUDA kernels on `device` ("emu" or "cuda")."""
    if device == "emu":
        return emulated_cuda.load(), "cpu"
    return torch.ops.bioplaus, "cuda"


#: lc2d's CUDA algorithms (bioplaus_kernels.backends.ALGORITHMS["cuda"]); fused_tc runs in float16 and
#: bfloat16, and in float32 as TF32 (the fixture allows TF32 for it).
CUDA_ALGORITHMS = ("fused", "library", "fused_tc")
TENSOR_CORE_DTYPES = (torch.float16, torch.bfloat16)
#: the library algorithm's workspace in the kernel cases: small enough that most cases run in several
#: position chunks (and a last, shorter one), as large layers do under the default budget.
LIBRARY_TEST_WORKSPACE = 16 << 10


def _forcing(request, algorithm):
    """Forces `algorithm` on every lc2d pass of the CUDA kernels, in the execution layer and on a GPU, for the
    test, with a LIBRARY_TEST_WORKSPACE workspace; restores the previous state afterwards."""
    from bioplaus_kernels.backends import Lc2dBackend

    dtype = request.node.callspec.params.get("dtype")
    if algorithm == "fused_tc" and dtype not in TENSOR_CORE_DTYPES + (torch.float32,):
        pytest.skip(f"fused_tc (tensor cores) takes float16, bfloat16 and float32 as TF32, not {dtype}")
    # fused_tc takes float32 only while TF32 matmuls are allowed
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = algorithm == "fused_tc"
    namespaces = [emulated_cuda.load()] + ([torch.ops.bioplaus] if HAS_CUDA else [])
    saved = [(ns.lc2d_selection_forced(), ns.lc2d_selection_workspace_limit()) for ns in namespaces]
    for ns in namespaces:
        backend = Lc2dBackend(ns)
        backend.set_forced(algorithm)
        backend.workspace_limit = LIBRARY_TEST_WORKSPACE
    try:
        yield algorithm
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        for ns, (forced, limit) in zip(namespaces, saved):
            ns.lc2d_selection_set_forced(*forced)
            ns.lc2d_selection_set_workspace_limit(limit)


@pytest.fixture(params=CUDA_ALGORITHMS)
def cuda_algorithm(request):
    """Every CUDA algorithm of lc2d, forced in turn on every pass; yields its name."""
    yield from _forcing(request, request.param)


@contextlib.contextmanager
def multiprocessors(device, count):
    """The emulated device has `count` SMs inside the block (grid sizing, split-K); a no-op on a real GPU, whose
    SM count the case then reads from torch to know which path it reaches."""
    if device != "emu":
        yield torch.cuda.get_device_properties(0).multi_processor_count
        return
    ops = emulated_cuda.load()
    previous = ops.emulated_device(count)
    try:
        yield count
    finally:
        ops.emulated_device(previous)


def _uses_emulation(item):
    return "emulation" in item.keywords or not {"emu", "cuda_algorithm"}.isdisjoint(item.fixturenames)


def pytest_collection_modifyitems(config, items):
    # The cases that use the CPU execution layer run last, and its library (a minute of compiling on two cores
    # from a fresh checkout) builds meanwhile in a background process at a lower priority, on the cores the
    # other cases leave idle, instead of stopping the suite at the first such case.
    emulated = [item for item in items if _uses_emulation(item)]
    if emulated and len(emulated) < len(items):
        items[:] = [item for item in items if not _uses_emulation(item)] + emulated
        config._bioplaus_prebuild = emulated_cuda.build_in_background()
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason=CUDA_SKIP_REASON)
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def pytest_unconfigure(config):
    prebuild = getattr(config, "_bioplaus_prebuild", None)
    if prebuild is not None:
        emulated_cuda.stop_background_build(prebuild)


_emulated = {"passed": 0, "failed": 0, "skipped": 0}


def pytest_runtest_logreport(report):
    if "emulation" in report.keywords and (report.when == "call" or report.outcome != "passed"):
        _emulated[report.outcome] += 1


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(
        f"CUDA kernels in the CPU execution layer: {_emulated['passed']} cases passed, {_emulated['failed']} failed, "
        f"{_emulated['skipped']} skipped")


def tf32_allowance(algorithm, dtype, magnitude):
    """The element-wise allowance for fused_tc's float32 path: both operands of every product rounded to TF32
    (10 fraction bits, relative error at most 2^-11 each), so up to 2^-10 of each term's magnitude."""
    return magnitude * 2.0 ** -10 if algorithm == "fused_tc" and dtype == torch.float32 else None
