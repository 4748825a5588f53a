"""Classification images stored as one folder per class (torchvision's ImageFolder layout).

Either `root/train/<class>/*` + `root/test/<class>/*`, or a single `root/<class>/*` tree split by `test_fraction`.
Class names are the sorted sub-folder names, so label ids never depend on file-system listing order.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from models.data.base import (
    DataError,
    Fraction,
    ImageSplits,
    SeededArgs,
    Size,
    reading,
    register,
    require_dir,
    stratified_split,
)
from models.data.images import IMAGE_SUFFIXES, read_image, stack


class FolderArgs(SeededArgs):
    root: Path
    channels: Literal[1, 3] = 3
    size: Size | None = None  # [H, W]; None = keep the files' size (they must then all agree)
    test_fraction: Fraction = 0.2  # only for the single-tree layout


def class_dirs(tree: Path) -> list[Path]:
    """Sorted visible sub-folders of `tree`; no classes is a DataError."""
    require_dir(tree)
    with reading(tree):
        dirs = sorted(p for p in tree.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not dirs:
        raise DataError(f"{tree}: no class folders (expected {tree}/<class>/<image files>)")
    return dirs


def image_files(folder: Path) -> list[Path]:
    """Sorted image files in one class folder; an empty one is a DataError (a typo'd class must not vanish)."""
    with reading(folder):
        files = sorted(
            p
            for p in folder.iterdir()
            if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
        )
    if not files:
        raise DataError(f"{folder}: empty class folder (no {'/'.join(sorted(IMAGE_SUFFIXES))} files)")
    return files


def read_tree(tree: Path, classes: list[str], args: FolderArgs) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image under `tree/<class>/` as (uint8 (N, C, H, W), int64 (N,)); classes must be known ones."""
    images, labels, paths = [], [], []
    for folder in class_dirs(tree):
        if folder.name not in classes:
            raise DataError(f"{folder}: class '{folder.name}' is not among the training classes {classes}")
        for path in image_files(folder):
            images.append(read_image(path, args.channels, args.size))  # (C, H, W)
            labels.append(classes.index(folder.name))
            paths.append(path)
    return stack(images, paths, str(tree)), torch.tensor(labels, dtype=torch.int64)


@register("image_folder", task="classification", input="image", args=FolderArgs)
def image_folder(args: FolderArgs, seed: int) -> ImageSplits:
    """Your own labelled images: one sub-folder per class, PNG/JPEG/..., converted to `channels`, resized to `size`."""
    root = require_dir(args.root)
    train_dir, test_dir = root / "train", root / "test"
    if train_dir.is_dir() != test_dir.is_dir():
        present, missing = (train_dir, test_dir) if train_dir.is_dir() else (test_dir, train_dir)
        raise DataError(f"{missing}: folder not found (found {present}; the split layout needs both)")
    if train_dir.is_dir():
        classes = [d.name for d in class_dirs(train_dir)]
        train_x, train_y = read_tree(train_dir, classes, args)
        test_x, test_y = read_tree(test_dir, classes, args)
        if train_x.shape[1:] != test_x.shape[1:]:
            raise DataError(f"{root}: train images are {tuple(train_x.shape[1:])}, test {tuple(test_x.shape[1:])}")
        return ImageSplits(train_x, train_y, test_x, test_y, classes)
    classes = [d.name for d in class_dirs(root)]
    x, y = read_tree(root, classes, args)
    train, test = (torch.from_numpy(i) for i in stratified_split(y.numpy(), args.test_fraction, seed))
    return ImageSplits(x[train], y[train], x[test], y[test], classes)
