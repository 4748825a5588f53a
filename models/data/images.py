"""Reading image and mask files with PIL, safely: every failure becomes a DataError naming the file.

Decompression bombs (a tiny PNG claiming billions of pixels) are refused: PIL only warns between MAX_IMAGE_PIXELS
and twice that, so the warning is promoted to an error here.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from models.data.base import DataError, Size, reading

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


def open_image(path: Path) -> Image.Image:
    """Open and fully decode `path` (so truncation errors surface here, not later)."""
    with reading(path), warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as img:
                img.load()
                return img.copy()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise DataError(f"{path}: image too large, refused as a possible decompression bomb ({exc})") from exc


def image_tensor(img: Image.Image, path: Path, channels: int, size: Size | None = None) -> torch.Tensor:
    """A decoded image as uint8 (C, H, W) with C = channels (1 gray, 3 RGB), resized bilinearly to `size` if given."""
    with reading(path):
        img = img.convert("L" if channels == 1 else "RGB")
        if size is not None and img.size != (size[1], size[0]):
            img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)  # PIL takes (W, H)
        arr = np.asarray(img, dtype=np.uint8).reshape(img.size[1], img.size[0], channels)  # (H, W, C)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()  # (C, H, W)


def read_image(path: Path, channels: int, size: Size | None = None) -> torch.Tensor:
    """An image file as uint8 (C, H, W); see image_tensor."""
    return image_tensor(open_image(path), path, channels, size)


def mask_array(img: Image.Image, path: Path, size: Size | None = None) -> np.ndarray:
    """A decoded class-index mask (mode L, or P where the palette index is the class) as uint8 (H, W).

    Resizing uses NEAREST only, so a pixel is always some pixel's class, never a blend of two class ids.
    """
    if img.mode not in ("L", "P"):
        raise DataError(f"{path}: mask mode {img.mode}, expected a single-channel class-index PNG (mode L or P)")
    with reading(path):
        arr = np.asarray(img, dtype=np.uint8)  # (H, W): raw values / palette indices, never colours
        if size is not None and arr.shape != tuple(size):
            arr = np.asarray(Image.fromarray(arr).resize((size[1], size[0]), Image.Resampling.NEAREST))
    return arr


def stack(items: list[torch.Tensor], paths: list[Path], what: str) -> torch.Tensor:
    """Stack same-shaped tensors; a different shape is a DataError naming the first odd file."""
    if not items:
        raise DataError(f"{what}: no files")
    first = items[0].shape
    for item, path in zip(items, paths):
        if item.shape != first:
            raise DataError(
                f"{path}: shape {tuple(item.shape)} differs from {tuple(first)} of {paths[0]} (set size: [H, W])"
            )
    return torch.stack(items)
