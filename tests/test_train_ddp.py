"""Data-parallel training on the CPU (gloo): two torchrun processes with half the batch each equal one
process with the whole batch, for backprop, DFA (DDP composes with its backward hooks) and SDTP (the TP
trainer averages its own gradients; 3 epochs: inverse, forward, inverse phases)."""
import os
import socket
import subprocess
import sys

import pytest
import torch

from bioplaus_kernels.train.cli import main
from bioplaus_kernels.train.models import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RULES = ["bp", "dfa", "sdtp"]
LABELS = ["bp", "dfa", "sdtp-alternating"]
# sigma 0: the inverse losses' noise is drawn per rank (the rank is in its Philox stream), so only noise-free
# target propagation can equal the one-process run; the gradient averaging is what this test checks.
ARGS = ["train", "--algo", *RULES, "--epochs", "3", "--steps-per-epoch", "4", "--batch-size", "32",
        "--device", "cpu", "--no-progress", "--no-eval-train", "--sigma", "0"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model(folder):
    return torch.load(os.path.join(folder, "checkpoint.pt"), weights_only=True)["learner"]["model"]


@pytest.mark.slow
def test_two_process_gloo_run_equals_single_process_run(tmp_path, monkeypatch):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                          "-m", "bioplaus_kernels.train", *ARGS, "--out", str(tmp_path / "two")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    # The reference: the same code path in a one-process group (same DistributedSampler order, whole batch).
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1"),
                       ("MASTER_PORT", str(_free_port()))):
        monkeypatch.setenv(key, value)
    assert main([*ARGS, "--out", str(tmp_path / "one")]) == 0
    for label in LABELS:
        one, two_ = _model(tmp_path / "one" / label), _model(tmp_path / "two" / label)
        assert one.keys() == two_.keys()
        for k in one:
            if isinstance(one[k], torch.Tensor):
                torch.testing.assert_close(two_[k], one[k], rtol=1e-4, atol=2e-5, msg=f"{label} {k}")
            else:  # extra state (e.g. the DFA wrapper's layer layout)
                assert two_[k] == one[k], f"{label} {k}"
    # and training moved the weights (equal because both trained, not because neither did)
    torch.manual_seed(0)
    initial = build_model("fc", dataset="digits", num_classes=10, input_shape=(1, 8, 8)).state_dict()
    trained = _model(tmp_path / "one" / "bp")
    assert all(not torch.equal(initial[k], trained[k]) for k in initial)


def _torchrun(*args, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(_free_port()), "-m", "bioplaus_kernels.train", *args], dict(cwd=ROOT, env=env, **kwargs)


@pytest.mark.slow
def test_sigterm_of_two_processes_then_torchrun_resume_equals_uninterrupted(tmp_path):
    """torchrun forwards SIGTERM to both workers; they stop at the same step (the stop flag is all-reduced),
    rank 0 writes the checkpoint, and `torchrun ... --resume` continues to the same weights as a two-process
    run that was never stopped."""
    import signal
    import time
    common = ["train", "--algo", "bp", "--batch-size", "32", "--steps-per-epoch", "20", "--device", "cpu",
              "--no-progress", "--no-eval-train"]
    cmd, kw = _torchrun(*common, "--epochs", "1000", "--out", str(tmp_path / "b"))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kw)
    metrics = tmp_path / "b" / "bp" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not metrics.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0, err[-3000:]
    ckpt = torch.load(tmp_path / "b" / "bp" / "checkpoint.pt", weights_only=True)
    assert not ckpt["finished"] and ckpt["epoch"] >= 1 and ckpt["settings"]["world_size"] == 2, err[-3000:]
    epochs = str(ckpt["epoch"] + 2)
    cmd, kw = _torchrun("train", "--resume", "--out", str(tmp_path / "b"), "--epochs", epochs)
    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    cmd, kw = _torchrun(*common, "--epochs", epochs, "--out", str(tmp_path / "a"))
    straight = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
    assert straight.returncode == 0, straight.stderr[-3000:]
    a, b = _model(tmp_path / "a" / "bp"), _model(tmp_path / "b" / "bp")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
