"""Classification images stored as one folder per class (torchvision's ImageFolder layout).

Either `root/train/<class>/*` + `root/test/<class>/*`, or a single `root/<class>/*` tree split by `test_fraction`.
Class names are the sorted sub-folder names, so label ids never depend on file-system listing order.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np

from models.data.base import (
    DataError,
    Fraction,
    ImageData,
    SeededArgs,
    Size,
    reading,
    register,
    require_dir,
    stratified_split,
)
from models.data.files import FileArgs, ImageDecoder, Meta, TableBuilder, open_files
from models.data.images import IMAGE_SUFFIXES
from models.data.progress import progress


class FolderArgs(SeededArgs, FileArgs):
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


def image_files(folder: Path) -> list[tuple[Path, os.stat_result]]:
    """Sorted image files in one class folder with their stat (size, mtime: the decode cache's key); an empty
    folder is a DataError (a typo'd class must not vanish)."""
    with reading(folder):
        files = []
        with os.scandir(folder) as entries:
            for entry in entries:
                if Path(entry.name).suffix.lower() in IMAGE_SUFFIXES and not entry.name.startswith("."):
                    if entry.is_file():
                        files.append((Path(entry.path), entry.stat()))
        files.sort(key=lambda f: f[0])
    if not files:
        raise DataError(f"{folder}: empty class folder (no {'/'.join(sorted(IMAGE_SUFFIXES))} files)")
    return files


def list_tree(tree: Path, classes: list[str], table: TableBuilder) -> None:
    """Add every image under `tree/<class>/` to `table`, labelled by class; classes must be known ones."""
    for folder in class_dirs(tree):
        if folder.name not in classes:
            raise DataError(f"{folder}: class '{folder.name}' is not among the training classes {classes}")
        label = classes.index(folder.name)
        for file in image_files(folder):
            table.add([file], label)


@register("image_folder", task="classification", input="image", args=FolderArgs)
def image_folder(args: FolderArgs, seed: int) -> ImageData:
    """Your own labelled images: one sub-folder per class, PNG/JPEG/..., converted to `channels`, resized to `size`.

    Listed up front; held in memory, or streamed from the files or a decode cache (the `cache` option,
    models.data.files)."""
    root = require_dir(args.root)
    train_dir, test_dir = root / "train", root / "test"
    if train_dir.is_dir() != test_dir.is_dir():
        present, missing = (train_dir, test_dir) if train_dir.is_dir() else (test_dir, train_dir)
        raise DataError(f"{missing}: folder not found (found {present}; the split layout needs both)")
    decoder = ImageDecoder(args.channels, tuple(args.size) if args.size else None, args.fast_decode)
    with progress(f"listing {root}") as advance:
        table = TableBuilder(1, advance)
        if train_dir.is_dir():
            classes = [d.name for d in class_dirs(train_dir)]
            list_tree(train_dir, classes, table)
            n_train = len(table.paths)
            list_tree(test_dir, classes, table)
            items = table.table()
            train, test = np.arange(n_train), np.arange(n_train, len(items))
        else:
            classes = [d.name for d in class_dirs(root)]
            list_tree(root, classes, table)
            items = table.table()
            train, test = stratified_split(items.labels, args.test_fraction, seed)
    return open_files(items, decoder, args, root, train, test, Meta(classes), "image_folder")
