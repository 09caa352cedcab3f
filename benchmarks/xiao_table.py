"""Print the README's Xiao et al.-style table (ResNet-18, sign-symmetry against backprop and feedback alignment)
from a recorded result folder, with BioTorch's published figures beside it as context; optionally draw the
test-error curves of every run into one chart:

    python3 benchmarks/xiao_table.py benchmarks/results/xiao2018-fashion-mnist-resnet18-cpu [--plot PNG]

The folder holds one `bioplaus train` run per optimizer, <optimizer>/<rule>/metrics.jsonl (one line per epoch),
and <optimizer>/config.json. Rows run in the order bp, fa, usf, frsf, brsf within each optimizer. Ours: the test
error after the last epoch, the best test error of the run, and the running training error of the last epoch
(the run did not evaluate the training set).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

RULES = ("bp", "fa", "usf", "frsf", "brsf")
OPTIMIZERS = {"sgd": "SGD + momentum", "bm": "Batch-Manhattan"}
# Sanfiz & Akrout 2021 (BioTorch), the published test errors (%): ImageNet ResNet-18 top-1 (75 epochs, SGD) and
# CIFAR-10 ResNet-20 (SGD). docs/papers.md section 3.
BIOTORCH = {"bp": (30.39, 8.63), "usf": (34.97, 10.05), "frsf": (36.50, 11.20), "brsf": (37.21, 11.02),
            "fa": (85.25, 32.16)}


def runs(folder: str):
    """[(optimizer, rule, epochs (list of dicts), config)] in table order."""
    out = []
    for opt in OPTIMIZERS:
        cfg_path = os.path.join(folder, opt, "config.json")
        if not os.path.exists(cfg_path):
            continue
        with open(cfg_path) as f:
            cfg = json.load(f)
        for rule in RULES:
            path = os.path.join(folder, opt, rule, "metrics.jsonl")
            if not os.path.exists(path):
                continue
            with open(path) as f:
                epochs = [json.loads(line) for line in f if line.strip()]
            if epochs:
                out.append((opt, rule, epochs, cfg))
    return out


def table(folder: str) -> str:
    rows = runs(folder)
    bp = {opt: ep[-1]["test_error"] for opt, rule, ep, _ in rows if rule == "bp"}
    bp_any = next(iter(bp.values()), None)
    lines = ["| rule | optimizer | lr | budget (epochs x steps x batch) | test error | best test error | train error (running) | test error - bp "
             "| BioTorch ImageNet ResNet-18 top-1 (theirs) | BioTorch CIFAR-10 ResNet-20 (theirs) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for opt, rule, ep, cfg in rows:
        last = ep[-1]
        best = min(e["test_error"] for e in ep)
        gap = "-" if bp_any is None else f"{last['test_error'] - bp_any:+.2f}"
        theirs = tuple(f"{v:.2f}" for v in BIOTORCH[rule]) if rule in BIOTORCH else ("-", "-")
        lines.append(f"| {rule} | {OPTIMIZERS[opt]} | {cfg['lr']:g} | {last['epochs']:g} x {cfg['steps_per_epoch']} x "
                     f"{cfg['batch_size']} | {last['test_error']:.2f} "
                     f"| {best:.2f} | {last['train_error_running']:.2f} | {gap} | {theirs[0]} | {theirs[1]} |")
    return "\n".join(lines) + "\n"


def plot(folder: str, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for opt, rule, ep, _ in runs(folder):
        ax.plot([e["epochs"] for e in ep], [e["test_error"] for e in ep], marker="o",
                linestyle="-" if opt == "sgd" else "--", label=f"{rule} ({OPTIMIZERS[opt]})")
    ax.set_yscale("log")
    ax.set_xlabel("epoch (of the budget)")
    ax.set_ylabel("test error (%), log scale")
    ax.set_title("ResNet-18 on Fashion-MNIST: sign-symmetry vs bp and fa")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder")
    ap.add_argument("--plot", default=None, metavar="PNG", help="also draw the test-error curves")
    args = ap.parse_args(argv)
    sys.stdout.write(table(args.folder))
    if args.plot:
        plot(args.folder, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
