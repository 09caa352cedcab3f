"""Shared helpers of the benchmarks: machine/version/git records, the timer, machine ceilings and roofline
floors, peak memory, JSON results and the command-line plumbing every ``bioplaus bench`` op uses.

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

import argparse
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

from ..train.errors import UsageError

# The source checkout this package sits in (an editable install), or site-packages (an installed copy): only
# the scripts of benchmarks/ write into its benchmarks/results by default, and git_info asks git about it.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS_DIR = os.path.join(REPO_ROOT, "benchmarks", "results")
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


def machine_label(machine: Dict) -> str:
    """Where a result was measured, for a table's title: the GPU's name, or the CPU and its thread count."""
    if machine.get("gpu"):
        return machine["gpu"]["name"]
    return f"{machine.get('cpu_model', 'CPU')}, {machine['torch_threads']} threads"


def machine_slug(machine: Dict) -> str:
    """The GPU's name or the host name, for a file name."""
    return slug(machine["gpu"]["name"] if machine.get("gpu") else machine["hostname"])


def load_result(path: str) -> Dict:
    """``--table-from``: a saved JSON result."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise UsageError(f"--table-from: cannot read {path} ({e})") from None


def result_path(args, name: str) -> Optional[str]:
    """Where a run's JSON goes: --json; else, for the scripts of benchmarks/ (``save_default``),
    benchmarks/results/<name>-<date>.json (a new file each run); else None (not saved)."""
    if args.json:
        return args.json
    if getattr(args, "save_default", False):
        return os.path.join(RESULTS_DIR, f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    return None


def write_json(result: Dict, path: Optional[str]) -> str:
    """Writes the result atomically (a temporary file, then a rename); returns the line that says so."""
    if path is None:
        return "result not saved (--json PATH saves it)"
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    existed = os.path.exists(path)
    with open(path + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(path + ".tmp", path)
    return f"wrote {path}" + (" (replaced the file that was there)" if existed else "")


def command_line() -> str:
    return " ".join([os.path.basename(sys.executable)] + sys.argv)


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

    CPU: 2048^3 matmul (float32 or float64), 256 MB copy. CUDA: 8192^3 matmul (TF32 as configured: reported,
    off by default in torch), 1 GiB copy, CUDA events, median of the repeats."""
    if device == "cuda":
        n, copy_bytes, reps, warm = (4096 if quick else 8192), (256 if quick else 1024) * 1024 * 1024, 10, 3
    else:
        n, copy_bytes, reps, warm = (1024 if quick else 2048), 256 * 1024 * 1024, 5, 1
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    (t_mm,) = time_interleaved([lambda: torch.mm(a, b)], device, reps, warm)
    del a, b
    elem = torch.empty((), dtype=torch.float32).element_size()
    src = torch.randn(copy_bytes // elem, device=device, generator=g)
    dst = torch.empty_like(src)
    (t_cp,) = time_interleaved([lambda: dst.copy_(src)], device, reps, warm)
    del src, dst
    mm_ms, cp_ms = statistics.median(t_mm), statistics.median(t_cp)
    res = {
        "matmul": {"n": n, "dtype": str(dtype).replace("torch.", ""), "median_ms": mm_ms,
                   "gflops": 2 * n ** 3 / (mm_ms * 1e-3) / 1e9},
        "copy": {"bytes_read_plus_written": 2 * copy_bytes, "median_ms": cp_ms,
                 "gbs": 2 * copy_bytes / (cp_ms * 1e-3) / 1e9},
    }
    if device == "cuda":
        res["matmul"]["tf32"] = tf32_setting()
    if device == "cuda":
        torch.cuda.empty_cache()
    return res


def floor(flops: float, nbytes: float, ceilings: Dict) -> Dict:
    """The roofline floor of a pass: max(FLOPs / peak FLOP/s, bytes / peak bandwidth), with the ceilings of
    :func:`measure_ceilings`, and which of the two bounds it."""
    t_flops = flops / (ceilings["matmul"]["gflops"] * 1e9)
    t_bytes = nbytes / (ceilings["copy"]["gbs"] * 1e9)
    return {"floor_ms": max(t_flops, t_bytes) * 1e3, "floor_bound": "compute" if t_flops >= t_bytes else "memory"}


def describe_ceilings(ceilings: Dict) -> str:
    m, c = ceilings["matmul"], ceilings["copy"]
    return (f"ceilings: matmul {m['n']}^3 {m['dtype']} {m['gflops']:.1f} GFLOP/s; copy {c['gbs']:.1f} GB/s "
            "(read + write)")


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


def cpu_peak_rss_probe(module: str, spec: Dict, timeout: float = 600) -> Dict:
    """Run ``python -m module --mem-probe JSON`` in a fresh process and return its JSON answer (the last line
    of its stdout). A module, not a script path: the probe runs the same from an installed copy."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(spec.get("threads", torch.get_num_threads()))
    proc = subprocess.run([sys.executable, "-m", module, "--mem-probe", json.dumps(spec)], capture_output=True,
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


# ---------------------------------------------------------------------------------------------------
# Command line: the options every op shares, and its errors (one line, exit status 2)
# ---------------------------------------------------------------------------------------------------
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


class Parser(argparse.ArgumentParser):
    """argparse whose errors are raised as UsageError, which :func:`main` prints as one line."""

    def error(self, message: str):
        raise UsageError(message)


def shape_type(forms: Sequence[str]):
    """An argparse type for --shape: "paper", or comma-separated positive integers in one of ``forms`` (each
    a field list such as "H,W,Cin,Cout,k,s"; the number of fields tells them apart). Returns "paper" or
    the tuple of integers."""
    counts = {f.count(",") + 1 for f in forms}

    def parse(text: str):
        if text.strip() == "paper":
            return "paper"
        try:
            fields = tuple(int(v) for v in text.split(","))
        except ValueError:
            fields = ()
        if len(fields) not in counts or min(fields) < 1:
            raise argparse.ArgumentTypeError(f"must be 'paper' or {' or '.join(forms)} (positive integers), "
                                             f"got {text!r}")
        return fields
    parse.__name__ = "shape"
    return parse


def add_run_arguments(ap: argparse.ArgumentParser, dtypes: Sequence[str], save_default: bool,
                      result_name: str) -> None:
    """--device, --dtype, --json and --table-from (the others differ per op). ``save_default``: without --json
    the result goes to benchmarks/results (the scripts of benchmarks/); otherwise (``bioplaus bench``) it is not
    saved."""
    ap.add_argument("--device", choices=("cpu", "cuda"), default=None,
                    help="default: cuda when a GPU is visible and the kernels were built with CUDA, else cpu")
    ap.add_argument("--dtype", choices=tuple(dtypes), default="float32",
                    help=f"element type: {', '.join(dtypes)} (default float32; on the CPU float32 and float64 only)")
    ap.add_argument("--json", default=None, metavar="PATH", help="write the result (machine, versions, git "
                    "revision, settings, every sample) to PATH; " + (
                        f"default: benchmarks/results/{result_name}-<date>.json, a new file each run" if save_default
                        else "default: not saved"))
    ap.add_argument("--table-from", default=None, metavar="JSON", help="print the table of a saved result and exit")
    ap.set_defaults(save_default=save_default)


def add_shape_argument(ap: argparse.ArgumentParser, forms: Sequence[str], help: str):
    """--shape paper|FORM..., in a mutually exclusive group that the op's older shape option joins (returned)."""
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--shape", type=shape_type(forms), default=None, metavar="paper|" + "|".join(forms), help=help)
    return which


def resolve_device(args) -> None:
    """--device (default: cuda where the package's CUDA kernels can run) and --dtype against it."""
    import bioplaus_kernels
    has_cuda = torch.cuda.is_available() and bool(bioplaus_kernels.with_cuda)
    if args.device is None:
        args.device = "cuda" if has_cuda else "cpu"
    if args.device == "cuda" and not has_cuda:
        raise UsageError("--device cuda: " + ("no CUDA device is visible" if not torch.cuda.is_available()
                                              else "bioplaus_kernels was built without its CUDA kernels"))
    if args.device == "cpu" and args.dtype not in ("float32", "float64"):
        raise UsageError(f"--dtype {args.dtype} is CUDA-only (the CPU kernels take float32 and float64)")


def positive(args, *names: str) -> None:
    for n in names:
        v = getattr(args, n)
        if v is not None and v < 1:
            raise UsageError(f"--{n.replace('_', '-')} must be >= 1, got {v}")


def main(module, argv=None, save_default: bool = False) -> int:
    """A benchmark module's command line (``python -m bioplaus_kernels.bench.OP``, benchmarks/bench_OP.py): its
    parser (``module.add_arguments``), then ``module.run``; a UsageError prints one line and gives exit
    status 2."""
    doc = module.__doc__
    ap = Parser(description=doc.split("\n\n")[0], epilog=doc.split("\n\n", 1)[1],
                formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(ap, save_default)
    try:
        return module.run(ap.parse_args(argv))
    except UsageError as e:
        print(f"{ap.prog}: error: {e}", file=sys.stderr)
        return 2
