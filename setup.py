"""Build bioplaus_kernels._C: one extension with the C++ CPU kernels and, where asked, the CUDA kernels.

torchvision's convention: the CUDA kernels are compiled when torch is a CUDA build, nvcc is found, and either
torch sees a GPU or FORCE_CUDA=1 is set (CI sets it, so every run compiles them without a GPU;
TORCH_CUDA_ARCH_LIST then defaults to build_flags.json's cuda_archs, an explicit value is honoured).
Otherwise the build is CPU-only and says why. Compiler flags come from build_flags.json too, which
CMakeLists.txt reads as well.

Object files live in build/temp-<python>-<torch>-<cpu|cuda> under the source tree, also for pip's editable
installs (which otherwise build in a fresh temporary folder): a second install of unchanged sources
recompiles nothing (ninja compares each object with its sources, headers and command line). Otherwise the build is
CPU-only and says so. MAX_JOBS is honoured by torch's ninja builder. BIOPLAUS_FORCE_CPU=1 skips CUDA;
BIOPLAUS_DEBUG=1 compiles the C++ sources with debug information.
"""
import glob
import json
import os
import re
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(ROOT, "build_flags.json")) as f:
    FLAGS = json.load(f)


def _is_toolkit(root):
    return bool(root) and os.path.isfile(os.path.join(root, "bin", "nvcc")) and os.path.isfile(
        os.path.join(root, "include", "cuda_runtime.h"))


def find_cuda_home():
    """The CUDA toolkit root. nvcc is often reached through a link or a wrapper script, so torch's own
    guess (two levels above the nvcc on PATH) can name a folder without the toolkit; check each guess."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
        try:  # nvcc's dry run names its own root: "#$ TOP=/usr/local/cuda-13.0/bin/.."
            out = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull], capture_output=True,
                                 text=True, timeout=60)
            m = re.search(r"TOP=(\S+)", out.stdout + out.stderr)
            if m:
                candidates.append(os.path.normpath(m.group(1)))
        except (OSError, subprocess.SubprocessError):
            pass
    candidates.append("/usr/local/cuda")
    for c in candidates:
        if _is_toolkit(c):
            return os.path.realpath(c)
    return None


import torch  # noqa: E402  (torch.utils.cpp_extension, which reads CUDA_HOME, comes below)

force_cpu = os.environ.get("BIOPLAUS_FORCE_CPU") == "1"
force_cuda = os.environ.get("FORCE_CUDA") == "1"
gpu_visible = torch.version.cuda is not None and torch.cuda.is_available()
cuda_home = find_cuda_home() if not force_cpu and torch.version.cuda is not None and (gpu_visible or force_cuda) \
    else None
if cuda_home:
    os.environ["CUDA_HOME"] = cuda_home  # before torch.utils.cpp_extension reads it

from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

with_cuda = cuda_home is not None
if with_cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST") and not gpu_visible:
    os.environ["TORCH_CUDA_ARCH_LIST"] = ";".join(FLAGS["cuda_archs"])


def rel(paths):
    return sorted(os.path.relpath(p, ROOT) for p in paths)


# The same globs as CMakeLists.txt (no second file list); csrc/common/ holds headers only.
# csrc/python/ holds the Python module entry point, which the libtorch (CMake) build leaves out.
sources = rel(glob.glob(os.path.join(ROOT, "csrc", "*.cpp")) + glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp"))
              + glob.glob(os.path.join(ROOT, "csrc", "python", "*.cpp")))
cuda_sources = rel(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))

# The C++ standard is left to torch (C++20 from torch 2.13 on, C++17 before).
include_dirs = [os.path.join(ROOT, "csrc")]
# BIOPLAUS_DEBUG=1 keeps the debug information that build_flags.json's -g0 turns off (at three times the time).
cxx_flags = [f for f in FLAGS["cxx"] if not (f == "-g0" and os.environ.get("BIOPLAUS_DEBUG") == "1")]
extra = dict(extra_compile_args={"cxx": cxx_flags}, extra_link_args=FLAGS["link"], include_dirs=include_dirs)
if with_cuda:
    extra["extra_compile_args"]["nvcc"] = FLAGS["nvcc"]
    ext = CUDAExtension("bioplaus_kernels._C", sources + cuda_sources, define_macros=[("BIOPLAUS_WITH_CUDA", "1")],
                        **extra)
else:
    ext = CppExtension("bioplaus_kernels._C", sources, **extra)

why_cpu = ("BIOPLAUS_FORCE_CPU=1" if force_cpu
           else "torch is a CPU build" if torch.version.cuda is None
           else "no GPU visible and FORCE_CUDA is not 1; set FORCE_CUDA=1 to compile them anyway"
           if not (gpu_visible or force_cuda) else "nvcc / CUDA toolkit not found")
print("bioplaus_kernels build configuration:", file=sys.stderr)
print(f"  torch {torch.__version__} (CUDA {torch.version.cuda}), python {sys.version.split()[0]}", file=sys.stderr)
print(f"  CUDA kernels: {'yes' if with_cuda else 'no (' + why_cpu + '): CPU-only build'}", file=sys.stderr)
if with_cuda:
    print(f"  CUDA_HOME={cuda_home}  TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST', '(detected)')}",
          file=sys.stderr)
print(f"  MAX_JOBS={os.environ.get('MAX_JOBS', '(torch default)')}  sources: {len(sources)} C++, "
      f"{len(cuda_sources) if with_cuda else 0} CUDA", file=sys.stderr)

# What this build is, for the message of a library that does not load (bioplaus_kernels/__init__.py).
with open(os.path.join(ROOT, "bioplaus_kernels", "_build_info.json"), "w") as f:
    json.dump({"torch": torch.__version__, "cuda": torch.version.cuda, "with_cuda": with_cuda,
               "python": sys.version.split()[0]}, f)

class PersistentBuild(BuildExtension):
    """torch's BuildExtension (ninja) with its objects in a fixed folder of the source tree (module doc)."""

    def finalize_options(self):
        super().finalize_options()
        tag = f"py{sys.version_info[0]}{sys.version_info[1]}-torch{torch.__version__.split('+')[0]}-" \
              f"{'cuda' if with_cuda else 'cpu'}"
        self.build_temp = os.path.join(ROOT, "build", f"temp-{tag}")


setup(
    packages=find_packages(include=["bioplaus_kernels", "bioplaus_kernels.*"]),
    package_data={"bioplaus_kernels": ["_build_info.json"]},
    ext_modules=[ext],
    cmdclass={"build_ext": PersistentBuild.with_options(use_ninja=True)},
)
