"""bioplaus_kernels: hand-written CUDA and C++ kernels for biologically motivated deep learning.

Importing the package loads the compiled operator library (``bioplaus_kernels._C``), which registers the
``torch.ops.bioplaus.*`` operators; ``bioplaus_kernels.ops`` adds their autograd and fake kernels.
``nn`` holds the modules (feedback rules on Linear / Conv2d / LocallyConnected2d), ``convert`` turns any
model's layers into them, ``tp`` trains target-propagation networks, ``metrics`` measures alignment and
``train`` is the harness behind the ``bioplaus`` command.
"""
import torch  # noqa: F401  (loads libtorch, which _C links against)

from . import _C  # noqa: F401  (registers torch.ops.bioplaus.*)
from . import feedback, metrics, nn, ops, optim, reference, tp  # noqa: F401
from .nn.convert import convert

__version__ = "0.1.0"

#: True when the CUDA kernels were compiled into this build.
with_cuda: bool = bool(_C.with_cuda)

__all__ = ["convert", "feedback", "metrics", "nn", "ops", "optim", "reference", "tp", "with_cuda", "__version__"]
