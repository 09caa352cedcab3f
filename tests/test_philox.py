"""philox: Random123 known answers, kernels == PyTorch reference bit for bit, determinism, statistics, checks,
and CUDA == CPU (bit for bit for uniform and bits, to a few ulp for normal)."""
import math

import pytest
import torch
from torch.library import opcheck

from bioplaus_kernels import ops, reference
from bioplaus_kernels.reference import philox as ref

from conftest import DEVICES, KERNEL_DEVICES, KERNEL_DTYPES, kernel_ops, multiprocessors
from tolerance import assert_elementwise_close, ulp

# Random123 kat_vectors, philox4x32_10: (counter, key) -> output.
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]

# (shape, seed, stream, step): odd sizes (partial last block), large seeds and steps (hi32 words in use).
CASES = [
    ((7,), 0, 0, 0),
    ((3, 5), 1, 0, 0),
    ((4, 1, 9), 12345, 3, 0),
    ((33, 17), 0x299F31D0A4093822, 7, 0x0370734413198A2E),
    ((2, 3, 4, 5), 2**63 - 1, 2**63 - 1, 2**63 - 1),
    ((1000,), 42, 1, 5),
]


def case_id(c):
    return f"{'x'.join(map(str, c[0]))}_seed{c[1]}_stream{c[2]}_step{c[3]}"


@pytest.mark.parametrize("ctr,key,want", KAT)
def test_known_answers_reference(ctr, key, want):
    assert ref.philox4x32_10(ctr, key) == want


def test_known_answers_kernel():
    ctr = torch.tensor([k[0] for k in KAT], dtype=torch.int64)
    key = torch.tensor([k[1] for k in KAT], dtype=torch.int64)
    got = torch.ops.bioplaus.philox4x32_10(ctr, key)
    assert got.tolist() == [list(k[2]) for k in KAT]


def test_known_answer_through_the_element_mapping():
    # seed 0, stream 0 -> key (0, 0); step 0 -> counter (0, 0, 0, 0) for elements 0..3.
    assert ops.philox((4,), 0, distribution="bits").tolist() == list(KAT[0][2])
    # seed = key64, step = (c3 << 32 | c2): the third vector with counter words (c0, c1) = block 0.
    (c0, c1, c2, c3), (k0, k1), _ = KAT[2]
    seed, step = (k1 << 32) | k0, (c3 << 32) | c2
    want = ref.philox4x32_10((0, 0, c2, c3), (k0, k1))
    assert ops.philox((4,), seed, step=step, distribution="bits").tolist() == list(want)


def test_vectorised_reference_matches_scalar_reference():
    seed, stream, step = 0x123456789ABCDEF, 9, 2**40 + 3
    x = ref.words(4 * 6, seed, stream, step).view(-1, 4).tolist()
    key = ref.make_key(seed, stream)
    for b, row in enumerate(x):
        assert tuple(row) == ref.philox4x32_10((b, 0, step & ref.MASK32, step >> 32), key)


def test_key_derivation():
    assert ref.mix64(0) == 0
    assert ref.make_key(0xAABBCCDD11223344, 0) == (0x11223344, 0xAABBCCDD)
    assert ref.make_key(5, 1) != ref.make_key(5, 2)


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("dist", ["bits", "uniform"])
def test_cpu_matches_reference_bit_for_bit(case, dist):
    shape, seed, stream, step = case
    got = ops.philox(shape, seed, stream, step, distribution=dist)
    want = ref.philox(shape, seed, stream, step, distribution=dist)
    assert got.shape == torch.Size(shape) and got.is_contiguous()
    assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_scale_and_dtype(dtype):
    shape, seed = (5, 7), 77
    got = ops.philox(shape, seed, scale=0.3, dtype=dtype)
    want = ref.philox(shape, seed, scale=0.3, dtype=dtype)
    assert got.dtype == dtype and torch.equal(got, want)
    # float64 holds the float32 value exactly: same numbers as the float32 output.
    assert torch.equal(got.float(), ops.philox(shape, seed, scale=0.3))


