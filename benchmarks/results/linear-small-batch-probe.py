"""linear_backward_input per mode against grad_y @ W, one thread, median us over 300 calls (session 5 probe;
run from the repository root: PYTHONPATH=. python3 benchmarks/results/linear-small-batch-probe.py)."""
import sys
import torch, time, statistics, bioplaus_kernels as bk
torch.set_num_threads(int(sys.argv[1]) if len(sys.argv)>1 else 1)
ops = torch.ops.bioplaus
def t(f, n=300):
    s=[]
    for _ in range(n):
        a=time.perf_counter(); f(); s.append(time.perf_counter()-a)
    return statistics.median(s)*1e6
for (M,out,inn) in [(1,1000,512),(4,1000,512),(8,1000,512),(16,1000,512),(32,1000,512),(8,256,784),(16,1024,3136),(8, 10, 256), (8,4096,4096)]:
    W = torch.randn(out,inn); gy = torch.randn(M,out)
    r = {"mm": t(lambda: gy@W)}
    for mode in ["weight","random","sign","random_sign"]:
        r[mode] = t(lambda: ops.linear_backward_input(gy, W, mode, 1, 0, 0, "uniform", 0.1))
    print((M,out,inn), {k: round(v) for k,v in r.items()})
