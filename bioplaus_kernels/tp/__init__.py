"""Target propagation (DTP, SDTP, AO-SDTP) on the package's kernels: inverse layers and the trainer."""
from .inverses import LinearInverse, LocallyConnected2dInverse
from .trainer import ALGORITHMS, SCHEDULES, Trainer

__all__ = ["ALGORITHMS", "SCHEDULES", "LinearInverse", "LocallyConnected2dInverse", "Trainer"]
