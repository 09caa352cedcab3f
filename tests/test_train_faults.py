"""The harness loses nothing and explains every bad input: numeric options checked with one line and status 2,
OS errors with one line, checkpoints before evaluation (a stop during it resumes exactly), mid-epoch checkpoints
that survive a hard kill, a checkpoint on an exception, resume refusing changed settings, atomic run files and
damaged data named."""
import errno
import gzip
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from bioplaus_kernels.train import checkpoints, loop
from bioplaus_kernels.train.cli import main
from bioplaus_kernels.train.errors import UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMON = ["--algo", "fa", "--batch-size", "16", "--steps-per-epoch", "6", "--no-progress"]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def model(folder):
    return torch.load(os.path.join(folder, "checkpoint.pt"), map_location="cpu", weights_only=True)["learner"]["model"]


def assert_same(a, b):
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def metric_rows(folder):
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def one_line_error(capsys, argv, status, match):
    assert main(argv) == status
    err = capsys.readouterr().err.strip()
    assert err.startswith("bioplaus: error: ") and "\n" not in err and "Traceback" not in err, err
    assert match in err, err


@pytest.mark.parametrize("option, value, match", [
    ("--batch-size", "0", "must be an integer >= 1, got 0"),
    ("--epochs", "-1", "must be an integer >= 1, got -1"),
    ("--steps-per-epoch", "0", "must be an integer >= 1, got 0"),
    ("--workers", "-1", "must be an integer >= 0, got -1"),
    ("--threads", "0", "must be an integer >= 1, got 0"),
    ("--lr", "-1", "must be a finite number > 0, got -1"),
    ("--lr", "nan", "must be a finite number > 0, got nan"),
    ("--inverse-lr", "0", "must be a finite number > 0, got 0"),
    ("--momentum", "1", "must be a finite number in [0, 1), got 1"),
    ("--weight-decay", "-0.1", "must be a finite number >= 0, got -0.1"),
    ("--max-minutes", "-3", "must be a finite number >= 0, got -3"),
    ("--max-minutes", "inf", "must be a finite number >= 0, got inf"),
    ("--alpha", "0", "must be a finite number > 0, got 0"),
    ("--sigma", "-1", "must be a finite number >= 0, got -1"),
    ("--checkpoint-every", "-5", "must be an integer >= 0, got -5"),
    ("--batch-size", "ten", "must be an integer >= 1, got 'ten'"),
])
def test_numeric_options(capsys, option, value, match):
    one_line_error(capsys, ["train", option, value], 2, f"argument {option}: {match}")


def test_os_error_is_one_line(tmp_path, capsys, monkeypatch):
    def full_disk(obj, path):
        raise OSError(errno.ENOSPC, "No space left on device", path)
    monkeypatch.setattr(checkpoints, "save_atomic", full_disk)
    one_line_error(capsys, ["train", "--out", str(tmp_path / "r"), *COMMON, "--epochs", "1"], 1,
                   "checkpoint.pt: No space left on device")


def test_resume_refuses_changed_settings(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "r"), *COMMON, "--epochs", "1"]) == 0
    for option, value, was in (("--seed", "1", "--seed 0, not 1"), ("--batch-size", "8", "--batch-size 16, not 8"),
                               ("--steps-per-epoch", "5", "--steps-per-epoch 6, not 5")):
        one_line_error(capsys, ["train", "--resume", "--out", str(tmp_path / "r"), "--epochs", "2", option, value], 2,
                       was)
    # nothing of the refused settings was kept: a plain resume continues with the run's own
    assert json.loads((tmp_path / "r" / "config.json").read_text())["seed"] == 0
    assert main(["train", "--resume", "--out", str(tmp_path / "r"), "--epochs", "2"]) == 0


