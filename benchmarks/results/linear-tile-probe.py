"""linear_backward_input per mode against grad_y @ W at batch 64-256, median ms over 15 calls (session 6 probe; run
from the repository root: PYTHONPATH=. python3 benchmarks/results/linear-tile-probe.py THREADS)."""
import torch, time, statistics, sys
import bioplaus_kernels
torch.set_num_threads(int(sys.argv[1]))
ops = torch.ops.bioplaus
def t(f, n=15):
    s=[]
    for _ in range(n):
        a=time.perf_counter(); f(); s.append(time.perf_counter()-a)
    return statistics.median(s)*1e3
for (M,out,inn) in [(128,1024,3136),(128,1024,1024),(256,1000,512),(128,4096,4096),(64,1024,3136)]:
    W = torch.randn(out,inn); gy = torch.randn(M,out)
    r = {"mm": t(lambda: gy@W)}
    for mode in ["weight","random","sign","random_sign"]:
        r[mode] = t(lambda: ops.linear_backward_input(gy, W, mode, 1, 0, 0, "uniform", 0.1))
    print((M,out,inn), {k: round(v,2) for k,v in r.items()}, flush=True)
