"""linear_backward_input per mode against grad_y @ W at batch 64-256, median ms over 15 interleaved calls (session 6
probe; run from the repository root: PYTHONPATH=. python3 benchmarks/results/linear-tile-probe.py THREADS)."""
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import common  # noqa: E402
from bioplaus_kernels import ops  # noqa: E402

torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
MODES = ("weight", "random", "sign", "random_sign")
for M, out, inp in [(128, 1024, 3136), (128, 1024, 1024), (256, 1000, 512), (128, 4096, 4096), (64, 1024, 3136)]:
    W, gy = torch.randn(out, inp), torch.randn(M, out)
    fns = [lambda: gy @ W] + [lambda m=m: ops.linear_backward_input(gy, W, feedback=m, seed=1, scale=0.1) for m in MODES]
    samples = common.time_interleaved(fns, "cpu", 15, 2)
    print((M, out, inp), {k: round(statistics.median(s), 2) for k, s in zip(("mm",) + MODES, samples)}, flush=True)
