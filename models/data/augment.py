"""Batch augmentation on tensors, on whatever device the batch lives (the GPU when training there).

Every op takes a float batch x (B, C, H, W) in [0, 1] and an optional class mask (B, H, W) int64, and returns both.
Geometric ops move image and mask together; masks are only ever indexed (nearest pixel / integer selection), so they
never contain a value that wasn't there before, except `random_crop`'s padding, which is filled with `mask_fill`.
Colour ops touch only the image. Random parameters are drawn per sample from the `generator` given (on its own
device) and then moved to the batch's device, so a seed gives the same augmentation on CPU and GPU.
"""
from __future__ import annotations

import functools
import math
from typing import Annotated, Any, Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field, NonNegativeFloat, NonNegativeInt, model_validator

from models.data.base import DataArgs, Size
from models.registry import Op, Registry

Mask = torch.Tensor | None
OpFn = Callable[[Any, torch.Tensor, Mask, torch.Generator | None], tuple[torch.Tensor, Mask]]


AUGMENTATIONS: Registry[Op[OpFn]] = Registry("augmentation")  # apply(args, x, mask, generator) -> (x, mask)


def augmentation(name: str, args: type[BaseModel]) -> Callable[[OpFn], OpFn]:
    def decorator(apply: OpFn) -> OpFn:
        AUGMENTATIONS.add(name, Op(name, args, apply), origin=apply)
        return apply

    return decorator

Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class AugArgs(DataArgs):
    """Base of every op's options model (unknown keys are errors, like dataset options)."""


# ---------------------------------------------------------------------------------------------------------------------
# Plain conversions (not random)


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images (any shape) -> float32 in [0, 1]."""
    return x.to(torch.float32).div_(255.0)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(x - mean) / std per channel for x (B, C, H, W); mean/std have C entries (or 1, broadcast)."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)  # (1, C, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def resize_batch(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Antialiased bilinear resize of (B, C, H, W) to size [H', W']; uint8 in -> uint8 out (rounded)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    out = F.interpolate(x.float(), size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8) if x.dtype == torch.uint8 else out.to(x.dtype)


# ---------------------------------------------------------------------------------------------------------------------
# Random numbers and index helpers


def _rand(n: int, generator: torch.Generator | None, device: torch.device, *shape: int) -> torch.Tensor:
    """U[0, 1) of shape (n, *shape), drawn on the generator's device, returned on `device`."""
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand((n, *shape), generator=generator, device=gen_device).to(device)


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return lo + (hi - lo) * _rand(n, generator, device)  # (n,)


