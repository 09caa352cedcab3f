"""The bioplaus CLI on scikit-learn's digits: every rule end to end, outputs, exact resume, bad input."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from bioplaus_kernels.train.cli import main
from bioplaus_kernels.train.data import _digits
from bioplaus_kernels.train.presets import RULES, TP_RULES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the repository's ../shared/data (a worktree in <work>/wt/<name> finds <work>/shared/data one level further up)
MNIST = next((p for p in (os.path.join(ROOT, "..", "shared", "data", "mnist"),
                          os.path.join(ROOT, "..", "..", "shared", "data", "mnist")) if os.path.isdir(p)),
             os.path.join(ROOT, "..", "shared", "data", "mnist"))
QUICK = ["--epochs", "1", "--steps-per-epoch", "4", "--batch-size", "32", "--no-progress"]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # runs without --out write runs/ into the working directory


def run(out, *args):
    return main(["train", "--out", str(out), *args])


def final_model(folder):
    ckpt = torch.load(os.path.join(folder, "checkpoint.pt"), map_location="cpu", weights_only=True)
    return ckpt["learner"]["model"]


def assert_same_parameters(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def rows(folder):
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("rule", RULES)
def test_every_rule_trains_on_digits(tmp_path, rule):
    assert run(tmp_path, "--algo", rule, *QUICK) == 0
    label = f"{rule}-alternating" if rule in TP_RULES else rule
    (row,) = rows(tmp_path / label)
    # errors are counts of misclassified samples over the whole test and training sets, in percent
    bundle = _digits()
    for key, n in (("test_error", len(bundle.test)), ("train_error", len(bundle.train))):
        count = row[key] * n / 100.0
        assert 0 <= round(count) <= n and abs(count - round(count)) < 1e-6, (key, row[key], n)
    if rule == "bp":  # four steps of backprop already beat chance (90%) by far
        assert row["test_error"] < 60.0, row["test_error"]
    if rule in ("fa", "dfa", "usf", "frsf", "brsf"):  # alignment diagnostics of the feedback rules
        assert any(k.startswith("align/") and k.endswith("/angle_BW") for k in row), sorted(row)
    if rule in TP_RULES:  # inverse errors of target propagation, averaged over the epoch
        assert any(k.startswith("inverse_error/") for k in row), sorted(row)


def test_outputs_written(tmp_path):
    assert run(tmp_path, "--algo", "bp", "fa", "--tensorboard", "--epochs", "2", "--steps-per-epoch", "3",
               "--no-progress") == 0
    for rule in ("bp", "fa"):
        folder = tmp_path / rule
        for name in ("checkpoint.pt", "metrics.csv", "metrics.jsonl", "curves.png"):
            assert (folder / name).stat().st_size > 0, name
        assert [r["epoch"] for r in rows(folder)] == [1, 2]
        with open(folder / "metrics.csv") as f:
            assert f.readline().startswith("epoch,") and len(f.readlines()) == 2
        assert any(n.startswith("events.out.tfevents") for n in os.listdir(folder / "tensorboard"))
        ckpt = torch.load(folder / "checkpoint.pt", weights_only=True)
        assert ckpt["epoch"] == 2 and ckpt["finished"]
    for name in ("summary.md", "summary.json", "curves.png", "config.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert not [n for n in os.listdir(tmp_path / "bp") if n.startswith(".tmp")]  # atomic writes leave no temp


@pytest.mark.parametrize("rule", ["bp", "fa", "brsf", "sdtp"])
def test_resume_after_an_epoch_equals_uninterrupted(tmp_path, rule):
    common = ["--algo", rule, "--steps-per-epoch", "6", "--batch-size", "16", "--no-progress"]
    assert run(tmp_path / "a", *common, "--epochs", "3") == 0
    assert run(tmp_path / "b", *common, "--epochs", "1") == 0
    assert run(tmp_path / "b", "--resume", "--epochs", "3") == 0
    label = f"{rule}-alternating" if rule in TP_RULES else rule
    assert_same_parameters(final_model(tmp_path / "a" / label), final_model(tmp_path / "b" / label))
    assert [r["epoch"] for r in rows(tmp_path / "b" / label)] == [1, 2, 3]
    assert rows(tmp_path / "a" / label)[-1]["test_error"] == rows(tmp_path / "b" / label)[-1]["test_error"]


def test_resume_mid_epoch_after_budget_stop_equals_uninterrupted(tmp_path):
    common = ["--algo", "fa", "--steps-per-epoch", "6", "--batch-size", "16", "--epochs", "2", "--no-progress"]
    assert run(tmp_path / "a", *common) == 0
    assert run(tmp_path / "b", *common, "--max-minutes", "1e-9") == 0  # stops after the first batch
    ckpt = torch.load(tmp_path / "b" / "fa" / "checkpoint.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["batch"], ckpt["finished"]) == (0, 1, False)
    assert run(tmp_path / "b", "--resume", "--max-minutes", "0") == 0
    assert_same_parameters(final_model(tmp_path / "a" / "fa"), final_model(tmp_path / "b" / "fa"))
    assert [r["epoch"] for r in rows(tmp_path / "b" / "fa")] == [1, 2]


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_resume_equals_uninterrupted(tmp_path):
    common = ["--algo", "bp", "--batch-size", "16", "--steps-per-epoch", "20", "--no-eval-train", "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "bioplaus_kernels.train", "train", "--out", str(tmp_path / "b"),
                             "--epochs", "1000", *common], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "b" / "bp" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not metrics.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # after the first epoch, most likely in the middle of a later one
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and "--resume" in err
    ckpt = torch.load(tmp_path / "b" / "bp" / "checkpoint.pt", weights_only=True)
    assert not ckpt["finished"] and ckpt["epoch"] >= 1
    epochs = str(ckpt["epoch"] + 2)
    assert run(tmp_path / "b", "--resume", "--epochs", epochs) == 0
    assert run(tmp_path / "a", "--epochs", epochs, *common) == 0
    assert_same_parameters(final_model(tmp_path / "a" / "bp"), final_model(tmp_path / "b" / "bp"))


def test_runs_are_repeatable_and_seeded(tmp_path):
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        assert run(tmp_path / name, "--algo", "fa", *QUICK, "--seed", seed, "--deterministic") == 0
    a, b, c = (final_model(tmp_path / n / "fa") for n in "abc")
    assert_same_parameters(a, b)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_every_rule_of_a_comparison_starts_from_the_same_state(tmp_path):
    # bp trained after another rule equals bp trained alone: each rule starts from the seed's weights,
    # shuffling and RNG state, whatever ran before it
    assert run(tmp_path / "alone", "--algo", "bp", *QUICK) == 0
    assert run(tmp_path / "after", "--algo", "dtp", "bp", *QUICK) == 0
    assert_same_parameters(final_model(tmp_path / "alone" / "bp"), final_model(tmp_path / "after" / "bp"))


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(MNIST), reason=f"MNIST files not found in {MNIST}")
def test_reproduce_prints_paper_numbers_beside_ours(tmp_path, capsys):
    rc = main(["reproduce", "bartunov2018", "--dataset", "mnist", "--arch", "fc", "--data-dir", MNIST,
               "--algo", "bp", "dtp", "--schedule", "alternating", "--epochs", "1", "--steps-per-epoch", "3",
               "--no-eval-train", "--no-progress", "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| BP | 0.00 |" in out and "| DTP alternating | 0.00 |" in out
    result = json.loads((tmp_path / "results.json").read_text())
    assert [r["row"] for r in result["rows"]] == ["dtp-alternating", "bp"]
    assert result["rows"][1]["paper"] == {"train": 0.0, "test": 1.48}
    assert (tmp_path / "results.md").read_text().count("\n| ") == 3


def test_reproduce_fashion_mnist_runs_the_mnist_protocol_with_empty_paper_cells(tmp_path):
    """Fashion-MNIST has no numbers in the paper: its cells run MNIST's rows and Table 5 configurations, and the
    report's paper columns are empty."""
    from bioplaus_kernels.train import reproduce
    assert reproduce.rows_for("fashion-mnist", "lc", None, ["parallel", "alternating"]) == \
        reproduce.rows_for("mnist", "lc", None, ["parallel", "alternating"])
    assert reproduce.preset_cell("fashion-mnist", "conv") == "bartunov2018:mnist-lc"
    assert "fashion-mnist-fc" in reproduce.cells() and "fashion-mnist-conv" in reproduce.cells()

    class Result:
        rule, best, epochs, seconds, status = "bp", {"test_error": 9.5, "train_error": 3.25, "epoch": 2}, 2.0, 60.0, \
            "budget"
    text = reproduce.report("fashion-mnist", "fc", [("bp", Result())], "budget", str(tmp_path),
                            {"torch": "t", "revision": "r", "date": "d"})
    assert "| BP | - | 3.25 | - | 9.50 | 2.00 | 1.0 | budget |" in text
    assert json.loads((tmp_path / "results.json").read_text())["rows"][0]["paper"] == {}


