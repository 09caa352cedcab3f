"""``bioplaus reproduce bartunov2018``: the paper's protocol (Adam, Table 5's best configuration per cell and
rule, the paper nets) for the cells of Tables 1-2 that the data allows, under a budget, with the paper's
train/test error beside ours.

Protocol notes. The paper reports, per cell, the best test error of the best of 60 random configurations
within 500 epochs (ImageNet: 10 epochs, then continued); we run Table 5's best configuration once, with one
seed, for --epochs (default: the paper's) or until --max-minutes per rule, and report the best test error of
the run and the train error evaluated at that epoch. The batch size (not stated in the paper) is 100.
"""
from __future__ import annotations

import json
import os
import subprocess
import time

import torch

from .errors import UsageError

PAPER = "bartunov2018"

# Table 1 (MNIST, CIFAR-10): {(dataset, arch): {row: (train error, test error)}}, error in %.
# Row keys: "<rule>-<schedule>" for target propagation, "<rule>" otherwise; BP ConvNet is (dataset, "conv").
_T1 = {
    "mnist": {"dtp-parallel": (0.44, 2.86, 0.00, 1.52), "dtp-alternating": (0.00, 1.83, 0.00, 1.46),
              "sdtp-parallel": (1.14, 3.52, 0.00, 1.98), "sdtp-alternating": (0.00, 2.28, 0.00, 1.90),
              "ao-sdtp-parallel": (0.96, 2.93, 0.00, 1.92), "ao-sdtp-alternating": (0.00, 1.86, 0.00, 1.91),
              "fa": (0.00, 1.85, 0.00, 1.26), "dfa": (0.85, 2.75, 0.23, 2.05), "bp": (0.00, 1.48, 0.00, 1.17)},
    "cifar10": {"dtp-parallel": (59.45, 59.14, 28.69, 39.47), "dtp-alternating": (30.41, 42.32, 28.54, 39.47),
                "sdtp-parallel": (51.48, 55.32, 43.00, 46.63), "sdtp-alternating": (48.65, 54.27, 40.40, 45.66),
                "ao-sdtp-parallel": (4.28, 47.11, 32.67, 40.05), "ao-sdtp-alternating": (0.00, 45.40, 34.11, 40.21),
                "fa": (25.62, 41.97, 17.46, 37.44), "dfa": (33.35, 47.80, 32.74, 44.41),
                "bp": (28.97, 41.32, 0.83, 32.41)},
}
_CONVNET = {"mnist": (0.00, 1.01), "cifar10": (1.39, 31.87)}
# Table 2 (ImageNet, LC net): (top-1, top-5) test error; the paper gives no train error there.
_T2 = {"dtp-parallel": (98.34, 94.56), "dtp-alternating": (99.36, 97.28), "sdtp-parallel": (99.28, 97.15),
       "fa": (93.08, 82.54), "bp": (71.43, 49.07)}
_T2_CONVNET = (63.93, 40.17)

PAPER_RESULTS: dict = {}
for _ds, _rows in _T1.items():
    PAPER_RESULTS[(_ds, "fc")] = {k: {"train": v[0], "test": v[1]} for k, v in _rows.items()}
    PAPER_RESULTS[(_ds, "lc")] = {k: {"train": v[2], "test": v[3]} for k, v in _rows.items()}
    PAPER_RESULTS[(_ds, "conv")] = {"bp": {"train": _CONVNET[_ds][0], "test": _CONVNET[_ds][1]}}
PAPER_RESULTS[("imagenet", "lc")] = {k: {"test": v[0], "test_top5": v[1]} for k, v in _T2.items()}
PAPER_RESULTS[("imagenet", "conv")] = {"bp": {"test": _T2_CONVNET[0], "test_top5": _T2_CONVNET[1]}}

# Datasets the paper does not report, run with the rows and Table 5 configurations of a reported one; their
# paper cells are empty.
PROTOCOL_OF = {"fashion-mnist": "mnist"}

ROW_ORDER = ("dtp-parallel", "dtp-alternating", "sdtp-parallel", "sdtp-alternating", "ao-sdtp-parallel",
             "ao-sdtp-alternating", "fa", "dfa", "bp")


def cells() -> list[str]:
    return [f"{d}-{a}" for d, a in PAPER_RESULTS] + [f"{d}-{a}" for d, twin in PROTOCOL_OF.items()
                                                     for t, a in PAPER_RESULTS if t == twin]