def test_stop_during_evaluation_keeps_the_epoch(tmp_path, monkeypatch):
    """SIGTERM while epoch 1 is being evaluated: the checkpoint written before the evaluation stands, and the
    resumed run evaluates epoch 1 first, then continues as an uninterrupted run does."""
    assert main(["train", "--out", str(tmp_path / "a"), *COMMON, "--epochs", "2"]) == 0
    real = loop._evaluations

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)
    monkeypatch.setattr(loop, "_evaluations", signalled)
    assert main(["train", "--out", str(tmp_path / "b"), *COMMON, "--epochs", "2"]) == 128 + signal.SIGTERM
    ckpt = torch.load(tmp_path / "b" / "fa" / "checkpoint.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["batch"]) == (1, 0) and ckpt["pending_row"]["epoch"] == 1
    assert not (tmp_path / "b" / "fa" / "metrics.jsonl").exists()
    monkeypatch.setattr(loop, "_evaluations", real)
    assert main(["train", "--resume", "--out", str(tmp_path / "b")]) == 0
    assert_same(model(tmp_path / "a" / "fa"), model(tmp_path / "b" / "fa"))
    a, b = metric_rows(tmp_path / "a" / "fa"), metric_rows(tmp_path / "b" / "fa")
    assert [r["epoch"] for r in b] == [1, 2]
    assert [r["test_error"] for r in a] == [r["test_error"] for r in b]


_KILLED = """
import os, sys
from bioplaus_kernels.train import loop
real = loop.make_learner
def make_learner(*a, **k):
    learner = real(*a, **k)
    step, calls = learner.train_step, [0]
    def train_step(x, y):
        calls[0] += 1
        if calls[0] == {kill_at}:
            os._exit(137)  # a hard kill: no handler, no checkpoint of its own
        return step(x, y)
    learner.train_step = train_step
    return learner
loop.make_learner = make_learner
from bioplaus_kernels.train.cli import main
sys.exit(main({argv!r}))
"""


@pytest.mark.slow
def test_mid_epoch_checkpoints_survive_a_hard_kill(tmp_path):
    argv = ["train", "--out", str(tmp_path / "b"), *COMMON, "--epochs", "2", "--checkpoint-every", "2"]
    script = _KILLED.format(kill_at=10, argv=argv)  # step 10 = epoch 2, batch 4: the last checkpoint is batch 2
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=env)
    assert proc.returncode == 137, proc.stderr
    ckpt = torch.load(tmp_path / "b" / "fa" / "checkpoint.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["batch"]) == (1, 2)
    assert main(["train", "--resume", "--out", str(tmp_path / "b")]) == 0
    assert main(["train", "--out", str(tmp_path / "a"), *COMMON, "--epochs", "2", "--checkpoint-every", "2"]) == 0
    assert_same(model(tmp_path / "a" / "fa"), model(tmp_path / "b" / "fa"))
    assert [r["test_error"] for r in metric_rows(tmp_path / "a" / "fa")] == \
        [r["test_error"] for r in metric_rows(tmp_path / "b" / "fa")]


def test_an_exception_in_an_epoch_writes_a_checkpoint_first(tmp_path, monkeypatch):
    real = loop.make_learner

    def failing(*a, **k):
        learner = real(*a, **k)
        step, calls = learner.train_step, [0]

        def train_step(x, y):
            calls[0] += 1
            if calls[0] == 9:
                raise RuntimeError("a data or device error in step 9")
            return step(x, y)
        learner.train_step = train_step
        return learner
    monkeypatch.setattr(loop, "make_learner", failing)
    with pytest.raises(RuntimeError, match="step 9"):
        main(["train", "--out", str(tmp_path / "b"), *COMMON, "--epochs", "2"])
    ckpt = torch.load(tmp_path / "b" / "fa" / "checkpoint.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["batch"]) == (1, 2)  # steps 7 and 8 of epoch 2 are kept
    monkeypatch.setattr(loop, "make_learner", real)
    assert main(["train", "--resume", "--out", str(tmp_path / "b")]) == 0
    assert main(["train", "--out", str(tmp_path / "a"), *COMMON, "--epochs", "2"]) == 0
    assert_same(model(tmp_path / "a" / "fa"), model(tmp_path / "b" / "fa"))


def test_atomic_writes_and_stale_temporaries(tmp_path):
    path = tmp_path / "summary.md"
    checkpoints.write_text_atomic(str(path), "old")

    class Boom(Exception):
        pass

    def broken(f):
        f.write("half of the new")
        raise Boom
    with pytest.raises(Boom):
        checkpoints._write_atomic(str(path), broken, "w")
    assert path.read_text() == "old" and not list(tmp_path.glob(".tmp-*"))
    # a killed write's temporary is removed when the run resumes
    assert main(["train", "--out", str(tmp_path / "r"), *COMMON, "--epochs", "1"]) == 0
    stale = [tmp_path / "r" / "fa" / ".tmp-abc123.pt", tmp_path / "r" / ".tmp-def456.json"]
    for f in stale:
        f.write_bytes(b"partial")
    assert main(["train", "--resume", "--out", str(tmp_path / "r"), "--epochs", "2"]) == 0
    assert not any(f.exists() for f in stale)
    assert not list((tmp_path / "r").rglob(".tmp-*"))


def test_truncated_idx_file_is_named(tmp_path, capsys):
    folder = tmp_path / "mnist"
    folder.mkdir()
    header = {"train-images-idx3-ubyte": (2051, 3), "t10k-images-idx3-ubyte": (2051, 3),
              "train-labels-idx1-ubyte": (2049, 1), "t10k-labels-idx1-ubyte": (2049, 1)}
    for name, (magic, dims) in header.items():
        sizes = (10, 28, 28)[:dims]
        data = magic.to_bytes(4, "big") + b"".join(s.to_bytes(4, "big") for s in sizes) + bytes(100)  # too short
        with gzip.open(folder / f"{name}.gz", "wb") as f:
            f.write(data)
    one_line_error(capsys, ["train", "--dataset", "mnist", "--data-dir", str(folder)], 2,
                   str(folder / "train-images-idx3-ubyte.gz"))


def test_truncated_image_is_named(tmp_path):
    from PIL import Image

    from bioplaus_kernels.train.data import build_datasets
    for split in ("train", "val"):
        (tmp_path / split / "cat").mkdir(parents=True)
        Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / split / "cat" / "ok.jpg")
    bad = tmp_path / "train" / "cat" / "truncated.jpg"
    data = (tmp_path / "train" / "cat" / "ok.jpg").read_bytes()
    bad.write_bytes(data[: len(data) // 3])
    bundle = build_datasets("imagenet", str(tmp_path), augment=False)
    index = [p for p, _ in bundle.train.samples].index(str(bad))
    with pytest.raises(UsageError, match=f"imagenet: cannot read image {bad}"):
        bundle.train[index]
