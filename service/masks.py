"""Segmentation answers: the class-index mask as a palette PNG, a coloured overlay, and per-class pixel shares.

The mask PNG is mode P: each pixel's value *is* its class index (what a program reads back with
`np.asarray(Image.open(...))`), and the palette makes the same file viewable — the PASCAL VOC convention.
The palette is VOC's bit-interleaved one, so class 0 is black and the first classes get well-separated colours.
"""
from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

OVERLAY_ALPHA = 0.5  # weight of the class colour over the photo


def palette(classes: int) -> np.ndarray:
    """uint8 (classes, 3): PASCAL VOC's colour map (class 0 black, then red, green, yellow, blue, ...)."""
    colours = np.zeros((classes, 3), dtype=np.uint8)
    for index in range(classes):
        c, r, g, b = index, 0, 0, 0
        for shift in range(7, -1, -1):  # the class index's bits, 3 at a time, fill the channels' high bits
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colours[index] = (r, g, b)
    return colours


def class_mask(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Scores (K, h, w) → class ids uint8/uint16 (H, W) at the upload's (W, H) `size`, resized NEAREST so every
    pixel keeps some pixel's class instead of a blend of two ids."""
    ids = logits.argmax(axis=0)  # (h, w)
    dtype = np.uint8 if logits.shape[0] <= 256 else np.uint16
    mask = Image.fromarray(ids.astype(dtype))
    if mask.size != size:
        mask = mask.resize(size, Image.Resampling.NEAREST)
    return np.asarray(mask)  # (H, W)


def shares(mask: np.ndarray, labels: list[str]) -> dict[str, float]:
    """Fraction of the pixels of each class, every label listed (0.0 when absent), in label order."""
    counts = np.bincount(mask.ravel(), minlength=len(labels))
    return {label: float(n) / mask.size for label, n in zip(labels, counts)}


def png_base64(img: Image.Image) -> str:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def mask_png(mask: np.ndarray, classes: int) -> Image.Image:
    """Class ids (H, W) as a palette PNG image (16-bit grayscale beyond 256 classes, where P cannot index)."""
    if classes > 256:
        return Image.fromarray(mask.astype(np.uint16))
    img = Image.fromarray(mask.astype(np.uint8))  # mode L; putpalette makes it P with the same values
    img.putpalette(palette(classes).ravel().tolist())
    return img


def overlay(photo: Image.Image, mask: np.ndarray, classes: int) -> Image.Image:
    """The upload (any mode) with each pixel tinted by its class colour, as RGB."""
    rgb = np.asarray(photo.convert("RGB"), dtype=np.float32)  # (H, W, 3)
    tint = palette(classes)[mask].astype(np.float32)  # (H, W, 3)
    return Image.fromarray(np.rint((1 - OVERLAY_ALPHA) * rgb + OVERLAY_ALPHA * tint).astype(np.uint8))