def rows_for(dataset: str, arch: str, algos: list[str] | None, schedules: list[str]) -> list[tuple[str, str, str]]:
    """(row key, rule, schedule) of every paper row of the cell, restricted to algos and schedules."""
    if (PROTOCOL_OF.get(dataset, dataset), arch) not in PAPER_RESULTS:
        raise UsageError(f"{PAPER} has no {dataset}/{arch} cell; cells: {', '.join(cells())}")
    table = PAPER_RESULTS[(PROTOCOL_OF.get(dataset, dataset), arch)]
    rows = []
    for key in ROW_ORDER:
        if key not in table:
            continue
        rule, _, schedule = key.rpartition("-") if key.endswith(("-parallel", "-alternating")) else (key, "", "")
        if algos is not None and rule not in algos:
            continue
        if schedule and schedule not in schedules:
            continue
        rows.append((key, rule, schedule or "alternating"))
    if not rows:
        have = sorted({k.rsplit("-", 1)[0] if k.endswith(("-parallel", "-alternating")) else k for k in table})
        raise UsageError(f"{PAPER} {dataset}/{arch} has no row for --algo {' '.join(algos or [])}; "
                         f"it has {', '.join(have)}")
    return rows


def display_name(key: str) -> str:
    """"ao-sdtp-parallel" -> "AO-SDTP parallel", as the paper's tables write it."""
    rule, sep, schedule = key.rpartition("-") if key.endswith(("-parallel", "-alternating")) else (key, "", "")
    return rule.upper() + (f" {schedule}" if sep else "")


def preset_cell(dataset: str, arch: str) -> str:
    # The BP ConvNet row has no Table 5 column; it uses the LC net's BP configuration.
    return f"bartunov2018:{PROTOCOL_OF.get(dataset, dataset)}-{'lc' if arch == 'conv' else arch}"


def environment() -> dict:
    """What a recorded result needs to be traced: torch version, git revision, date."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        rev = "unknown"
    return {"torch": torch.__version__, "revision": rev,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def report(dataset: str, arch: str, results: list[tuple[str, object]], budget: str, folder: str | None,
           env: dict) -> str:
    """Markdown table: paper vs ours per row; also written (with a JSON twin) into folder. env: environment()
    taken when the run started."""
    paper = PAPER_RESULTS.get((dataset, arch), {})
    imagenet = dataset == "imagenet"
    head = ["Method", "paper test", "ours test (best)", "paper top-5", "ours top-5"] if imagenet else \
        ["Method", "paper train", "ours train", "paper test", "ours test (best)"]
    lines = [f"{PAPER} {dataset}/{arch}: error in % ({budget})", "",
             "| " + " | ".join(head + ["epochs", "minutes", "stopped by"]) + " |",
             "|" + "---|" * (len(head) + 3)]
    records = []
    for key, res in results:
        p, best = paper.get(key, {}), res.best or {}
        ours = {"train": best.get("train_error", best.get("train_error_running")), "test": best.get("test_error"),
                "test_top5": best.get("test_top5_error"), "best_epoch": best.get("epoch")}
        cells = [p.get("test"), ours["test"], p.get("test_top5"), ours["test_top5"]] if imagenet else \
            [p.get("train"), ours["train"], p.get("test"), ours["test"]]
        name = "BP ConvNet" if arch == "conv" else display_name(key)
        lines.append("| " + " | ".join([name] + [_fmt(c) for c in cells] +
                                       [f"{res.epochs:.2f}", f"{res.seconds / 60:.1f}", res.status]) + " |")
        records.append({"row": key, "rule": res.rule, "paper": p, "ours": ours, "epochs": res.epochs,
                        "seconds": res.seconds, "status": res.status})
    env = {**env, "threads": torch.get_num_threads()}  # set by --threads after the run started
    lines += ["", f"torch {env['torch']}, {env['threads']} CPU thread(s), revision {env['revision']}, "
              f"started {env['date']}"]
    text = "\n".join(lines) + "\n"
    if folder is not None:
        from .checkpoints import write_text_atomic
        write_text_atomic(os.path.join(folder, "results.md"), text)
        write_text_atomic(os.path.join(folder, "results.json"), json.dumps(
            {"paper": PAPER, "dataset": dataset, "arch": arch, "budget": budget, **env, "rows": records}, indent=2))
    return text