def _select(t: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Per-sample pixel selection: out[b, ..., i, j] = t[b, ..., rows[b, i], cols[b, j]] for t (B, [C,] H, W)."""
    b = torch.arange(t.shape[0], device=t.device)[:, None, None]  # (B, 1, 1)
    r, c = rows[:, :, None], cols[:, None, :]  # (B, h, 1), (B, 1, w)
    if t.ndim == 3:
        return t[b, r, c]  # (B, h, w)
    return t[b, :, r, c].permute(0, 3, 1, 2)  # (B, h, w, C) -> (B, C, h, w)


def _nearest_index(src: torch.Tensor, n: int) -> torch.Tensor:
    """Continuous pixel-centre coordinates -> nearest valid integer index in [0, n)."""
    return src.round().long().clamp_(0, n - 1)


def _check(x: torch.Tensor, mask: Mask) -> None:
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"augment expects a float batch (B, C, H, W), got {x.dtype} {tuple(x.shape)}")
    if mask is not None and (mask.shape != (x.shape[0], *x.shape[2:]) or mask.dtype != torch.int64):
        expected = (x.shape[0], *x.shape[2:])
        raise ValueError(f"mask must be int64 (B, H, W) = {expected}, got {mask.dtype} {tuple(mask.shape)}")


# ---------------------------------------------------------------------------------------------------------------------
# Geometric ops


class ResizeArgs(AugArgs):
    size: Size  # [H, W]


@augmentation("resize", ResizeArgs)
def resize(args: ResizeArgs, x: torch.Tensor, mask: Mask, generator: torch.Generator | None):
    """Images: antialiased bilinear. Masks: nearest pixel by index selection."""
    (h, w), (H, W) = args.size, x.shape[-2:]
    x = resize_batch(x, args.size)  # (B, C, h, w)
    if mask is not None:
        rows = _nearest_index((torch.arange(h, device=x.device) + 0.5) * H / h - 0.5, H).expand(x.shape[0], h)
        cols = _nearest_index((torch.arange(w, device=x.device) + 0.5) * W / w - 0.5, W).expand(x.shape[0], w)
        mask = _select(mask, rows, cols)  # (B, h, w)
    return x, mask


class RandomResizedCropArgs(AugArgs):
    scale: tuple[float, float] = (0.08, 1.0)  # crop area as a fraction of the image
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # crop width / height

    @model_validator(mode="after")
    def _ranges(self) -> "RandomResizedCropArgs":
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {list(self.scale)}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {list(self.ratio)}")
        return self


def _crop_boxes(args: RandomResizedCropArgs, b: int, H: int, W: int, generator, device):
    """torchvision's RandomResizedCrop box sampling, vectorised: 10 tries per sample, else a centre crop.

    Returns integer tensors top, left, h, w, each (B,).
    """
    tries = 10
    area = H * W * (args.scale[0] + (args.scale[1] - args.scale[0]) * _rand(b, generator, device, tries))  # (B, 10)
    lo, hi = math.log(args.ratio[0]), math.log(args.ratio[1])
    aspect = torch.exp(lo + (hi - lo) * _rand(b, generator, device, tries))  # (B, 10)
    w = torch.sqrt(area * aspect).round().long()  # (B, 10)
    h = torch.sqrt(area / aspect).round().long()
    ok = (w > 0) & (w <= W) & (h > 0) & (h <= H)  # (B, 10)
    first = ok.int().argmax(dim=1, keepdim=True)  # (B, 1): first successful try
    w, h, found = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0], ok.any(dim=1)  # (B,)
    # fallback: the largest centred crop whose aspect is within `ratio`
    fw, fh = W, H
    if W / H < args.ratio[0]:
        fh = round(W / args.ratio[0])
    elif W / H > args.ratio[1]:
        fw = round(H * args.ratio[1])
    w, h = torch.where(found, w, fw), torch.where(found, h, fh)
    top = torch.where(found, (_rand(b, generator, device) * (H - h + 1)).long(), (H - h) // 2)
    left = torch.where(found, (_rand(b, generator, device) * (W - w + 1)).long(), (W - w) // 2)
    return top, left, h, w


@augmentation("random_resized_crop", RandomResizedCropArgs)
def random_resized_crop(args: RandomResizedCropArgs, x: torch.Tensor, mask: Mask, generator: torch.Generator | None):
    """A random box (area share in `scale`, aspect in `ratio`) resized back to the input size.

    Images are sampled bilinearly (grid_sample, one call for the whole batch); masks take the nearest source
    pixel of the very same coordinates.
    """
    B, _, H, W = x.shape
    top, left, h, w = _crop_boxes(args, B, H, W, generator, x.device)  # (B,) each
    # source pixel-centre coordinates of every output row/column
    src_y = top[:, None] + (torch.arange(H, device=x.device) + 0.5) * (h[:, None] / H) - 0.5  # (B, H)
    src_x = left[:, None] + (torch.arange(W, device=x.device) + 0.5) * (w[:, None] / W) - 0.5  # (B, W)
    gy = (2 * src_y + 1) / H - 1  # (B, H) in grid_sample's [-1, 1] (align_corners=False)
    gx = (2 * src_x + 1) / W - 1  # (B, W)
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)  # (B, H, W, 2) as (x, y)
    x = F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="border", align_corners=False)
    if mask is not None:
        mask = _select(mask, _nearest_index(src_y, H), _nearest_index(src_x, W))  # (B, H, W)
    return x, mask


class RandomCropArgs(AugArgs):
    size: Size  # [H, W] of the output
    padding: NonNegativeInt = 0  # added on every side before cropping
    padding_mode: Literal["constant", "reflect", "replicate"] = "constant"
    fill: float = 0.0  # image value of constant padding
    mask_fill: int = 0  # mask value of constant padding (set it to the dataset's ignore_index when it has one)


def _pad_index(idx: torch.Tensor, n: int, mode: str) -> torch.Tensor:
    """Map indices in padded coordinates (may be < 0 or >= n) to source indices for reflect/replicate padding."""
    if mode == "replicate" or n == 1:
        return idx.clamp(0, n - 1)
    idx = idx.abs()  # reflect about 0 (edge not repeated, like numpy/torch "reflect")
    return torch.where(idx > n - 1, 2 * (n - 1) - idx, idx).clamp(0, n - 1)


@augmentation("random_crop", RandomCropArgs)
def random_crop(args: RandomCropArgs, x: torch.Tensor, mask: Mask, generator: torch.Generator | None):
    """A random `size` window of the image padded by `padding` (CIFAR-style); exact integer selection."""
    B, _, H, W = x.shape
    h, w, p = args.size[0], args.size[1], args.padding
    if h > H + 2 * p or w > W + 2 * p:
        raise ValueError(f"random_crop size {h}x{w} exceeds the padded input {H + 2 * p}x{W + 2 * p}")
    top = (_rand(B, generator, x.device) * (H + 2 * p - h + 1)).long() - p  # (B,) in source coordinates
    left = (_rand(B, generator, x.device) * (W + 2 * p - w + 1)).long() - p
    rows = top[:, None] + torch.arange(h, device=x.device)  # (B, h), may fall in the padding
    cols = left[:, None] + torch.arange(w, device=x.device)  # (B, w)
    if args.padding_mode != "constant":
        rows, cols = _pad_index(rows, H, args.padding_mode), _pad_index(cols, W, args.padding_mode)
        return _select(x, rows, cols), None if mask is None else _select(mask, rows, cols)
    inside = ((rows >= 0) & (rows < H))[:, :, None] & ((cols >= 0) & (cols < W))[:, None, :]  # (B, h, w)
    rows, cols = rows.clamp(0, H - 1), cols.clamp(0, W - 1)
    x = torch.where(inside[:, None], _select(x, rows, cols), torch.tensor(args.fill, dtype=x.dtype, device=x.device))
    if mask is not None:
        mask = torch.where(inside, _select(mask, rows, cols), torch.tensor(args.mask_fill, device=mask.device))
    return x, mask


class FlipArgs(AugArgs):
    p: Probability = 0.5


def _flip(args: FlipArgs, x: torch.Tensor, mask: Mask, generator: torch.Generator | None, dim: int):
    flip = _rand(x.shape[0], generator, x.device) < args.p  # (B,)
    x = torch.where(flip[:, None, None, None], x.flip(dim), x)
    if mask is not None:
        mask = torch.where(flip[:, None, None], mask.flip(dim), mask)
    return x, mask


augmentation("hflip", FlipArgs)(functools.partial(_flip, dim=-1))  # mirror left-right with probability p
augmentation("vflip", FlipArgs)(functools.partial(_flip, dim=-2))  # mirror top-bottom with probability p


# ---------------------------------------------------------------------------------------------------------------------
# Colour


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) RGB in [0, 1] -> HSV with hue in [0, 1)."""
    r, g, b = x.unbind(-3)
    maxc, minc = x.amax(-3), x.amin(-3)  # (..., H, W)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    s = delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc))
    h = torch.where(
        maxc == r, (g - b) / safe, torch.where(maxc == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe)
    )  # sector-relative hue in [-1, 5)
    h = torch.where(delta > 0, torch.remainder(h / 6.0, 1.0), torch.zeros_like(h))
    return torch.stack((h, s, maxc), dim=-3)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) HSV (hue in [0, 1)) -> RGB in [0, 1]."""
    h, s, v = x.unbind(-3)
    h6 = torch.remainder(h, 1.0) * 6.0
    sector = torch.floor(h6)
    f = h6 - sector
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    sector = sector.long() % 6  # (..., H, W)
    # (r, g, b) per sector 0..5: (v,t,p) (q,v,p) (p,v,t) (p,q,v) (t,p,v) (v,p,q)
    table = torch.stack(
        [
            torch.stack((v, q, p, p, t, v)),
            torch.stack((t, v, v, q, p, p)),
            torch.stack((p, p, t, v, v, q)),
        ]
    )  # (3, 6, ..., H, W)
    idx = sector.unsqueeze(0).unsqueeze(0).expand(3, 1, *sector.shape)  # (3, 1, ..., H, W)
    rgb = table.gather(1, idx).squeeze(1)  # (3, ..., H, W)
    return rgb.movedim(0, -3).clamp(0, 1)


class ColorJitterArgs(AugArgs):
    brightness: NonNegativeFloat = 0.0  # factor drawn from [max(0, 1 - b), 1 + b]
    contrast: NonNegativeFloat = 0.0
    saturation: NonNegativeFloat = 0.0
    hue: Annotated[float, Field(ge=0.0, le=0.5)] = 0.0  # hue shift drawn from [-hue, hue] (a full turn = 1)


def _factor(amount: float, b: int, generator, device) -> torch.Tensor:
    return _uniform(b, max(0.0, 1 - amount), 1 + amount, generator, device).view(b, 1, 1, 1)  # (B, 1, 1, 1)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """Luma (ITU-R 601) (B, 1, H, W) of an RGB or gray batch."""
    if x.shape[1] == 1:
        return x
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


@augmentation("color_jitter", ColorJitterArgs)
def color_jitter(args: ColorJitterArgs, x: torch.Tensor, mask: Mask, generator: torch.Generator | None):
    """torchvision's ColorJitter in a fixed order (brightness, contrast, saturation, hue); masks pass through.

    Saturation and hue need colour, so they leave 1-channel batches unchanged.
    """
    B, C = x.shape[:2]
    if args.brightness:
        x = (x * _factor(args.brightness, B, generator, x.device)).clamp(0, 1)
    if args.contrast:
        mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
        f = _factor(args.contrast, B, generator, x.device)
        x = (f * x + (1 - f) * mean).clamp(0, 1)
    if args.saturation and C == 3:
        f = _factor(args.saturation, B, generator, x.device)
        x = (f * x + (1 - f) * _gray(x)).clamp(0, 1)
    if args.hue and C == 3:
        shift = _uniform(B, -args.hue, args.hue, generator, x.device).view(B, 1, 1)  # (B, 1, 1)
        hsv = rgb_to_hsv(x)  # (B, 3, H, W)
        hsv = torch.stack((torch.remainder(hsv[:, 0] + shift, 1.0), hsv[:, 1], hsv[:, 2]), dim=1)
        x = hsv_to_rgb(hsv)
    return x, mask


# ---------------------------------------------------------------------------------------------------------------------
# Pipelines


class Augment:
    """A validated sequence of ops; call it on a batch (and mask) to get the augmented pair."""

    def __init__(self, steps: list[tuple[str, AugArgs, OpFn]]):
        self.steps = steps

    def __call__(
        self, x: torch.Tensor, mask: Mask = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, Mask]:
        _check(x, mask)
        for _, args, fn in self.steps:
            x, mask = fn(args, x, mask, generator)
        return x, mask

    def __len__(self) -> int:
        return len(self.steps)

    def __repr__(self) -> str:
        return "Augment(" + ", ".join(f"{name}({args!r})" for name, args, _ in self.steps) + ")"


def build_augment(steps: list[tuple[str, dict[str, Any]]]) -> Augment:
    """Look up and validate each (name, options); UnknownName and ValidationError propagate to the spec layer."""
    built = []
    for name, options in steps:
        op = AUGMENTATIONS.get(name)
        built.append((name, op.args.model_validate(options or {}), op.apply))
    return Augment(built)
