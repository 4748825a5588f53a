"""A generated segmentation dataset that needs no files: coloured shapes on noisy textured backgrounds.

Each image holds 1-3 shapes (circle, square, triangle) of random size, position and colour, drawn over a smooth
random gradient plus pixel noise. Colour carries no class information (every class uses the same colour
distribution), so a model has to learn form; shapes are kept clearly brighter or darker than the background around
them so the task stays learnable by a small FCN.
"""
from __future__ import annotations

import numpy as np
import torch
from pydantic import PositiveInt

from models.data.base import SeededArgs, SegSplits, Size, register

SHAPES_LABELS = ["background", "circle", "square", "triangle"]
SHAPES_COLORS = [(0, 0, 0), (220, 20, 60), (30, 144, 255), (255, 200, 0)]


class ShapesArgs(SeededArgs):
    size: Size = (64, 64)  # [H, W]
    train_count: PositiveInt = 1000
    test_count: PositiveInt = 200


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Float (H, W, 3) in 0..255: a random linear colour gradient plus per-pixel noise."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)  # (H, W) each, in [0, 1)
    c0, c1, c2 = rng.uniform(0, 255, size=(3, 3))  # base colour and per-axis colour change
    img = c0 + (xx[..., None] - 0.5) * (c1 - 128) + (yy[..., None] - 0.5) * (c2 - 128)  # (H, W, 3)
    return img + rng.normal(0, 12, size=(h, w, 3))


def _shape_mask(rng: np.random.Generator, cls: int, h: int, w: int) -> np.ndarray:
    """Bool (H, W): the pixels of one shape of class `cls` with random centre, size and (triangle) rotation."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    r = rng.uniform(0.08, 0.2) * min(h, w)  # circumradius-like size
    cy, cx = rng.uniform(r, h - r), rng.uniform(r, w - r)
    if cls == 1:  # circle
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
    if cls == 2:  # axis-aligned square of half-side r * 0.85
        s = 0.85 * r
        return (np.abs(yy - cy) <= s) & (np.abs(xx - cx) <= s)
    # triangle: 3 vertices on a circle, random rotation; inside = same side of all 3 edges
    angles = rng.uniform(0, 2 * np.pi) + np.array([0, 2 * np.pi / 3, 4 * np.pi / 3])
    vy, vx = cy + 1.2 * r * np.sin(angles), cx + 1.2 * r * np.cos(angles)
    sides = [(xx - vx[i]) * (vy[(i + 1) % 3] - vy[i]) - (yy - vy[i]) * (vx[(i + 1) % 3] - vx[i]) for i in range(3)]
    return ((sides[0] >= 0) & (sides[1] >= 0) & (sides[2] >= 0)) | ((sides[0] <= 0) & (sides[1] <= 0) & (sides[2] <= 0))


def _shape_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A random RGB colour at least 80 (mean over channels) away from the mean colour `under` the shape."""
    while True:
        colour = rng.uniform(0, 255, size=3)
        if np.abs(colour - under).mean() >= 80:
            return colour


def generate(count: int, size: Size, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` images uint8 (N, 3, H, W) and masks int64 (N, H, W)."""
    h, w = size
    images = np.empty((count, h, w, 3), dtype=np.uint8)
    masks = np.zeros((count, h, w), dtype=np.int64)
    for n in range(count):
        img = _background(rng, h, w)  # (H, W, 3) float
        for _ in range(rng.integers(1, 4)):
            cls = int(rng.integers(1, len(SHAPES_LABELS)))
            inside = _shape_mask(rng, cls, h, w)  # (H, W) bool
            if not inside.any():
                continue
            colour = _shape_colour(rng, img[inside].mean(axis=0))
            img[inside] = colour + rng.normal(0, 8, size=(int(inside.sum()), 3))
            masks[n][inside] = cls
        images[n] = np.clip(np.rint(img), 0, 255)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(masks)


@register("shapes", task="segmentation", input="image", args=ShapesArgs)
def shapes(args: ShapesArgs, seed: int) -> SegSplits:
    """Generated circles/squares/triangles with per-pixel masks; deterministic in `seed`."""
    train_x, train_y = generate(args.train_count, args.size, np.random.default_rng([seed, 0]))
    test_x, test_y = generate(args.test_count, args.size, np.random.default_rng([seed, 1]))
    return SegSplits(train_x, train_y, test_x, test_y, list(SHAPES_LABELS), list(SHAPES_COLORS), None)
