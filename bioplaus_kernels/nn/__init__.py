"""Drop-in modules."""
from .lc2d import LocallyConnected2d
from .linear import Linear
from .conv2d import Conv2d
from .dfa import DFA
from .convert import convert

__all__ = ["LocallyConnected2d", "Linear", "Conv2d", "DFA", "convert"]
