"""Shared helpers of the benchmarks: machine/version/git records, timers, machine ceilings and peak memory.

Nothing here is specific to one operator. Units: times in milliseconds, sizes in decimal megabytes
(1 MB = 1e6 bytes), rates in GB/s (1e9 bytes/s) and GFLOP/s (1e9 FLOP/s).

Timing
    CPU: ``time.perf_counter`` around each call (the CPU kernels are synchronous).
    CUDA: CUDA events recorded around each call on the current stream, read after one synchronise at the
    end; before every timed call (outside the timed region) a 256 MB buffer is written, which evicts the
    L2 (50 MB on an H100, 60 MB on an H200), so small working sets are timed from HBM, not from L2.
    Callables that are compared are interleaved (a, b, a, b, ...) so that drift on a busy machine hits
    both alike. The statistic is the median.

Peak memory
    CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus
    ``memory_allocated()`` before the call: the extra memory the call needs beyond what is already held
    (inputs, weights). The caching allocator's cached-but-free blocks are not counted.
    CPU: there is no allocator statistic, so :func:`cpu_peak_rss_probe` runs the call once in a fresh
    Python process and reads the growth of the resident set's high-water mark (see its docstring).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import resource
import socket
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MB = 1e6
CUDA_FLUSH_BYTES = 256 * 1024 * 1024
CPU_FLUSH_BYTES = 64 * 1024 * 1024


# ---------------------------------------------------------------------------------------------------
# Records: machine, versions, git revision
# ---------------------------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _nvidia_smi(query: str) -> Optional[str]:
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def machine_info(device: str) -> Dict:
    info = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "gpu": None,
    }
    if device == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        info["gpu"] = {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "sm_count": props.multi_processor_count,
            "memory_gb": round(props.total_memory / 1e9, 2),
            "l2_cache_mb": round(getattr(props, "L2_cache_size", 0) / MB, 1) or None,
            "driver": _nvidia_smi("driver_version"),
            "nvidia_smi": _nvidia_smi("name,memory.total,clocks.max.sm,clocks.max.mem,power.limit"),
        }
    return info


def versions() -> Dict:
    v = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
         "cudnn": None, "bioplaus_kernels": None, "bioplaus_with_cuda": None, "numpy": None}
    try:
        v["cudnn"] = torch.backends.cudnn.version()
    except Exception:  # noqa: BLE001 (no cuDNN in a CPU build)
        pass
    try:
        import bioplaus_kernels
        v["bioplaus_kernels"] = bioplaus_kernels.__version__
        v["bioplaus_with_cuda"] = bool(bioplaus_kernels.with_cuda)
    except Exception as e:  # noqa: BLE001
        v["bioplaus_kernels"] = f"import failed: {e}"
    try:
        import numpy
        v["numpy"] = numpy.__version__
    except ImportError:
        pass
    return v


def git_info() -> Dict:
    """HEAD and whether tracked files differ from it. BIOPLAUS_GIT_REV / BIOPLAUS_GIT_DIRTY override (for a copy
    of the tree without .git, e.g. on a lent GPU machine)."""
    rev, dirty = os.environ.get("BIOPLAUS_GIT_REV"), os.environ.get("BIOPLAUS_GIT_DIRTY")
    if rev:
        return {"revision": rev, "dirty": None if dirty is None else dirty not in ("0", "false", ""),
                "source": "environment"}
    try:
        head = subprocess.run(["git", "-C", REPO_ROOT, "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=20)
        if head.returncode != 0:
            return {"revision": None, "dirty": None, "source": "git failed: " + head.stderr.strip()[:200]}
        st = subprocess.run(["git", "-C", REPO_ROOT, "status", "--porcelain", "--untracked-files=no"],
                            capture_output=True, text=True, timeout=20)
        return {"revision": head.stdout.strip(), "dirty": bool(st.stdout.strip()) if st.returncode == 0 else None,
                "source": "git"}
    except (OSError, subprocess.SubprocessError) as e:
        return {"revision": None, "dirty": None, "source": f"git unavailable: {e}"}


def tf32_setting() -> Dict:
    """TF32 state of cuBLAS fp32 matmuls (reported, never changed): the baseline's bmm follows it."""
    out = {}
    try:
        out["matmul_fp32_precision"] = torch.backends.cuda.matmul.fp32_precision  # torch >= 2.9
    except Exception:  # noqa: BLE001
        pass
    try:
        out["matmul_allow_tf32"] = bool(torch.backends.cuda.matmul.allow_tf32)
    except Exception:  # noqa: BLE001 (the new API can refuse to read the old flag when they were mixed)
        pass
    out["float32_matmul_precision"] = torch.get_float32_matmul_precision()
    out["tf32_on"] = bool(out.get("matmul_allow_tf32", False)) or out.get("matmul_fp32_precision") == "tf32" \
        or out["float32_matmul_precision"] != "highest"
    return out


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")


def slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", s).strip("-") or "unknown"


def print_saved_table(path: str, format_table: Callable[[Dict], str]) -> int:
    """``--table-from``: print the table of a saved JSON result; the exit status."""
    with open(path) as f:
        print(format_table(json.load(f)))
    return 0


# ---------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------
class Flusher:
    """Writes a large buffer to evict caches between timed calls (outside the timed region)."""

    def __init__(self, device: str, enabled: bool = True):
        self.device = device
        nbytes = CUDA_FLUSH_BYTES if device == "cuda" else CPU_FLUSH_BYTES
        self.buf = torch.empty(nbytes // 4, dtype=torch.float32, device=device) if enabled else None
        self.n = 0

    def __call__(self) -> None:
        if self.buf is not None:
            self.n += 1
            self.buf.fill_(float(self.n & 0xFF))


def time_interleaved(fns: Sequence[Callable[[], object]], device: str, repeats: int, warmup: int,
                     flush: Optional[Flusher] = None) -> List[List[float]]:
    """Milliseconds per call of each function, ``repeats`` samples each, interleaved, after ``warmup`` calls."""
    for _ in range(warmup):
        for f in fns:
            f()
    if device == "cuda":
        torch.cuda.synchronize()
        ev = [[(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
              for _ in fns]
        for r in range(repeats):
            for i, f in enumerate(fns):
                if flush is not None:
                    flush()
                ev[i][r][0].record()
                f()
                ev[i][r][1].record()
        torch.cuda.synchronize()
        return [[s.elapsed_time(e) for s, e in row] for row in ev]
    out: List[List[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, f in enumerate(fns):
            if flush is not None:
                flush()
            t0 = time.perf_counter()
            f()
            out[i].append((time.perf_counter() - t0) * 1e3)
    return out


def summarize(samples: Sequence[float]) -> Dict:
    s = sorted(samples)
    q = statistics.quantiles(s, n=4) if len(s) >= 2 else [s[0]] * 3
    return {"median_ms": statistics.median(s), "min_ms": s[0], "q1_ms": q[0], "q3_ms": q[2],
            "samples_ms": [round(v, 5) for v in samples]}


# ---------------------------------------------------------------------------------------------------
# Machine ceilings, measured in the same run
# ---------------------------------------------------------------------------------------------------
def measure_ceilings(device: str, dtype: torch.dtype, quick: bool = False) -> Dict:
    """Peak FLOP/s from a large square matmul in ``dtype`` and bandwidth from a large copy (read + write).

    CPU: 2048^3 float32 matmul, 256 MB copy. CUDA: 8192^3 matmul (TF32 as configured: reported, off by
    default in torch), 1 GiB copy, CUDA events, median of the repeats."""
    if device == "cuda":
        n, copy_bytes, reps, warm = (4096 if quick else 8192), (256 if quick else 1024) * 1024 * 1024, 10, 3
    else:
        n, copy_bytes, reps, warm = (1024 if quick else 2048), 256 * 1024 * 1024, 5, 1
    mm_dtype = dtype if device == "cuda" else torch.float32
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=mm_dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=mm_dtype, generator=g)
    (t_mm,) = time_interleaved([lambda: torch.mm(a, b)], device, reps, warm)
    del a, b
    elem = torch.empty((), dtype=torch.float32).element_size()
    src = torch.randn(copy_bytes // elem, device=device, generator=g)
    dst = torch.empty_like(src)
    (t_cp,) = time_interleaved([lambda: dst.copy_(src)], device, reps, warm)
    del src, dst
    mm_ms, cp_ms = statistics.median(t_mm), statistics.median(t_cp)
    res = {
        "matmul": {"n": n, "dtype": str(mm_dtype).replace("torch.", ""), "median_ms": mm_ms,
                   "gflops": 2 * n ** 3 / (mm_ms * 1e-3) / 1e9},
        "copy": {"bytes_read_plus_written": 2 * copy_bytes, "median_ms": cp_ms,
                 "gbs": 2 * copy_bytes / (cp_ms * 1e-3) / 1e9},
    }
    if device == "cuda":
        res["matmul"]["tf32"] = tf32_setting()
    if device == "cuda":
        torch.cuda.empty_cache()
    return res


def run_pytest_benchmark(benchmark, fn: Callable[[], object], device: str, rounds: int = 20):
    """Times ``fn`` with pytest-benchmark and returns its last result: on CUDA each call is synchronised inside
    the timed function (benchmark.pedantic, 3 warm-up rounds), on the CPU pytest-benchmark's own calibration."""
    if device != "cuda":
        return benchmark(fn)

    def target():
        out = fn()
        torch.cuda.synchronize()
        return out

    return benchmark.pedantic(target, rounds=rounds, warmup_rounds=3, iterations=1)


# ---------------------------------------------------------------------------------------------------
# Peak memory
# ---------------------------------------------------------------------------------------------------
def cuda_peak_extra_bytes(fn: Callable[[], object]) -> int:
    """Bytes allocated at the peak of one call of ``fn`` beyond what was allocated before it (its result
    included, since it is still alive at the peak)."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    del out
    return peak - before


def _status_kib(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_hwm() -> bool:
    """Linux >= 4.0: writing 5 to /proc/self/clear_refs resets the peak RSS to the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _malloc_trim() -> None:
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _hwm_kib() -> Tuple[int, str]:
    """The resident set's high-water mark: VmHWM of /proc/self/status (this address space only), else
    getrusage's ru_maxrss. ru_maxrss is not used first: after fork + exec it starts from the PARENT's peak
    (Linux keeps the larger of the old and new address spaces' marks), which hides the child's own peak."""
    v = _status_kib("VmHWM")
    if v is not None:
        return v, "VmHWM"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss"  # KiB on Linux


def rss_peak_growth(setup: Callable[[], object], step: Callable[[object], object], warm_steps: int = 0) -> Dict:
    """In THIS process (meant to be a fresh one): ``state = setup()`` and ``warm_steps`` untimed steps (their
    outputs dropped), then the growth of the resident set's high-water mark across exactly one more
    ``step(state)``, relative to the resident set just before it. With warm_steps=1 this is the steady state
    of a training loop: one-time buffers of the libraries for this shape (BLAS packing buffers, per-thread
    malloc arenas) exist already, as they do from the second step of a run on.

    Freed heap memory is returned to the system first (malloc_trim), so that the step cannot reuse pages
    that are resident but free without raising the mark, and the mark is reset to the current resident set
    (/proc/self/clear_refs), so that peaks of the setup do not count. Without the reset the answer is only
    an upper bound when the mark was already above the resident set (flagged)."""
    import gc
    state = setup()
    for _ in range(warm_steps):
        step(state)
    gc.collect()
    _malloc_trim()
    reset = _reset_hwm()
    rss_before = _status_kib("VmRSS")
    hwm_before, source = _hwm_kib()
    if rss_before is None:  # no /proc: the best available stand-in
        rss_before = hwm_before
    out = step(state)
    hwm_after, _ = _hwm_kib()
    del out
    return {
        "extra_bytes": max(0, hwm_after - rss_before) * 1024,
        "rss_before_kib": rss_before, "hwm_before_kib": hwm_before, "hwm_after_kib": hwm_after,
        "hwm_source": source, "hwm_reset": reset, "warm_steps": warm_steps,
        "upper_bound_only": (not reset) and hwm_before > rss_before,
    }


def cpu_peak_rss_probe(script: str, spec: Dict, timeout: float = 600) -> Dict:
    """Run ``python script --mem-probe JSON`` in a fresh process and return its JSON answer (the last line
    of its stdout)."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(spec.get("threads", torch.get_num_threads()))
    proc = subprocess.run([sys.executable, script, "--mem-probe", json.dumps(spec)], capture_output=True,
                          text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe {spec} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def validation_step(kind: str):
    """Known allocations for validating the RSS method: 'alloc200' fills 200 MB, 'none' allocates nothing."""
    if kind == "alloc200":
        def step(_state):
            t = torch.empty(int(200 * MB) // 4, dtype=torch.float32)
            t.fill_(1.0)
            return t
        return step, 200 * MB
    if kind == "none":
        return (lambda _state: None), 0.0
    raise ValueError(kind)
