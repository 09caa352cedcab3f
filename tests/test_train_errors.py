"""Bad input to the bioplaus CLI: one line on stderr, exit status 2, never a traceback."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

from bioplaus_kernels.train.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = ["--epochs", "1", "--steps-per-epoch", "2", "--no-progress"]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # runs without --out write runs/ into the working directory


def fails(capsys, argv, match):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bioplaus: error: ") and "\n" not in err and "Traceback" not in err, err
    assert match in err, err
    return err


@pytest.mark.parametrize("argv, match", [
    (["train", "--dataset", "svhn"], "unknown dataset 'svhn'"),
    (["train", "--arch", "vgg16"], "unknown architecture 'vgg16'"),
    (["train", "--arch", "nowhere/model.py:make"], "not found"),
    (["train", "--algo", "bp", "hebb"], "unknown rule 'hebb'"),
    (["train", "--algo", "bp", "bp"], "twice"),
    (["train", "--arch", "alexnet-bn", "--algo", "bp"], "alexnet-bn needs inputs of at least"),
    (["train", "--arch", "conv", "--algo", "dtp"], "rule dtp cannot train --arch conv"),
    (["train", "--preset", "hinton2099:mnist"], "unknown preset"),
    (["train", "--preset", "bartunov2018:imagenet-lc", "--algo", "sdtp", "--dataset", "digits"],
     "Table 5 leaves that cell empty"),
    (["train", "--optimizer", "lbfgs"], "invalid choice: 'lbfgs'"),
    (["train", "--epochs", "0"], "argument --epochs: must be an integer >= 1, got 0"),
    (["train", "--algo", "bp", "--amp", "--device", "cpu"], "--amp (bf16 autocast) needs a CUDA device"),
    (["train", "--algo", "bp", "--device", "tpu"], "--device"),
    (["train", "--resume"], "--resume needs --out"),
    (["tune"], "invalid choice: 'tune'"),
    (["reproduce", "lee2015"], "unknown paper 'lee2015'"),
    (["reproduce", "bartunov2018", "--dataset", "digits"], "has no digits/fc cell"),
    (["reproduce", "bartunov2018", "--dataset", "imagenet", "--arch", "fc"], "has no imagenet/fc cell"),
    (["reproduce", "bartunov2018", "--algo", "usf"], "has no row for --algo usf"),
])
def test_bad_names_and_options(capsys, argv, match):
    fails(capsys, argv, match)


def test_missing_data_dir_and_files(tmp_path, capsys):
    err = fails(capsys, ["train", "--dataset", "mnist", "--data-dir", str(tmp_path / "absent")],
                "train-images-idx3-ubyte")
    assert str(tmp_path / "absent") in err
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        (partial / name).write_bytes(b"")
    fails(capsys, ["train", "--dataset", "mnist", "--data-dir", str(partial)], "t10k-labels-idx1-ubyte")
    fails(capsys, ["train", "--dataset", "cifar10", "--data-dir", str(tmp_path)], "data_batch_1")
    fails(capsys, ["train", "--dataset", "imagenet", "--arch", "resnet18", "--data-dir", str(tmp_path)],
          "ImageFolder")


def test_resume_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    fails(capsys, ["train", "--resume", "--out", str(tmp_path)], "not a run folder")


@pytest.fixture
def fc_run(tmp_path):
    assert main(["train", "--algo", "bp", "--out", str(tmp_path / "fc"), *QUICK]) == 0
    return tmp_path / "fc"


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "not-a-dict"])
def test_corrupt_checkpoint(fc_run, capsys, damage):
    path = fc_run / "bp" / "checkpoint.pt"
    data = path.read_bytes()
    if damage == "not-a-dict":
        torch.save([torch.zeros(2)], path)
    else:
        path.write_bytes({"garbage": b"\x00not a checkpoint" * 50, "truncated": data[: len(data) // 2],
                          "empty": b""}[damage])
    fails(capsys, ["train", "--resume", "--out", str(fc_run)], "checkpoint")


def test_checkpoint_of_another_run(fc_run, tmp_path, capsys):
    lc_run = tmp_path / "lc"
    assert main(["train", "--algo", "bp", "--arch", "lc", "--out", str(lc_run), *QUICK]) == 0
    shutil.copy(fc_run / "bp" / "checkpoint.pt", lc_run / "bp" / "checkpoint.pt")
    fails(capsys, ["train", "--resume", "--out", str(lc_run)], "was written for rule bp on digits/fc")
    ckpt = torch.load(lc_run / "bp" / "checkpoint.pt", weights_only=True)
    ckpt["arch"] = "lc"  # claims to fit, but holds the fc net's tensors
    torch.save(ckpt, lc_run / "bp" / "checkpoint.pt")
    fails(capsys, ["train", "--resume", "--out", str(lc_run)], "does not match this model")


def test_module_entry_point_prints_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bioplaus_kernels.train", "train", "--dataset", "svhn"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "unknown dataset" in proc.stderr, proc.stderr