@pytest.mark.parametrize("scale", [0.37, 1.0, 2.0 ** -111, 1e-38, 0.0, -0.0, -0.5, 3e38, math.inf, math.nan], ids=str)
def test_uniform_scale_edge_values_bit_for_bit(scale):
    # The AVX-512 generator folds a positive scale whose scale * 2^-15 is a normal float into one FMA; other
    # scales (zero, negative, a subnormal scale * 2^-15, inf, NaN) take the two-step conversion. Either way the
    # bits are the reference's, signed zeros included (|-0| is +0 in "random_sign" mode, as torch's abs gives it).
    def assert_same_bits(got, want):  # NaN's sign bit carries nothing: NaN where the reference has NaN
        nan = want.isnan()
        assert torch.equal(got.isnan(), nan)
        assert torch.equal(got[~nan].view(torch.int32), want[~nan].view(torch.int32))

    assert_same_bits(ops.philox((3, 1000), 5, 2, 1, scale=scale), ref.philox((3, 1000), 5, 2, 1, scale=scale))
    w = torch.randn(3, 1000, generator=torch.Generator().manual_seed(0))
    spec = dict(seed=5, stream=2, step=1, scale=scale)
    # 3000 elements: whole groups, with w's signs applied in registers, then a partial group's tail.
    assert_same_bits(ops.feedback_source(w, feedback="random_sign", **spec),
                     reference.feedback_source(w, feedback="random_sign", **spec))


def test_uniform_range_and_grid():
    u = ops.philox((100_000,), 3)
    assert u.min() >= -1 and u.max() < 1
    assert torch.equal(u * 2**15, (u * 2**15).round())  # 16-bit samples
    assert u.unique().numel() > 50_000  # all 16 bits in use: 65536 levels


