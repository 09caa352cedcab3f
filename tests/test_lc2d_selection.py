"""lc2d's algorithm selection (csrc/lc2d_selection.h, bioplaus_kernels.backends): the force switch, the autotuner
with an injected timer and its cache, deterministic mode, the default table, the workspace limit, and every
algorithm of every pass against the float64 reference across chunkings of the library algorithm."""
import os
import subprocess
import sys

import pytest
import torch

import bioplaus_kernels
from bioplaus_kernels.backends import ALGORITHMS, PASSES, Lc2dBackend
from bioplaus_kernels.reference import lc2d as ref

import emulated_cuda
from conftest import HAS_CUDA, tf32_allowance
from tolerance import assert_elementwise_close, stable_seed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One geometry with overlapping windows, padding on every side and a non-square output (P = 5 x 4 = 20).
CASE = dict(N=6, C_in=3, C_out=5, hw=(9, 7), k=(3, 2), stride=(2, 2), padding=[1, 1, 1, 0], dilation=(1, 2))


def tensors(dtype, device="cpu", case=CASE):
    c = case
    gen = torch.Generator().manual_seed(stable_seed("lc2d_selection", str(dtype)))
    H_out = (c["hw"][0] + c["padding"][0] + c["padding"][1] - c["dilation"][0] * (c["k"][0] - 1) - 1) // c["stride"][0] + 1
    W_out = (c["hw"][1] + c["padding"][2] + c["padding"][3] - c["dilation"][1] * (c["k"][1] - 1) - 1) // c["stride"][1] + 1
    x = torch.randn(c["N"], c["C_in"], *c["hw"], generator=gen, dtype=torch.float64)
    w = torch.randn(H_out, W_out, c["C_out"], c["C_in"], *c["k"], generator=gen, dtype=torch.float64)
    b = torch.randn(c["C_out"], H_out, W_out, generator=gen, dtype=torch.float64)
    gy = torch.randn(c["N"], c["C_out"], H_out, W_out, generator=gen, dtype=torch.float64)
    return [t.to(dtype=dtype, device=device) for t in (x, w, b, gy)]


def geometry(case=CASE):
    return [list(case["stride"]), list(case["padding"]), list(case["dilation"])]


def run_passes(ns, x, w, b, gy, case=CASE, feedback="weight"):
    y = ns.lc2d_forward(x, w, b, *geometry(case))
    gx = ns.lc2d_backward_input(gy, w, list(case["hw"]), *geometry(case), feedback, 7, 3, 2, "uniform", 0.5)
    gw, gb = ns.lc2d_backward_weight(gy, x, list(case["k"]), *geometry(case))
    return y, gx, gw, gb


def restored(ns):
    """Yields ns (an operator namespace) and afterwards restores its selection state and clears its cache."""
    saved = (ns.lc2d_selection_forced(), ns.lc2d_selection_autotune(), ns.lc2d_selection_workspace_limit())
    ns.lc2d_selection_clear_cache()
    try:
        yield ns
    finally:
        ns.lc2d_selection_set_forced(*saved[0])
        ns.lc2d_selection_set_autotune(saved[1])
        ns.lc2d_selection_set_workspace_limit(saved[2])
        ns.lc2d_selection_set_test_timer([], [])
        ns.lc2d_selection_clear_cache()


@pytest.fixture
def emu():
    """The execution layer's operators, selection state restored after the test."""
    yield from restored(emulated_cuda.load())


@pytest.fixture
def cpu():
    """The extension's operators (CPU tensors), selection state restored after the test."""
    yield from restored(torch.ops.bioplaus)


# ---------------------------------------------------------------------------------------------- every algorithm

def reference_passes(x, w, b, gy, B, case=CASE):
    x, w, b = (t.detach().double().requires_grad_() for t in (x, w, b))
    y = ref.lc2d(x, w, b, case["stride"], case["padding"], case["dilation"])
    _, gw, gb = torch.autograd.grad(y, (x, w, b), gy.double())
    xb = x.detach().clone().requires_grad_()
    yb = ref.lc2d(xb, B.double(), None, case["stride"], case["padding"], case["dilation"])
    (gx,) = torch.autograd.grad(yb, (xb,), gy.double())
    return y.detach(), gx, gw, gb


