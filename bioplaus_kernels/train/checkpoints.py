"""Checkpoints: atomic writes, safe loads, and the random-number state a run needs to continue exactly.

A checkpoint is a dict of tensors and primitive containers only, so it loads with
``torch.load(weights_only=True)`` (a checkpoint file never runs code). Every run file (checkpoints, config,
summaries, results) is written to a temporary file in the same folder, flushed to disk, renamed over the old
one (``os.replace`` is atomic on POSIX), and then the folder itself is synced so that the rename survives a
power loss: a crash or a kill mid-write leaves the previous file intact. Temporary files a killed write left
behind are removed by ``remove_stale_temporaries``.
"""
from __future__ import annotations

import glob
import os
import random
import tempfile
from typing import Callable

import numpy as np
import torch

from .errors import UsageError

#: bumped when the layout of a checkpoint changes; loads of another version are refused.
FORMAT_VERSION = 1


TEMP_PREFIX = ".tmp-"


def _write_atomic(path: str, write: Callable, mode: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=os.path.splitext(path)[1], dir=folder)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_atomic(obj: dict, path: str) -> None:
    """torch.save(obj, path), atomically (see the module doc)."""
    _write_atomic(path, lambda f: torch.save(obj, f), "wb")


def write_text_atomic(path: str, text: str) -> None:
    """A text file (config, summary, results), atomically (see the module doc)."""
    _write_atomic(path, lambda f: f.write(text), "w")


def remove_stale_temporaries(folder: str) -> None:
    """Delete the temporary files of writes that a kill interrupted (no live write shares a run folder)."""
    for path in glob.glob(os.path.join(folder, TEMP_PREFIX + "*")):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def load(path: str, map_location="cpu") -> dict:
    """Load a checkpoint written by save_atomic; any unreadable file is a UsageError with one line."""
    if not os.path.isfile(path):
        raise UsageError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle, zip and unpickler errors all mean: not a usable checkpoint
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"checkpoint {path} is corrupt or not a bioplaus checkpoint ({first[:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT_VERSION:
        raise UsageError(f"checkpoint {path} is not a bioplaus checkpoint of format {FORMAT_VERSION}")
    return ckpt


def rng_state() -> dict:
    """Every global generator a training step or a worker-less DataLoader may draw from."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
