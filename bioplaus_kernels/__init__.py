"""bioplaus_kernels: hand-written CUDA and C++ kernels for biologically motivated deep learning.

Importing the package loads the compiled operator library (``bioplaus_kernels._C``), which registers the
``torch.ops.bioplaus.*`` operators; ``bioplaus_kernels.ops`` adds their autograd and fake kernels.
"""
import torch  # noqa: F401  (loads libtorch, which _C links against)

from . import _C  # noqa: F401  (registers torch.ops.bioplaus.*)
from . import nn, ops, optim, reference  # noqa: F401
from . import feedback, metrics  # noqa: F401
from .nn.convert import convert

__version__ = "0.1.0"

#: True when the CUDA kernels were compiled into this build.
with_cuda: bool = bool(_C.with_cuda)

__all__ = ["nn", "ops", "optim", "reference", "with_cuda", "__version__", "feedback", "metrics", "convert"]

from . import tp  # noqa: E402,F401  (target propagation: bioplaus_kernels.tp.Trainer)

__all__ += ["tp"]
