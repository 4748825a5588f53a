"""Training curves like the course's plots: train loss, train and test metric per epoch."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402

from models.train.checkpoint import atomic_write  # noqa: E402


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


def plot_segmentation(images, true_masks, pred_masks, colors: list[list[int]], path: Path, ignore_index=None) -> None:
    """A few validation images with the true and the predicted masks side by side, coloured by class.

    images: uint8 (N, C, H, W); masks: int64 (N, H, W); colors: RGB per class (void drawn black).
    """
    import numpy as np

    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[: len(colors)] = np.asarray(colors, dtype=np.uint8)

    def paint(mask) -> "np.ndarray":
        m = mask.numpy().astype(np.int64)
        if ignore_index is not None:
            m = np.where(m == ignore_index, 255, m)
        return palette[np.clip(m, 0, 255)]

    n = len(images)
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.4 * n), dpi=100, squeeze=False)
    for row in range(n):
        picture = images[row].permute(1, 2, 0).numpy()
        for col, (title, shown) in enumerate((("image", picture[..., 0] if picture.shape[-1] == 1 else picture),
                                              ("true", paint(true_masks[row])), ("predicted", paint(pred_masks[row])))):
            ax = axes[row][col]
            ax.imshow(shown, cmap="gray" if shown.ndim == 2 else None, interpolation="nearest")
            ax.set_axis_off()
            if row == 0:
                ax.set_title(title)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
