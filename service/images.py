"""Uploaded image bytes → the uint8 (H, W, C) pixels an exported image graph takes, refusing what is not a sane image.

The graph normalizes by itself (see models/export.py), so the service only decodes, converts channels and resizes,
exactly as training read image files (models/data/images.py: `convert("L" | "RGB")`, then a bilinear resize).
Channel mismatches are converted, never refused: a grayscale model gets colour uploads as luminance (ITU-R 601-2),
a colour model gets grayscale uploads replicated to RGB, and alpha is dropped (the colour under it is kept). Images
whose pixels are not 8-bit (16-bit or float grayscale) are refused rather than guessed at.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from service.errors import BAD_REQUEST, TOO_LARGE, UNPROCESSABLE, UNSUPPORTED, RequestError

FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")  # decoders PIL may use; anything else is 415
_EIGHT_BIT = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "La", "RGBa"}


@dataclass(frozen=True)
class Decoded:
    """An upload at the model's input size: pixels uint8 (H, W, C); `size` (W, H) as uploaded; `converted` says
    which channel conversion was applied ("RGB→L"), None when the upload already matched."""

    pixels: np.ndarray
    size: tuple[int, int]
    converted: str | None
    image: Image.Image  # the upload decoded at its own size, in the model's mode (used for overlays)


class PixelBudget:
    """The pixels one request may have decoded, all its images together (`limits.max_request_pixels`)."""

    def __init__(self, limit: int):
        self.limit, self.spent = limit, 0

    def spend(self, name: str, width: int, height: int) -> None:
        self.spent += width * height
        if self.spent > self.limit:
            raise RequestError(TOO_LARGE, f"{name}: with it the request's images have {self.spent:,} pixels, more "
                                          f"than the limit of {self.limit:,} per request")


def _header(data: bytes, name: str) -> Image.Image:
    """The image of `data` with only its header read (lazy): size and mode known, no pixel decoded yet."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        raise RequestError(UNSUPPORTED, f"{name}: not an image in a supported format ({', '.join(FORMATS)})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise RequestError(TOO_LARGE, f"{name}: refused as a decompression bomb (too many pixels)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise RequestError(BAD_REQUEST, f"{name}: corrupt image header ({e})") from None


def _check_pixels(img: Image.Image, name: str, max_pixels: int, budget: PixelBudget | None) -> None:
    width, height = img.size
    if width * height > max_pixels:
        raise RequestError(TOO_LARGE, f"{name}: {width}×{height} = {width * height:,} pixels, "
                                      f"the limit is {max_pixels:,}")
    if budget is not None:
        budget.spend(name, width, height)


def check_request_pixels(uploads: Sequence[bytes], max_pixels: int, max_request_pixels: int) -> None:
    """Refuse a request whose images' headers already break the pixel limits, before any of them is decoded: 32
    huge images in one request cost 32 header reads here, not two full decodes and a resize before the third is
    refused, time in which the requests batched with it would wait."""
    budget = PixelBudget(max_request_pixels)
    for i, data in enumerate(uploads):
        _check_pixels(_header(data, f"images[{i}]"), f"images[{i}]", max_pixels, budget)


def open_image(data: bytes, name: str, max_pixels: int, budget: PixelBudget | None = None) -> Image.Image:
    """Decode `data` fully, refusing non-images (415), corrupt or truncated files (400) and images of more than
    `max_pixels` pixels or beyond the request's `budget` (413, checked from the header before any pixel is
    decoded)."""
    img = _header(data, name)
    _check_pixels(img, name, max_pixels, budget)
    try:
        img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise RequestError(BAD_REQUEST, f"{name}: truncated or corrupt {img.format} image ({e})") from None
    return img


def to_mode(img: Image.Image, channels: int, name: str) -> tuple[Image.Image, str | None]:
    """`img` as mode L (channels 1) or RGB (channels 3), and the conversion applied ("RGBA→RGB") if any."""
    target = {1: "L", 3: "RGB"}.get(channels)
    if target is None:
        raise RequestError(UNPROCESSABLE, f"the model takes {channels}-channel images; only 1 (L) and 3 (RGB) can be "
                                          f"decoded from image files")
    if img.mode == target:
        return img, None
    if img.mode not in _EIGHT_BIT:
        raise RequestError(UNPROCESSABLE, f"{name}: {img.mode} pixels (not 8-bit) are not accepted; send an 8-bit "
                                          f"grayscale or RGB image")
    return img.convert(target), f"{img.mode}→{target}"


def decode_image(data: bytes, name: str, channels: int, size: tuple[int, int], max_pixels: int,
                 budget: PixelBudget | None = None) -> Decoded:
    """Upload bytes → `Decoded` at the model's (H, W) `size` and channel count."""
    original = open_image(data, name, max_pixels, budget)
    img, converted = to_mode(original, channels, name)
    height, width = size
    resized = img if img.size == (width, height) else img.resize((width, height), Image.Resampling.BILINEAR)
    pixels = np.asarray(resized, dtype=np.uint8).reshape(height, width, channels)  # (H, W, C)
    return Decoded(pixels, original.size, converted, img)
