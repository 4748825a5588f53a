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


def open_image(path: Path, draft: Size | None = None) -> Image.Image:
    """Open and fully decode `path` (so truncation errors surface here, not later).

    `draft` [H, W]: a JPEG may be decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, 3x faster at half size)
    as long as the result stays at least that large; it is resized to the exact size afterwards. Other formats
    ignore it."""
    with reading(path), warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as img:
                if draft is not None and img.format == "JPEG":
                    img.draft(img.mode, (draft[1], draft[0]))  # PIL takes (W, H); keeps the mode, only scales
                img.load()
                return img.copy()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise DataError(f"{path}: image too large, refused as a possible decompression bomb ({exc})") from exc


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image file from its header alone (nothing decoded); errors as open_image."""
    with reading(path), warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as img:
                return img.size[1], img.size[0]
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise DataError(f"{path}: image too large, refused as a possible decompression bomb ({exc})") from exc


def decode_file(path: Path, channels: int, size: Size | None = None, fast: bool = False) -> np.ndarray:
    """An image file straight to uint8 (H, W, C) pixels (read_image's, without its intermediate copies): the hot
    path of streamed datasets. Errors as open_image."""
    with reading(path), warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as img:
                if fast and size is not None and img.format == "JPEG":
                    img.draft(img.mode, (size[1], size[0]))
                img.load()
                return image_array(img, path, channels, size)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise DataError(f"{path}: image too large, refused as a possible decompression bomb ({exc})") from exc


def image_array(img: Image.Image, path: Path, channels: int, size: Size | None = None) -> np.ndarray:
    """A decoded image as uint8 (H, W, C) with C = channels, resized bilinearly to `size` if given."""
    with reading(path):
        mode = "L" if channels == 1 else "RGB"
        img = img if img.mode == mode else img.convert(mode)  # convert to the same mode would only copy
        if size is not None and img.size != (size[1], size[0]):
            img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)  # PIL takes (W, H)
        return np.asarray(img, dtype=np.uint8).reshape(img.size[1], img.size[0], channels)  # (H, W, C)


def image_tensor(img: Image.Image, path: Path, channels: int, size: Size | None = None) -> torch.Tensor:
    """A decoded image as uint8 (C, H, W) with C = channels (1 gray, 3 RGB), resized bilinearly to `size` if given."""
    arr = image_array(img, path, channels, size)  # (H, W, C)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()  # (C, H, W)


def read_image(path: Path, channels: int, size: Size | None = None, fast: bool = False) -> torch.Tensor:
    """An image file as uint8 (C, H, W); see image_tensor (`fast`: JPEG draft decoding, see open_image)."""
    return image_tensor(open_image(path, size if fast else None), path, channels, size)


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