@pytest.mark.emulation
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("algorithm", ALGORITHMS["cuda"])
@pytest.mark.parametrize("feedback", ["weight", "random_sign"])
# workspace limits that give chunks of 1 position, of a few with a shorter last one, and one chunk of all 20
@pytest.mark.parametrize("limit", [1, 3 * 6 * (6 + 5 + 5 * 6) * 8, 1 << 26])
def test_cuda_algorithms_match_reference(emu, dtype, algorithm, feedback, limit):
    if algorithm == "fused_tc" and dtype == torch.float64:
        pytest.skip("fused_tc (tensor cores) takes float16, bfloat16 and float32 as TF32, not float64")
    forced = dict.fromkeys(PASSES, algorithm)
    Lc2dBackend(emu).set_forced(**forced)
    emu.lc2d_selection_set_workspace_limit(limit)
    x, w, b, gy = tensors(dtype)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = algorithm == "fused_tc"  # fused_tc takes float32 as TF32 only
    try:
        got = run_passes(emu, x, w, b, gy, feedback=feedback)
        again = run_passes(emu, x, w, b, gy, feedback=feedback)
        materialised = emu.feedback_source(w, feedback, 7, 3, 2, "uniform", 0.5)
        stored = emu.lc2d_backward_input(gy, materialised, list(CASE["hw"]), *geometry())
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    assert Lc2dBackend(emu).last() == forced
    B = bioplaus_kernels.reference.feedback_source(w, feedback, 7, 3, 2, "uniform", 0.5)
    want = reference_passes(x, w, b, gy, B)
    mags = reference_passes(x.abs(), w.abs(), b.abs(), gy.abs(), B.abs())
    K = CASE["C_in"] * CASE["k"][0] * CASE["k"][1]
    terms = (K + 1, CASE["C_out"] * CASE["k"][0] * CASE["k"][1], CASE["N"], CASE["N"])
    for name, g, wnt, mag, t in zip(("y", "grad_x", "grad_weight", "grad_bias"), got, want, mags, terms):
        extra = mag * torch.finfo(dtype).eps if (name == "grad_x" and algorithm == "library"
                                                 and dtype == torch.bfloat16) else None
        if name != "grad_bias":  # the bias gradient sums grad_y alone, with no product to round to TF32
            extra = tf32_allowance(algorithm, dtype, mag) if extra is None else extra
        assert_elementwise_close(g, wnt, dtype, magnitude=mag, terms=t, extra=extra, what=f"{algorithm} {name}")
    # bit-identical run to run, whatever the chunking
    assert all(torch.equal(a, c) for a, c in zip(got, again))
    # a generated B gives the bits of "weight" mode on the materialised B: the library algorithm builds B for
    # each chunk of positions, and the fused ones build all of it here (5 channels: one chunk at every limit)
    assert torch.equal(got[1], stored)


