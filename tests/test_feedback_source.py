"""feedback_source (B materialised in one pass): equal to reference.feedback_source for every mode and
dtype, independent of the thread count, opcheck, fake kernel, bad inputs; CUDA equal to the CPU."""
import pytest
import torch
from torch.library import opcheck

from bioplaus_kernels import ops, reference

from conftest import DEVICES, KERNEL_DEVICES, KERNEL_DTYPES, kernel_ops, multiprocessors
from feedback_cases import FEEDBACK_SPECS, assert_rejected, assert_same_feedback, spec_id

SPEC = dict(seed=5, stream=2, step=3, scale=0.6)


def weights(shape, dtype, device="cpu"):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    special = torch.tensor([0.0, -0.0, float("nan"), 1e-300, -1e-300, 2.0, -3.0], dtype=torch.float64)
    n = min(w.numel(), len(special))
    w.view(-1)[:n] = special[:n]
    return w.to(dtype=dtype, device=device)


@pytest.mark.parametrize("spec", FEEDBACK_SPECS[1:], ids=spec_id)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(3,), (7, 45), (3, 4, 5, 6), (129, 300)], ids=str)
def test_matches_reference(shape, dtype, spec):
    w = weights(shape, dtype)
    s = {**SPEC, **spec}
    got = torch.ops.bioplaus.feedback_source(w, s["feedback"], s["seed"], s["stream"], s["step"],
                                             s["distribution"] if "distribution" in s else "uniform", s["scale"])
    assert got.shape == w.shape and got.dtype == dtype and got.is_contiguous()
    assert_same_feedback(got, reference.feedback_source(w, **s), spec)


def test_thread_count_does_not_change_the_result():
    w = weights((300, 701), torch.float32)
    s = {**SPEC, "feedback": "random_sign"}
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.feedback_source(w, **s)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, ops.feedback_source(w, **s))


def test_random_mode_never_reads_weight():
    like = torch.zeros(1, 1).expand(40, 50)  # zero-stride
    assert torch.equal(ops.feedback_source(like, "random", seed=3), ops.philox((40, 50), 3))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("spec", FEEDBACK_SPECS[1:], ids=spec_id)
def test_opcheck(spec, device):
    s = {**SPEC, **spec}
    args = (weights((9, 13), torch.float32, device), s["feedback"], s["seed"], s["stream"], s["step"],
            s.get("distribution", "uniform"), s["scale"])
    opcheck(torch.ops.bioplaus.feedback_source, args)


def test_bad_inputs():
    op = torch.ops.bioplaus.feedback_source
    assert_rejected(op, (torch.zeros(2, 3, dtype=torch.int32), "sign"),
                    r"feedback_source: weight must be float32, float64, float16 or bfloat16, got Int")
    assert_rejected(op, (torch.zeros(2), "sgn"), r"feedback_source: feedback must be .* got 'sgn'")
    assert_rejected(op, (torch.zeros(2), "random", -1), r"feedback_source: seed must be >= 0, got -1")


@pytest.mark.cuda
@pytest.mark.parametrize("spec", FEEDBACK_SPECS[1:], ids=spec_id)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_cuda_matches_cpu(spec, dtype):
    w = weights((129, 301), dtype)
    s = {**SPEC, **spec}
    assert_same_feedback(ops.feedback_source(w.cuda(), **s).cpu(), ops.feedback_source(w, **s), spec)


# ------------------------------------------------------------------------------------------------------------
# The CUDA kernel, in the CPU execution layer ("emu", every run) and on a GPU ("cuda"): one thread per element
# in a grid-stride loop; on 1 emulated SM 2048 threads are resident, so the 45 x 50 weight loops.
KERNEL_SHAPES = [((3,), 132), ((7, 45), 132), ((45, 50), 1), ((0, 4), 132)]


@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("spec", FEEDBACK_SPECS, ids=spec_id)
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
@pytest.mark.parametrize("shape", KERNEL_SHAPES, ids=str)
def test_kernel_feedback_source(shape, dtype, spec, device):
    size, sms = shape
    ops_, on = kernel_ops(device)
    w = weights(size, dtype)
    s = {**SPEC, **spec}
    with multiprocessors(device, sms):
        got = ops_.feedback_source(w.to(on), **s).cpu()
    assert got.shape == w.shape and got.dtype == dtype
    assert_same_feedback(got, reference.feedback_source(w, **s), s)
