"""The CPU execution layer of the CUDA kernels (docs/emulation.md), built on first use.

`load()` compiles csrc/cuda/*.cu as host C++ (through tests/emulation/<op>_kernel.cpp) together with the op
files csrc/<op>.cpp that define the schemas and input checks, into a test-only library whose operators are
`torch.ops.bioplaus_emu.<op>`: the same schemas as `torch.ops.bioplaus.<op>`, taking CPU tensors, running
the CUDA launchers and kernel bodies on host threads. Nothing of it ships in the wheel.

BIOPLAUS_EMU_SANITIZE=1 builds it with AddressSanitizer and UndefinedBehaviorSanitizer into its own folder;
such a library loads only into a process started with the sanitizer runtimes preloaded
(.ci/sanitize.sh does that).
"""
import functools
import os
import signal
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPS = ["lc2d", "linear", "philox", "feedback_source", "difference_target", "inverse_loss"]
SANITIZE = os.environ.get("BIOPLAUS_EMU_SANITIZE") == "1"
SANITIZER_FLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"]


def sources():
    emu = os.path.join(ROOT, "tests", "emulation")
    return ([os.path.join(emu, "emulation.cpp")]
            + [os.path.join(emu, f"{op}_kernel.cpp") for op in OPS]
            + [os.path.join(ROOT, "csrc", f"{op}.cpp") for op in OPS]
            + [os.path.join(ROOT, "csrc", "lc2d_selection.cpp")])


@functools.cache
def load():
    """Builds the library (incrementally, in build/bioplaus_emu[_sanitize]/) and loads it; returns
    torch.ops.bioplaus_emu."""
    from torch.utils.cpp_extension import load as load_extension

    name = "bioplaus_emu_sanitize" if SANITIZE else "bioplaus_emu"
    build_dir = os.path.join(ROOT, "build", name)
    os.makedirs(build_dir, exist_ok=True)
    flags = ["-O2", "-fopenmp", "-DBIOPLAUS_CUDA_EMULATION", "-Dbioplaus=bioplaus_emu"]
    ldflags = ["-fopenmp"]
    if SANITIZE:
        flags += SANITIZER_FLAGS
        ldflags += SANITIZER_FLAGS
    # The compiler runs without the sanitizer runtimes that .ci/sanitize.sh preloads into this process.
    preload = os.environ.pop("LD_PRELOAD", None)
    try:
        load_extension(name=name, sources=sources(), extra_cflags=flags, extra_ldflags=ldflags,
                       extra_include_paths=[os.path.join(ROOT, "csrc"), os.path.join(ROOT, "tests", "emulation")],
                       build_directory=build_dir, is_python_module=False, verbose=False)
    finally:
        if preload is not None:
            os.environ["LD_PRELOAD"] = preload
    return torch.ops.bioplaus_emu


def build_in_background():
    """Starts a process at a lower CPU priority that builds the library (load() in that process, which holds
    torch's build lock while it compiles: a load() here waits for it, then finds the build done); returns the
    process."""
    here = os.path.dirname(os.path.abspath(__file__))
    process = subprocess.Popen([sys.executable, "-c", "import emulated_cuda; emulated_cuda.load()"], cwd=here,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:  # the compilers it starts, seconds later (after importing torch), inherit the priority
        os.setpriority(os.PRIO_PROCESS, process.pid, 10)
    except OSError:  # it has already exited, or the platform refuses: a normal priority only costs overlap
        pass
    return process


def stop_background_build(process):
    """Stops a build_in_background() process still running (an interrupted session): SIGINT first, so that
    torch releases its build lock as the exception unwinds, then SIGKILL."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
