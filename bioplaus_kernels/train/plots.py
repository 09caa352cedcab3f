"""Learning-curve PNGs (matplotlib, headless Agg backend): train and test error per epoch."""
from __future__ import annotations


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def learning_curves(runs: dict[str, list[dict]], path: str, title: str) -> None:
    """One line per run (label -> metric rows): train error dashed, test error solid, in %."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (label, rows) in enumerate(runs.items()):
        color = f"C{i % 10}"
        epochs = [r["epoch"] for r in rows]
        if any("train_error" in r for r in rows):
            ax.plot(epochs, [r.get("train_error") for r in rows], "--", color=color, label=f"{label} train")
        ax.plot(epochs, [r.get("test_error") for r in rows], "-", color=color, label=f"{label} test")
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("error (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
