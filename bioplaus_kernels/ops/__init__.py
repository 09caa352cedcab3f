"""Functional forms of every operator. Each wraps ``torch.ops.bioplaus.<op>``, whose autograd formula and
fake (meta) kernel are registered in the op's module here."""
from .lc2d import lc2d, lc2d_backward_input, lc2d_backward_weight
from .philox import philox
from .feedback_source import feedback_source
from .linear import linear, linear_backward_input

__all__ = ["lc2d", "lc2d_backward_input", "lc2d_backward_weight", "philox", "feedback_source", "linear",
           "linear_backward_input"]
from .difference_target import difference_target, difference_target_lc2d
from .inverse_loss import inverse_loss, inverse_loss_lc2d, noisy

__all__ += ["difference_target", "difference_target_lc2d", "inverse_loss", "inverse_loss_lc2d", "noisy"]
