"""Readable pure-PyTorch implementations: the ground truth of the tests and the baselines of the benchmarks."""
from . import lc2d  # noqa: F401
from . import philox  # noqa: F401
from . import linear  # noqa: F401
from .feedback_source import feedback_source

__all__ = ["lc2d", "philox", "linear", "feedback_source"]
from . import difference_target, inverse_loss, tp  # noqa: E402,F401

__all__ += ["difference_target", "inverse_loss", "tp"]