def test_uniform_element_mapping():
    # e = 128 g + 16 s + l reads half s % 2 of word s // 2 of block 16 g + l, from the scalar generator.
    seed, stream, step = 0x0123456789ABCDEF, 5, 2**33 + 7
    u = ops.philox((3 * 128 + 45,), seed, stream, step)
    key = ref.make_key(seed, stream)
    for e in [0, 1, 15, 16, 17, 31, 32, 100, 127, 128, 129, 200, 255, 256, 300, 383, 384, 428]:
        g, s, l = e // 128, (e // 16) % 8, e % 16
        x = ref.philox4x32_10((16 * g + l, 0, step & ref.MASK32, step >> 32), key)[s // 2]
        h = (x >> (16 * (s % 2))) & 0xFFFF
        assert u[e].item() == (h - 2**15) * 2.0**-15, e


@pytest.mark.parametrize("numel", [1, 127, 128, 129, 256 + 5, 4 * 128, 7 * 128 + 64, 11 * 128, 40_001])
def test_uniform_any_length_matches_reference(numel):
    # Whole groups in batches of 4, 2 and 1 and a partial group at the end.
    got = ops.philox((numel,), 99, 1, 3, scale=0.5)
    assert torch.equal(got, ref.philox((numel,), 99, 1, 3, scale=0.5))


def test_normal_matches_reference():
    shape, seed, stream, step = (101, 3), 11, 2, 4
    got = ops.philox(shape, seed, stream, step, distribution="normal")
    want = ref.philox(shape, seed, stream, step, distribution="normal")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dist", ["uniform", "normal", "bits"])
def test_deterministic_and_distinct(device, dist):
    a = ops.philox((64, 33), 5, 1, 2, distribution=dist, device=device)
    assert torch.equal(a, ops.philox((64, 33), 5, 1, 2, distribution=dist, device=device))
    for other in [dict(seed=6, stream=1, step=2), dict(seed=5, stream=2, step=2), dict(seed=5, stream=1, step=3)]:
        b = ops.philox((64, 33), distribution=dist, device=device, **other)
        assert (a != b).float().mean() > 0.99


def test_prefix_property():
    # Element e depends only on e, not on the shape: a flat prefix of a larger draw equals a smaller draw.
    big = ops.philox((10, 10), 9, 4, 1, distribution="normal").flatten()
    small = ops.philox((37,), 9, 4, 1, distribution="normal")
    assert torch.equal(big[:37], small)


@pytest.mark.parametrize("device", DEVICES)
def test_uniform_statistics(device):
    n = 1_000_000
    u = ops.philox((n,), 2024, device=device).double()
    # Uniform on [-1, 1): mean 0, variance 1/3; 6-sigma bounds of the sample mean and variance.
    assert abs(u.mean().item()) < 6 * math.sqrt(1 / 3 / n)
    var_sd = math.sqrt((1 / 5 - 1 / 9) / n)  # sd of the mean of u^2 (E[u^4] = 1/5)
    assert abs(u.pow(2).mean().item() - 1 / 3) < 6 * var_sd


@pytest.mark.parametrize("device", DEVICES)
def test_normal_statistics(device):
    n = 1_000_000
    z = ops.philox((n,), 2025, 3, distribution="normal", device=device).double()
    assert abs(z.mean().item()) < 6 / math.sqrt(n)
    assert abs(z.pow(2).mean().item() - 1) < 6 * math.sqrt(2 / n)
    assert abs((z.abs() < 1).double().mean().item() - 0.682689) < 6 * math.sqrt(0.25 / n)


def test_empty_and_int_shape():
    assert ops.philox((0, 3), 1).shape == (0, 3)
    assert torch.equal(ops.philox(5, 1), ops.philox((5,), 1))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dist", ["uniform", "normal"])
def test_opcheck(device, dist):
    like = torch.empty(5, 6, device=device)
    opcheck(torch.ops.bioplaus.philox_fill, (like, 3, 1, 2, dist, 0.5))


def test_opcheck_raw():
    ctr = torch.tensor([k[0] for k in KAT], dtype=torch.int64)
    key = torch.tensor([k[1] for k in KAT], dtype=torch.int64)
    opcheck(torch.ops.bioplaus.philox4x32_10, (ctr, key))


BAD = [
    (dict(distribution="gauss"), r"philox_fill: distribution must be 'uniform' or 'normal'.*got 'gauss'"),
    (dict(seed=-1), r"philox_fill: seed must be >= 0, got -1"),
    (dict(stream=-2), r"philox_fill: stream must be >= 0, got -2"),
    (dict(step=-3), r"philox_fill: step must be >= 0, got -3"),
    (dict(dtype=torch.float16), r"philox_fill: like must be float32 or float64 on the CPU, got Half"),
    (dict(dtype=torch.int32), r"philox_fill: like must be float32 or float64 on the CPU, got Int"),
    (dict(distribution="bits", dtype=torch.float32), r"philox_fill: distribution 'bits' needs an int64 tensor, got Float"),
]


@pytest.mark.parametrize("fake", [False, True], ids=["real", "fake"])
@pytest.mark.parametrize("bad,msg", BAD, ids=[m.split(": ")[1][:30] for _, m in BAD])
def test_bad_inputs(bad, msg, fake):
    args = dict(seed=1, stream=0, step=0, distribution="uniform", dtype=torch.float32)
    args.update(bad)
    like = torch.empty(3, 4, dtype=args.pop("dtype"))
    if fake:
        from torch._subclasses.fake_tensor import FakeTensorMode
        with FakeTensorMode() as mode:
            like = mode.from_tensor(like)
            with pytest.raises(RuntimeError, match=msg):
                torch.ops.bioplaus.philox_fill(like, args["seed"], args["stream"], args["step"], args["distribution"], 1.0)
    else:
        with pytest.raises(RuntimeError, match=msg):
            torch.ops.bioplaus.philox_fill(like, args["seed"], args["stream"], args["step"], args["distribution"], 1.0)


def test_raw_bad_inputs():
    with pytest.raises(RuntimeError, match=r"philox4x32_10: counter values must be in \[0, 2\^32\), got -1"):
        torch.ops.bioplaus.philox4x32_10(torch.full((1, 4), -1), torch.zeros(1, 2, dtype=torch.int64))
    with pytest.raises(RuntimeError, match=r"philox4x32_10: key must be an int64 tensor of shape \[N, 2\]"):
        torch.ops.bioplaus.philox4x32_10(torch.zeros(1, 4, dtype=torch.int64), torch.zeros(1, 3, dtype=torch.int64))


@pytest.mark.cuda
@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("dist", ["bits", "uniform"])
def test_cuda_matches_cpu_bit_for_bit(case, dist):
    shape, seed, stream, step = case
    got = ops.philox(shape, seed, stream, step, distribution=dist, scale=1.0 if dist == "bits" else 0.7, device="cuda")
    assert torch.equal(got.cpu(), ops.philox(shape, seed, stream, step, distribution=dist,
                                             scale=1.0 if dist == "bits" else 0.7))


@pytest.mark.cuda
def test_cuda_large_uniform_bit_for_bit():
    shape = (1 << 20) + 3,
    assert torch.equal(ops.philox(shape, 8, 2, 1, device="cuda").cpu(), ops.philox(shape, 8, 2, 1))


@pytest.mark.cuda
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_cuda_normal_close_to_cpu(case):
    shape, seed, stream, step = case
    got = ops.philox(shape, seed, stream, step, distribution="normal", device="cuda").cpu()
    torch.testing.assert_close(got, ops.philox(shape, seed, stream, step, distribution="normal"),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_cuda_dtypes_round_the_float_value(dtype):
    got = ops.philox((9, 11), 4, 1, distribution="uniform", scale=0.25, dtype=dtype, device="cuda").cpu()
    assert torch.equal(got, ops.philox((9, 11), 4, 1, scale=0.25).to(dtype))


# The CPU generator has AVX-512, AVX2 and scalar paths, picked at load time; ATEN_CPU_CAPABILITY caps them as it
# caps ATen's kernels. Each capped path, in a fresh process, must give the reference's uniform samples bit for bit
# and normal samples to the last ulp (libm and Sleef may differ there), through every CPU user of the generator.
_PATHS_SCRIPT = r"""
import sys, torch
from bioplaus_kernels import ops
from bioplaus_kernels.reference import philox as ref
out = {}
for n in (1, 127, 129, 1000, 40_001):
    out[f"u{n}"] = ops.philox((n,), 7, 3, 11, scale=0.5)
    out[f"n{n}"] = ops.philox((n,), 7, 3, 11, distribution="normal")
    out[f"b{n}"] = ops.philox((n,), 7, 3, 11, distribution="bits")
w = torch.randn(37, 301, generator=torch.Generator().manual_seed(0))
w.view(-1)[:4] = torch.tensor([0.0, -0.0, float("nan"), 1e-40])
out["rs"] = ops.feedback_source(w, "random_sign", seed=5, stream=1, step=2)
for scale in SCALES:  # folded into one FMA or not
    out[f"rs{scale}"] = ops.feedback_source(w, "random_sign", seed=5, stream=1, step=2, scale=scale)
out["gx"] = ops.linear_backward_input(torch.randn(4, 37, generator=torch.Generator().manual_seed(1)), w,
                                      feedback="random", seed=5)
out["noise"] = torch.ops.bioplaus.inverse_loss_noisy_input(torch.zeros(3, 333), 0.1, 9, 2, 4)
torch.save(out, sys.argv[1])
"""


_PATH_SCALES = (0.37, 0.0, -0.5, 1e-38)


@pytest.mark.parametrize("capability", ["avx2", "default"])
def test_every_cpu_path_gives_the_same_samples(capability, tmp_path):
    import os
    import subprocess
    import sys

    got_file = tmp_path / "got.pt"
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability}
    script = _PATHS_SCRIPT.replace("SCALES", repr(_PATH_SCALES))
    subprocess.run([sys.executable, "-c", script, str(got_file)], check=True, env=env,
                   cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    got = torch.load(got_file)
    for n in (1, 127, 129, 1000, 40_001):
        assert torch.equal(got[f"u{n}"], ref.philox((n,), 7, 3, 11, scale=0.5))
        assert torch.equal(got[f"b{n}"], ref.philox((n,), 7, 3, 11, distribution="bits"))
        torch.testing.assert_close(got[f"n{n}"], ref.philox((n,), 7, 3, 11, distribution="normal"), rtol=4e-7,
                                   atol=1e-6)
        # the default (this process's) path to the last ulp as well
        torch.testing.assert_close(got[f"n{n}"], ops.philox((n,), 7, 3, 11, distribution="normal"), rtol=4e-7,
                                   atol=1e-6)
    w = torch.randn(37, 301, generator=torch.Generator().manual_seed(0))
    w.view(-1)[:4] = torch.tensor([0.0, -0.0, float("nan"), 1e-40])
    want = ops.feedback_source(w, "random_sign", seed=5, stream=1, step=2)
    assert torch.equal(got["rs"].view(torch.int32), want.view(torch.int32))
    for scale in _PATH_SCALES:
        want = reference.feedback_source(w, "random_sign", seed=5, stream=1, step=2, scale=scale)
        assert torch.equal(got[f"rs{scale}"].view(torch.int32), want.view(torch.int32)), scale
    gy = torch.randn(4, 37, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(got["gx"], ops.linear_backward_input(gy, w, feedback="random", seed=5))
    torch.testing.assert_close(got["noise"], torch.ops.bioplaus.inverse_loss_noisy_input(torch.zeros(3, 333), 0.1, 9,
                                                                                             2, 4), rtol=4e-7, atol=1e-7)


# ------------------------------------------------------------------------------------------------------------
# The CUDA kernel of philox_fill, in the CPU execution layer ("emu", every run) and on a GPU ("cuda"): one thread
# per counter block in a grid-stride loop. (shape, SMs): a partial last uniform group (128 elements) and a
# partial last block; on 1 emulated SM 2048 threads are resident, so 20000 elements (2512 uniform blocks,
# 5000 normal/bits blocks) loop; an empty tensor.
KERNEL_SHAPES = [((7,), 132), ((33, 17), 132), ((20000,), 1), ((0, 3), 132)]
KERNEL_FILLS = [(d, t) for d in ("uniform", "normal") for t in KERNEL_DTYPES] + [("bits", torch.int64)]


@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("distribution,dtype", KERNEL_FILLS, ids=str)
@pytest.mark.parametrize("shape", KERNEL_SHAPES, ids=str)
def test_kernel_philox_fill(shape, distribution, dtype, device):
    size, sms = shape
    ops_, on = kernel_ops(device)
    seed, stream, step, scale = 0x299F31D0A4093822, 7, 2**40 + 3, 0.75
    like = torch.empty(size, dtype=dtype, device=on)
    with multiprocessors(device, sms):
        got = ops_.philox_fill(like, seed, stream, step, distribution, scale).cpu()
    want = ref.philox(size, seed, stream, step, distribution, scale if distribution != "bits" else 1.0,
                      dtype=dtype if distribution != "bits" else torch.int64)
    assert got.shape == tuple(size) and got.dtype == dtype
    if distribution == "normal":
        # host libm (or CUDA's) log/cos/sin against the reference's: a few float32 ulp, then the rounding to dtype
        assert_elementwise_close(got, want.double(), dtype, extra=4 * ulp(want.double(), torch.float32))
    else:
        assert torch.equal(got, want)  # bit for bit
