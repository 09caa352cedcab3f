"""Drop-in modules."""
from .lc2d import LocallyConnected2d

__all__ = ["LocallyConnected2d"]
