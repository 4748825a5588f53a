"""Semantic segmentation datasets stored as image/mask file pairs: CamVid (SegNet layout) and PASCAL VOC 2012.

Masks are class indices (never colours). On resize, images are bilinear and masks NEAREST, so no pixel ever gets a
class that is an interpolation between two neighbours' classes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.data.base import DataError, SegData, Size, reading, register, require_file
from models.data.files import FileArgs, Meta, TableBuilder, open_files
from models.data.images import image_array, image_size, mask_array, open_image
from models.data.progress import progress

Pair = tuple[Path, Path]  # (image file, mask file)


def check_mask(mask: np.ndarray, path: Path, num_classes: int, ignore_index: int | None) -> None:
    """Every mask value must be a class id in [0, num_classes) or the ignore index."""
    allowed = list(range(num_classes)) + ([] if ignore_index is None else [ignore_index])
    bad = np.setdiff1d(np.unique(mask), allowed)
    if bad.size:
        valid = f"0..{num_classes - 1}" + ("" if ignore_index is None else f" or {ignore_index} (ignore)")
        raise DataError(f"{path}: class index {int(bad[0])} out of range (valid: {valid})")


@dataclass(frozen=True)
class PairDecoder:
    """An image/mask pair: the image RGB, bilinear to `size`; the mask a class-index PNG, checked at its native
    size (same size as the image, class ids in range), then NEAREST to `size`."""

    size: Size | None
    mask_classes: int
    mask_ignore: int | None
    fast: bool = False

    def params(self):
        return {"kind": "pair", "size": self.size, "classes": self.mask_classes, "ignore": self.mask_ignore,
                "fast": self.fast}

    def probe(self, paths):
        h, w = self.size if self.size is not None else image_size(paths[0])
        return (3, h, w), (h, w)

    def decode(self, paths):
        image_path, mask_path = paths
        draft = self.size if self.fast else None
        native = image_size(image_path) if draft is not None else None  # a draft-decoded image is smaller
        image, mask_img = open_image(image_path, draft), open_image(mask_path)
        mask = mask_array(mask_img, mask_path)  # (h, w) at native size: checked before any resizing
        (w, h), (mh, mw) = (native[1], native[0]) if native else image.size, mask.shape
        if (h, w) != (mh, mw):
            raise DataError(f"{mask_path}: mask {mh}x{mw} but image {h}x{w} ({image_path})")
        check_mask(mask, mask_path, self.mask_classes, self.mask_ignore)
        x = image_array(image, image_path, 3, self.size).transpose(2, 0, 1)  # (3, H, W)
        return x, mask_array(mask_img, mask_path, self.size)  # (H, W) uint8

    def decode_mask(self, paths):
        _, mask_path = paths
        mask_img = open_image(mask_path)
        check_mask(mask_array(mask_img, mask_path), mask_path, self.mask_classes, self.mask_ignore)
        return mask_array(mask_img, mask_path, self.size)


def _stat(path: Path) -> tuple[Path, os.stat_result]:
    with reading(path):
        return path, path.stat()


def open_pairs(pairs: list[Pair], args, root: Path, n_train: int, meta: Meta, name: str,
               num_classes: int, ignore_index: int | None) -> SegData:
    """The listed pairs (training ones first) as splits, in memory or streamed (models.data.files)."""
    with progress(f"listing {root}") as advance:
        table = TableBuilder(2, advance)
        for image_path, mask_path in pairs:
            table.add([_stat(image_path), _stat(mask_path)])
    items = table.table()
    decoder = PairDecoder(tuple(args.size) if args.size else None, num_classes, ignore_index, args.fast_decode)
    return open_files(items, decoder, args, root, np.arange(n_train), np.arange(n_train, len(items)), meta, name)


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


class CamVidArgs(FileArgs):
    root: Path
    size: Size | None = None  # [H, W]; None = native 360x480
    train_split: str | list[str] = "train"  # list names (<split>.txt); several are concatenated
    test_split: str = "val"


@register("camvid", task="segmentation", input="image", args=CamVidArgs)
def camvid(args: CamVidArgs, seed: int) -> SegData:
    """CamVid street scenes in SegNet's 11 classes (+ void, ignored); pairs listed in <split>.txt files."""
    splits = [args.train_split] if isinstance(args.train_split, str) else args.train_split
    train_pairs = [pair for split in splits for pair in read_list(args.root / f"{split}.txt", args.root)]
    test_pairs = read_list(args.root / f"{args.test_split}.txt", args.root)
    meta = Meta(list(CAMVID_LABELS), list(CAMVID_COLORS), CAMVID_VOID)
    return open_pairs(train_pairs + test_pairs, args, args.root, len(train_pairs), meta, "camvid",
                      len(CAMVID_LABELS), CAMVID_VOID)


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


class VocArgs(FileArgs):
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
def voc(args: VocArgs, seed: int) -> SegData:
    """PASCAL VOC 2012 segmentation: 20 object classes + background; palette PNG masks, 255 = ignore."""
    n = len(VOC_LABELS)
    train_pairs, test_pairs = voc_pairs(args.root, args.train_split), voc_pairs(args.root, args.test_split)
    meta = Meta(list(VOC_LABELS), voc_colormap(n), VOC_IGNORE)
    return open_pairs(train_pairs + test_pairs, args, args.root, len(train_pairs), meta, "voc", n, VOC_IGNORE)
