"""Training curves like the course's plots: train loss, train and test metric per epoch."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402

from .checkpoint import atomic_write  # noqa: E402


def plot_curves(history: list[dict[str, Any]], primary: str, path: Path, title: str) -> None:
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    ax.plot(epochs, [h["train"]["loss"] for h in history], label="train loss")
    for split, style in (("train", "--"), ("test", "-.")):
        values = [h[split].get(primary) for h in history]
        if all(v is not None for v in values) and primary != "loss":
            ax.plot(epochs, values, style, label=f"{split} {primary}")
    ax.set_xlabel("epoch")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    if primary == "perplexity":
        ax.set_yscale("log")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
