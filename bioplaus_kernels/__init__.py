"""bioplaus_kernels: hand-written CUDA and C++ kernels for biologically motivated deep learning.

Importing the package loads the compiled operator library (``bioplaus_kernels._C``), which registers the
``torch.ops.bioplaus.*`` operators; ``bioplaus_kernels.ops`` adds their autograd and fake kernels.
``nn`` holds the modules (feedback rules on Linear / Conv2d / LocallyConnected2d), ``convert`` turns any
model's layers into them, ``tp`` trains target-propagation networks, ``metrics`` measures alignment and
``train`` is the harness behind the ``bioplaus`` command.
"""
import json as _json
import os as _os

import torch  # loads libtorch, which _C links against


def _load_error(error: Exception) -> str:
    """One message for a compiled library that does not load: what was built, against which torch, what this
    process runs, and how to rebuild."""
    try:
        with open(_os.path.join(_os.path.dirname(__file__), "_build_info.json")) as f:
            built = _json.load(f)
        what = (f"it was built against torch {built['torch']} (CUDA {built['cuda'] or 'none'}), "
                f"{'with' if built['with_cuda'] else 'without'} CUDA kernels, for Python {built['python']}")
    except (OSError, ValueError, KeyError):
        what = "no build record was found (_build_info.json): the extension was probably never built here"
    return (f"bioplaus_kernels: the compiled operator library bioplaus_kernels._C did not load ({error}); {what}; "
            f"this process runs torch {torch.__version__} (CUDA {torch.version.cuda or 'none'}). Rebuild it against "
            "this torch from the source tree: pip install --no-build-isolation -e . "
            "(or python3 setup.py build_ext --inplace)")


try:
    from . import _C  # registers torch.ops.bioplaus.*
except ImportError as _error:
    raise ImportError(_load_error(_error)) from _error

from . import backends, feedback, metrics, nn, ops, optim, reference, tp  # noqa: F401
from .nn.convert import convert

__version__ = "0.1.0"

#: True when the CUDA kernels were compiled into this build.
with_cuda: bool = bool(_C.with_cuda)

__all__ = ["convert", "feedback", "metrics", "nn", "ops", "optim", "reference", "tp", "with_cuda", "__version__"]
