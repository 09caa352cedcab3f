"""Uniform generation speed on the CPU: ops.feedback_source in "random" and "random_sign" mode on a 128 x 1024
float32 weight (512 KB: stays in L2, so the time is the generator's), one thread, median ns per element over
400 calls (session 6 probe; run from the repository root: PYTHONPATH=. python3 benchmarks/results/generator-probe.py)."""
import statistics
import time

import torch

from bioplaus_kernels import ops

torch.set_num_threads(1)
W = torch.randn(128, 1024)


def t(f, n=400):
    s = []
    for _ in range(n):
        a = time.perf_counter()
        f()
        s.append(time.perf_counter() - a)
    return statistics.median(s)


for rep in range(3):
    tu = t(lambda: ops.feedback_source(W, feedback="random", seed=1))
    ts = t(lambda: ops.feedback_source(W, feedback="random_sign", seed=1))
    print(f"random {tu / W.numel() * 1e9:.3f} ns/elem  random_sign {ts / W.numel() * 1e9:.3f} ns/elem")
