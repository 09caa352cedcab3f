"""Process-group setup for torchrun, and the few collectives the harness needs.

Under ``torchrun`` (RANK/WORLD_SIZE/LOCAL_RANK in the environment) the harness joins the default process
group: NCCL when training on CUDA (one GPU per process, ``cuda:LOCAL_RANK``), gloo on the CPU. Without
torchrun it runs as one process and every function here is a no-op.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import UsageError


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or dist.is_initialized()

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def resolve_device(spec: str, local_rank: int) -> torch.device:
    """--device auto|cpu|cuda|cuda:N. Under torchrun, "cuda" means this process's GPU (LOCAL_RANK)."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UsageError(f"--device: expected auto, cpu, cuda or cuda:N, got {spec!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {spec}: no CUDA device is visible")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        if device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) are visible")
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise UsageError(f"--device: expected auto, cpu, cuda or cuda:N, got {spec!r}")
    return device


def setup(device_spec: str) -> tuple[Context, torch.device]:
    if not launched_by_torchrun():
        return Context(), resolve_device(device_spec, 0)
    ctx = Context(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    device = resolve_device(device_spec, ctx.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                **({"device_id": device} if device.type == "cuda" else {}))
    return ctx, device


def teardown(finished: bool) -> None:
    """Leaves the process group. After a run that finished on this rank, first waits for every rank: a rank that
    closed its connections while a peer still sent on them could make gloo abort that peer at exit. After an
    error the other ranks may never arrive, so then it leaves at once."""
    if dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few float64 counters over all ranks (evaluation totals)."""
    if not dist.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when any rank says True (a signal or budget stop seen by one rank stops all)."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t)
    return bool(t.item() > 0)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