@pytest.mark.parametrize("algorithm", ALGORITHMS["cpu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_cpu_algorithms_match_reference(cpu, dtype, algorithm):
    cpu.lc2d_selection_set_forced(algorithm, algorithm, algorithm)
    x, w, b, gy = tensors(dtype)
    got = run_passes(cpu, x, w, b, gy, feedback="random_sign")
    assert Lc2dBackend(cpu).last() == dict.fromkeys(PASSES, algorithm)
    B = bioplaus_kernels.reference.feedback_source(w, "random_sign", 7, 3, 2, "uniform", 0.5)
    want = reference_passes(x, w, b, gy, B)
    mags = reference_passes(x.abs(), w.abs(), b.abs(), gy.abs(), B.abs())
    for name, g, wnt, mag in zip(("y", "grad_x", "grad_weight", "grad_bias"), got, want, mags):
        assert_elementwise_close(g, wnt, dtype, magnitude=mag, terms=64, what=f"{algorithm} {name}")
    again = run_passes(cpu, x, w, b, gy, feedback="random_sign")
    assert all(torch.equal(a, c) for a, c in zip(got, again))


# ---------------------------------------------------------------------------------------------- force switch

def test_force_is_per_pass_and_restored(emu):
    backend = Lc2dBackend(emu)
    x, w, b, gy = tensors(torch.float32)
    with backend.force(backward_input="library"):
        assert backend.forced() == dict(forward=None, backward_input="library", backward_weight=None)
        with backend.force("fused"):
            run_passes(emu, x, w, b, gy)
            assert backend.last() == dict.fromkeys(PASSES, "fused")
        run_passes(emu, x, w, b, gy)
        assert backend.last()["backward_input"] == "library"
    assert backend.forced() == dict.fromkeys(PASSES)


def test_forcing_an_algorithm_the_device_lacks_names_its_algorithms(cpu):
    x, w, b, gy = tensors(torch.float32)
    with Lc2dBackend(cpu).force(forward="fused"):
        with pytest.raises(RuntimeError, match=r"lc2d: the forced forward algorithm is 'fused', but the algorithms "
                                               r"of that pass on cpu are: " + ", ".join(ALGORITHMS["cpu"])):
            cpu.lc2d_forward(x, w, b, *geometry())


@pytest.mark.emulation
@pytest.mark.parametrize("tf32", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_python_candidates_match_the_kernels(emu, dtype, tf32):
    # backends.candidates mirrors the CUDA launchers' lists: forcing a candidate runs it, forcing any other
    # CUDA algorithm is refused with exactly the candidates named
    from bioplaus_kernels.backends import candidates
    x, w, b, gy = tensors(dtype)
    calls = dict(zip(PASSES, (lambda: emu.lc2d_forward(x, w, b, *geometry()),
                              lambda: emu.lc2d_backward_input(gy, w, list(CASE["hw"]), *geometry(), "weight", 0, 0, 0,
                                                              "uniform", 1.0),
                              lambda: emu.lc2d_backward_weight(gy, x, list(CASE["k"]), *geometry()))))
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        for pass_, call in calls.items():
            names = candidates("cuda", dtype, pass_)
            for algorithm in ALGORITHMS["cuda"]:
                with Lc2dBackend(emu).force(**{pass_: algorithm}):
                    if algorithm in names:
                        call()
                        assert Lc2dBackend(emu).last()[pass_] == algorithm
                    else:
                        with pytest.raises(RuntimeError, match=f"the forced {pass_} algorithm is '{algorithm}', but "
                                                               f"the algorithms of that pass on cpu are: "
                                                               f"{', '.join(names)}$"):
                            call()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def test_unknown_algorithm_is_rejected_in_python():
    with pytest.raises(ValueError, match=r"backends.lc2d: algorithm must be one of \[.*'library'.*\], got 'cudnn'"):
        bioplaus_kernels.backends.lc2d.set_forced(backward_weight="cudnn")


# ---------------------------------------------------------------------------------------------- autotuner

def test_autotune_times_each_candidate_once_per_key_and_caches_the_winner(emu):
    backend = Lc2dBackend(emu)
    emu.lc2d_selection_set_test_timer(["fused", "library"], [2.0, 1.0])
    backend.autotune = True
    x, w, b, gy = tensors(torch.float32)
    first = run_passes(emu, x, w, b, gy)
    assert backend.last() == dict.fromkeys(PASSES, "library")
    assert emu.lc2d_selection_test_timer_calls() == 2 * len(PASSES)  # two candidates per pass
    assert len(backend.cache()) == len(PASSES)
    assert all(line.endswith(" -> library") for line in backend.cache())
    # cached: no more timing for the same keys, and the winner's result
    emu.lc2d_selection_set_test_timer(["fused", "library"], [1.0, 2.0])
    second = run_passes(emu, x, w, b, gy)
    assert emu.lc2d_selection_test_timer_calls() == 0
    assert backend.last() == dict.fromkeys(PASSES, "library")
    assert all(torch.equal(a, c) for a, c in zip(first, second))
    # another dtype is another key, timed afresh with the new times
    run_passes(emu, *tensors(torch.float64))
    assert emu.lc2d_selection_test_timer_calls() == 2 * len(PASSES)
    assert backend.last() == dict.fromkeys(PASSES, "fused")
    backend.clear_cache()
    assert backend.cache() == []


def test_autotune_keys_the_input_gradient_by_generated_feedback(emu):
    # a regenerated B changes the algorithms' relative cost: its calls are timed under a key of their own
    emu.lc2d_selection_set_test_timer(["fused", "library"], [2.0, 1.0])
    emu.lc2d_selection_set_autotune(True)
    x, w, b, gy = tensors(torch.float32)
    run_passes(emu, x, w, b, gy, feedback="weight")
    run_passes(emu, x, w, b, gy, feedback="random_sign")
    keys = [line for line in Lc2dBackend(emu).cache() if line.startswith("backward_input")]
    assert len(keys) == 2 and sum(" generated feedback -> " in k for k in keys) == 1


def test_autotune_ties_go_to_the_first_candidate(emu):
    emu.lc2d_selection_set_test_timer(["fused", "library"], [1.0, 1.0])
    emu.lc2d_selection_set_autotune(True)
    x, w, b, _ = tensors(torch.float32)
    emu.lc2d_forward(x, w, b, *geometry())
    assert Lc2dBackend(emu).last()["forward"] == "fused"


def test_force_overrides_autotune(emu):
    emu.lc2d_selection_set_test_timer(["fused", "library"], [2.0, 1.0])
    emu.lc2d_selection_set_autotune(True)
    emu.lc2d_selection_set_forced("fused", "fused", "fused")
    run_passes(emu, *tensors(torch.float32))
    assert emu.lc2d_selection_test_timer_calls() == 0
    assert Lc2dBackend(emu).last() == dict.fromkeys(PASSES, "fused")


def test_deterministic_mode_never_times(emu):
    emu.lc2d_selection_set_test_timer(["fused", "library"], [2.0, 1.0])
    emu.lc2d_selection_set_autotune(True)
    x, w, b, gy = tensors(torch.float32)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        run_passes(emu, x, w, b, gy)
    finally:
        torch.use_deterministic_algorithms(previous)
    assert emu.lc2d_selection_test_timer_calls() == 0
    assert Lc2dBackend(emu).cache() == []


def test_autotune_with_the_real_timer_picks_a_candidate(cpu):
    backend = Lc2dBackend(cpu)
    backend.autotune = True
    x, w, b, gy = tensors(torch.float32)
    got = run_passes(cpu, x, w, b, gy)
    assert set(backend.last().values()) <= set(ALGORITHMS["cpu"])
    assert len(backend.cache()) == len(PASSES)
    # the timed runs left no trace in the results (the input gradient kernels accumulate)
    backend.autotune = False
    with backend.force(**backend.last()):
        want = run_passes(cpu, x, w, b, gy)
    assert all(torch.equal(a, c) for a, c in zip(got, want))


def test_environment_variables_set_the_initial_state():
    code = ("import bioplaus_kernels as bk; b = bk.backends.lc2d; "
            "print(b.autotune, b.forced()['forward'], b.forced()['backward_input'], b.workspace_limit)")
    env = dict(os.environ, BIOPLAUS_LC2D_AUTOTUNE="1", BIOPLAUS_LC2D_WORKSPACE_MB="3",
               BIOPLAUS_LC2D_ALGORITHM="direct,backward_input=library")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "direct", "library", str(3 << 20)]


def test_bad_environment_variable_is_rejected():
    env = dict(os.environ, BIOPLAUS_LC2D_ALGORITHM="sideways=library")
    r = subprocess.run([sys.executable, "-c", "import bioplaus_kernels as bk; bk.backends.lc2d.forced()"],
                       env=env, capture_output=True, text=True)
    assert r.returncode != 0
    assert "pass must be one of forward, backward_input, backward_weight, got 'sideways'" in r.stderr


# ---------------------------------------------------------------------------------------------- default table

@pytest.mark.parametrize("shape, cls", [
    (((128, 1, 28, 28), 32, 3, 2), "small-low"),     # MNIST-L1, K = 9
    (((128, 3, 224, 224), 48, 9, 4), "mid-high"),    # ImageNet-L1, K = 243, overlap 81 / 16
    (((128, 192, 7, 7), 384, 3, 1), "large-high"),   # ImageNet-L7, K = 1728
    (((128, 96, 28, 28), 96, 3, 2), "large-low"),    # ImageNet-L4, K = 864, overlap 9 / 4
])
def test_shape_class(shape, cls):
    assert bioplaus_kernels.backends.lc2d.shape_class(*shape) == cls


def test_default_table_is_generated_from_its_sources():
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "lc2d_selection_table.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def table_rows():
    """(device, pass, class, dtype, algorithm) of the C++ default table."""
    import re
    with open(os.path.join(ROOT, "csrc", "lc2d_selection.cpp")) as f:
        text = f.read()
    block = text[text.index("// BEGIN default table"):text.index("// END default table")]
    return re.findall(r'\{"(\w+)", "(\w+)", "([\w-]+)", "(\w+)", "(\w+)"\}', block)


# A small geometry of each class (C_in, kernel, stride), for calls that read the table.
CLASS_GEOMETRY = {"small-low": (1, 3, 2), "small-high": (1, 3, 1), "mid-low": (8, 3, 2), "mid-high": (3, 5, 2),
                  "large-low": (64, 3, 2), "large-high": (64, 3, 1)}


def test_default_selection_follows_the_table(cpu):
    rows = [r for r in table_rows() if r[0] == "cpu"]
    for _, pass_, cls, dtype, algorithm in rows:
        c_in, k, s = CLASS_GEOMETRY[cls]
        case = dict(N=2, C_in=c_in, C_out=3, hw=(7, 7), k=(k, k), stride=(s, s), padding=[0, 0, 0, 0],
                    dilation=(1, 1))
        x, w, b, gy = tensors(getattr(torch, dtype), "cpu", case)
        assert bioplaus_kernels.backends.lc2d.shape_class(x.shape, 3, k, s) == cls
        run_passes(cpu, x, w, b, gy, case)
        assert Lc2dBackend(cpu).last()[pass_] == algorithm, (pass_, cls, dtype)


@pytest.mark.cuda
def test_cuda_default_selection_reads_the_cuda_rows():
    x, w, b, gy = tensors(torch.bfloat16, "cuda",
                          dict(CASE, C_in=3, k=(9, 9), stride=(4, 4), hw=(33, 33), padding=[0, 0, 0, 0],
                               dilation=(1, 1)))
    torch.ops.bioplaus.lc2d_backward_weight(gy, x, [9, 9], [4, 4], [0, 0, 0, 0], [1, 1])
    assert bioplaus_kernels.backends.lc2d.last()["backward_weight"] == "library"  # mid-high bfloat16 row
