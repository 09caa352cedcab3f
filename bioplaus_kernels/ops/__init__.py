"""Functional forms of every operator. Each wraps ``torch.ops.bioplaus.<op>``, whose autograd formula and
fake (meta) kernel are registered in the op's module here."""
from .difference_target import difference_target, difference_target_lc2d
from .feedback_source import feedback_source
from .inverse_loss import inverse_loss, inverse_loss_lc2d, inverse_loss_noisy_input
from .lc2d import lc2d, lc2d_backward_input, lc2d_backward_weight
from .linear import linear, linear_backward_input
from .philox import philox

__all__ = ["difference_target", "difference_target_lc2d", "feedback_source", "inverse_loss", "inverse_loss_lc2d",
           "inverse_loss_noisy_input", "lc2d", "lc2d_backward_input", "lc2d_backward_weight", "linear",
           "linear_backward_input", "philox"]
