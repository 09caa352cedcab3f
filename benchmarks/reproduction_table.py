"""Print the README's "Reproduced results" tables of Bartunov et al. 2018's Table 1 (MNIST) from a recorded
result folder, so the README is generated from the committed JSON, never typed:

    python3 benchmarks/reproduction_table.py benchmarks/results/bartunov2018-mnist-cpu

The folder holds `bioplaus reproduce` runs (results.json) and `bioplaus train` runs (summary.json):
    fc/, lc/, conv/                          the cells at seed 0 (every row of the FC and LC columns, BP ConvNet)
    <arch>-sdtp-parallel-inverse-beta1-0.9/  SDTP parallel with the inverse Adam's beta1 0.9 (docs/tp.md)
    <arch>-seed<k>/                          the seed-spread rows at seed k
Ours is the best test error of the run and the train error at that epoch (evaluated on the training set, or the
running error of the training pass where a run did not evaluate it). A missing run prints "-".
"""
from __future__ import annotations

import json
import os
import statistics
import sys

from bioplaus_kernels.train.reproduce import PAPER_RESULTS, ROW_ORDER as ROWS, display_name as _name

SEED_ROWS = ("dtp-alternating", "sdtp-alternating", "fa", "bp")
FIX = "sdtp-parallel-inverse-beta1-0.9"


def _load(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except OSError:
        return None


def _reproduce_rows(folder: str) -> dict:
    """{row: (ours train, ours test, epochs)} of a reproduce run."""
    d = _load(os.path.join(folder, "results.json"))
    if d is None:
        return {}
    return {r["row"]: (r["ours"].get("train"), r["ours"].get("test"), r["epochs"]) for r in d["rows"]}


def _paper(dataset: str, arch: str, key: str) -> str:
    p = PAPER_RESULTS.get((dataset, arch), {}).get(key)
    return "-" if p is None else f"{_f(p['test'])} ({_f(p['train'])})"


def _train_row(folder: str):
    """(train, best test, epochs) of a one-rule `bioplaus train` run."""
    d = _load(os.path.join(folder, "summary.json"))
    if not d:
        return None
    best = d[0]["best"] or {}
    return best.get("train_error", best.get("train_error_running")), best.get("test_error"), d[0]["epochs"]


def _f(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def _cell(ours) -> str:
    """"test (train), epochs" of ours."""
    if ours is None:
        return "-"
    train, test, epochs = ours
    return f"{_f(test)} ({_f(train)}), {epochs:.0f} ep"


def main(root: str) -> None:
    runs = {arch: _reproduce_rows(os.path.join(root, arch)) for arch in ("fc", "lc", "conv")}
    recorded = {arch: _load(os.path.join(root, arch, "results.json")) or {} for arch in ("fc", "lc", "conv")}
    budgets = {arch: r.get("budget", "not run") for arch, r in recorded.items()}
    dataset = next((r["dataset"] for r in recorded.values() if r), "mnist")
    print(f"{dataset}: test error % (train error % in brackets; ep = epochs trained within the budget). Paper: the "
          "best of 60")
    print("random configurations within 500 epochs; ours: Table 5's configuration once, seed 0, under the budget."
          + ("" if (dataset, "fc") in PAPER_RESULTS else f" The paper has no {dataset} numbers."))
    print()
    print("| Method | FC paper | FC ours | LC paper | LC ours |")
    print("|---|---|---|---|---|")
    fix = [_train_row(os.path.join(root, f"{arch}-{FIX}")) for arch in ("fc", "lc")]
    for key in ROWS:
        cells = []
        for arch in ("fc", "lc"):
            cells += [_paper(dataset, arch, key), _cell(runs[arch].get(key))]
        print(f"| {_name(key)} | " + " | ".join(cells) + " |")
        if key == "sdtp-parallel" and any(fix):
            print("| SDTP parallel, inverse beta1 0.9 (ours) | - | " + _cell(fix[0]) + " | - | " + _cell(fix[1]) + " |")
    print("| BP ConvNet | - | - | " + _paper(dataset, "conv", "bp") + " | " + _cell(runs["conv"].get("bp")) + " |")
    print()
    print(f"Budgets: FC {budgets['fc']}; LC {budgets['lc']}; BP ConvNet {budgets['conv']}.")
    if not any(os.path.isdir(os.path.join(root, f"{arch}-seed{k}")) for arch in ("fc", "lc") for k in (1, 2)):
        return
    print()
    print("Seed spread (best test error %, seeds 0, 1, 2: mean ± sample standard deviation, then each seed's value")
    print("and the epochs its budget allowed: under a wall-clock budget on a shared machine the spread mixes the")
    print("seed's effect with the epochs reached):")
    print()
    print("| Method | FC | LC |")
    print("|---|---|---|")
    for key in SEED_ROWS:
        cells = []
        for arch in ("fc", "lc"):
            seeds = [runs[arch].get(key)] + [_reproduce_rows(os.path.join(root, f"{arch}-seed{k}")).get(key)
                                             for k in (1, 2)]
            have = [r for r in seeds if r is not None]
            each = ", ".join("-" if r is None else f"{_f(r[1])} @{r[2]:.0f} ep" for r in seeds)
            if len(have) >= 2:
                tests = [r[1] for r in have]
                cells.append(f"{statistics.mean(tests):.2f} ± {statistics.stdev(tests):.2f} ({each})")
            else:
                cells.append("-" if not have else f"{_f(have[0][1])} (one seed)")
        print(f"| {_name(key)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
