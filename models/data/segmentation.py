"""Semantic segmentation datasets stored as image/mask file pairs: CamVid (SegNet layout) and PASCAL VOC 2012.

Masks are class indices (never colours). On resize, images are bilinear and masks NEAREST, so no pixel ever gets a
class that is an interpolation between two neighbours' classes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.data.base import DataArgs, DataError, SegSplits, Size, reading, register, require_file
from models.data.images import image_tensor, mask_array, open_image, stack

Pair = tuple[Path, Path]  # (image file, mask file)


def check_mask(mask: np.ndarray, path: Path, num_classes: int, ignore_index: int | None) -> None:
    """Every mask value must be a class id in [0, num_classes) or the ignore index."""
    allowed = list(range(num_classes)) + ([] if ignore_index is None else [ignore_index])
    bad = np.setdiff1d(np.unique(mask), allowed)
    if bad.size:
        valid = f"0..{num_classes - 1}" + ("" if ignore_index is None else f" or {ignore_index} (ignore)")
        raise DataError(f"{path}: class index {int(bad[0])} out of range (valid: {valid})")


def load_pairs(
    pairs: list[Pair], size: Size | None, num_classes: int, ignore_index: int | None, what: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read image/mask pairs as (uint8 (N, 3, H, W), int64 (N, H, W)); checks sizes and class ids per file."""
    images, masks, image_paths, mask_paths = [], [], [], []
    for image_path, mask_path in pairs:
        image, mask_img = open_image(image_path), open_image(mask_path)
        mask = mask_array(mask_img, mask_path)  # (h, w) at native size: checked before any resizing
        (w, h), (mh, mw) = image.size, mask.shape
        if (h, w) != (mh, mw):
            raise DataError(f"{mask_path}: mask {mh}x{mw} but image {h}x{w} ({image_path})")
        check_mask(mask, mask_path, num_classes, ignore_index)
        images.append(image_tensor(image, image_path, 3, size))  # (3, H, W)
        masks.append(torch.from_numpy(mask_array(mask_img, mask_path, size).astype(np.int64)))  # (H, W)
        image_paths.append(image_path)
        mask_paths.append(mask_path)
    return stack(images, image_paths, what), stack(masks, mask_paths, what)


def read_list(list_file: Path, root: Path) -> list[Pair]:
    """A SegNet list: one "<image> <mask>" per line, relative to `root`.

    Upstream's own lists use absolute paths under /SegNet/CamVid/; those are mapped to `root/<split>/<name>`.
    """
    require_file(list_file)
    with reading(list_file):
        lines = list_file.read_text(encoding="utf-8").splitlines()
    pairs = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2:
            raise DataError(f"{list_file}:{number}: expected '<image> <mask>', got {line.strip()!r}")
        resolved = []
        for field in fields:
            path = root / field
            if Path(field).is_absolute() and not path.exists():
                path = root / Path(field).parent.name / Path(field).name
            resolved.append(require_file(path, f" (listed in {list_file}:{number})"))
        pairs.append((resolved[0], resolved[1]))
    if not pairs:
        raise DataError(f"{list_file}: empty list")
    return pairs


# ---------------------------------------------------------------------------------------------------------------------
# CamVid (SegNet version): classes and colours from /work/shared/data/camvid/SOURCE.md

CAMVID_LABELS = [
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree",
    "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
]  # fmt: skip
CAMVID_COLORS = [
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
]  # fmt: skip
CAMVID_VOID = 11  # "Unlabelled / void", colour (0, 0, 0); SegNet's ignore_label


class CamVidArgs(DataArgs):
    root: Path
    size: Size | None = None  # [H, W]; None = native 360x480
    train_split: str | list[str] = "train"  # list names (<split>.txt); several are concatenated
    test_split: str = "val"


@register("camvid", task="segmentation", input="image", args=CamVidArgs)
def camvid(args: CamVidArgs, seed: int) -> SegSplits:
    """CamVid street scenes in SegNet's 11 classes (+ void, ignored); pairs listed in <split>.txt files."""
    splits = [args.train_split] if isinstance(args.train_split, str) else args.train_split
    train_pairs = [pair for split in splits for pair in read_list(args.root / f"{split}.txt", args.root)]
    test_pairs = read_list(args.root / f"{args.test_split}.txt", args.root)
    n = len(CAMVID_LABELS)
    train_x, train_y = load_pairs(train_pairs, args.size, n, CAMVID_VOID, f"{args.root} ({'+'.join(splits)})")
    test_x, test_y = load_pairs(test_pairs, args.size, n, CAMVID_VOID, f"{args.root} ({args.test_split})")
    return SegSplits(train_x, train_y, test_x, test_y, list(CAMVID_LABELS), list(CAMVID_COLORS), CAMVID_VOID)


# ---------------------------------------------------------------------------------------------------------------------
# PASCAL VOC 2012

VOC_LABELS = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]  # fmt: skip
VOC_IGNORE = 255  # object borders and difficult regions


def voc_colormap(n: int = 256) -> list[tuple[int, int, int]]:
    """VOC's palette (the devkit's bit-interleaving rule): colour i is the PNG palette entry for class i."""
    colors = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colors.append((r, g, b))
    return colors


class VocArgs(DataArgs):
    root: Path  # the VOC2012 folder (holding JPEGImages/, SegmentationClass/, ImageSets/)
    size: Size | None = None  # [H, W]; VOC images differ in size, so loading without it fails
    train_split: str = "train"
    test_split: str = "val"


def voc_pairs(root: Path, split: str) -> list[Pair]:
    """Pairs for the ids in ImageSets/Segmentation/<split>.txt."""
    list_file = require_file(root / "ImageSets" / "Segmentation" / f"{split}.txt")
    with reading(list_file):
        ids = [line.strip() for line in list_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not ids:
        raise DataError(f"{list_file}: empty list")
    return [
        (
            require_file(root / "JPEGImages" / f"{i}.jpg", f" (listed in {list_file})"),
            require_file(root / "SegmentationClass" / f"{i}.png", f" (listed in {list_file})"),
        )
        for i in ids
    ]


@register("voc", task="segmentation", input="image", args=VocArgs)
def voc(args: VocArgs, seed: int) -> SegSplits:
    """PASCAL VOC 2012 segmentation: 20 object classes + background; palette PNG masks, 255 = ignore."""
    n = len(VOC_LABELS)
    train_x, train_y = load_pairs(voc_pairs(args.root, args.train_split), args.size, n, VOC_IGNORE, str(args.root))
    test_x, test_y = load_pairs(voc_pairs(args.root, args.test_split), args.size, n, VOC_IGNORE, str(args.root))
    return SegSplits(train_x, train_y, test_x, test_y, list(VOC_LABELS), voc_colormap(n), VOC_IGNORE)
