"""Learning-curve PNGs (matplotlib, headless Agg backend): train and test error per epoch."""
from __future__ import annotations


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


# Error ticks (%) of the symmetric-log axis: linear below 0.1 (so a train error of 0 is drawn), logarithmic
# above, so that rules half a point apart near 1-2% separate while 90% (chance) still fits.
_TICKS = (0, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)


def learning_curves(runs: dict[str, list[dict]], path: str, title: str) -> None:
    """One line per run (label -> metric rows): train error dashed, test error solid, in %, on a
    symmetric-log axis (see _TICKS)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (label, rows) in enumerate(runs.items()):
        color = f"C{i % 10}"
        epochs = [r["epoch"] for r in rows]
        if any("train_error" in r for r in rows):
            ax.plot(epochs, [r.get("train_error") for r in rows], "--", color=color, label=f"{label} train")
        ax.plot(epochs, [r.get("test_error") for r in rows], "-", color=color, label=f"{label} test")
    from matplotlib.ticker import FixedLocator, MaxNLocator, NullLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_yscale("symlog", linthresh=0.1, linscale=0.5)
    ax.yaxis.set_major_locator(FixedLocator(_TICKS))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.set_yticklabels([f"{t:g}" for t in _TICKS])
    ax.set_ylim(0, 100)
    ax.set_xlabel("epoch")
    ax.set_ylabel("error (%), log scale above 0.1")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
