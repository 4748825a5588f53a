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


def open_image(data: bytes, name: str, max_pixels: int, budget: PixelBudget | None = None) -> Image.Image:
    """`data`'s image with only its header read (no pixel decoded yet), refusing non-images (415), corrupt headers
    (400) and images of more than `max_pixels` pixels or beyond the request's `budget` (413). A request's images
    are all opened before any is decoded (`service.vision.classify_jobs`): 32 huge images cost 32 header reads, not
    two full decodes before the third is refused while the requests batched with it wait."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        raise RequestError(UNSUPPORTED, f"{name}: not an image in a supported format ({', '.join(FORMATS)})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise RequestError(TOO_LARGE, f"{name}: refused as a decompression bomb (too many pixels)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise RequestError(BAD_REQUEST, f"{name}: corrupt image header ({e})") from None
    width, height = img.size
    if width * height > max_pixels:
        raise RequestError(TOO_LARGE, f"{name}: {width}×{height} = {width * height:,} pixels, "
                                      f"the limit is {max_pixels:,}")
    if budget is not None:
        budget.spend(name, width, height)
    return img


def load_pixels(img: Image.Image, name: str) -> Image.Image:
    """An opened image's pixels decoded; truncated or corrupt data → 400."""
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


def decode_image(opened: Image.Image, name: str, channels: int, size: tuple[int, int]) -> Decoded:
    """An image from `open_image` → `Decoded` at the model's (H, W) `size` and channel count."""
    original = load_pixels(opened, name)
    img, converted = to_mode(original, channels, name)
    height, width = size
    resized = img if img.size == (width, height) else img.resize((width, height), Image.Resampling.BILINEAR)
    pixels = np.asarray(resized, dtype=np.uint8).reshape(height, width, channels)  # (H, W, C)
    return Decoded(pixels, original.size, converted, img)