@pytest.mark.parametrize("dataset, arch", [("synthetic:mnist", "lc"), ("synthetic:cifar10", "fc")])
def test_synthetic_data_reports_images_per_second(tmp_path, dataset, arch):
    """No files: random data of the dataset's shape, the real dataset's net, and a training throughput."""
    assert run(tmp_path / "s", "--dataset", dataset, "--arch", arch, "--algo", "bp", "frsf", "--epochs", "1",
               "--steps-per-epoch", "3", "--batch-size", "8", "--no-eval-train", "--no-progress") == 0
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert [r["rule"] for r in summary] == ["bp", "frsf"]
    for r in summary:
        assert r["final"]["images_per_second"] > 0
    table = (tmp_path / "s" / "summary.md").read_text()
    assert "| images/s |" in table and f"{dataset}/{arch}" in table


def test_synthetic_datasets_have_the_real_shapes():
    from bioplaus_kernels.train.data import build_datasets
    for name, shape, classes, length in (("synthetic:imagenet", (3, 224, 224), 1000, 1_281_167),
                                         ("synthetic:cifar10", (3, 32, 32), 10, 50_000),
                                         ("synthetic:mnist", (1, 28, 28), 10, 60_000)):
        b = build_datasets(name)
        assert (b.input_shape, b.num_classes, len(b.train), len(b.test)) == (shape, classes, length, 1000)
        x, y = b.train[length - 1]
        assert x.shape == shape and 0 <= y < classes
        assert b.like == name.split(":")[1]
