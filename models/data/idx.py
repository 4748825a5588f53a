"""MNIST and Fashion-MNIST from their original IDX `.gz` files (optionally downloaded, checksum-pinned).

IDX: big-endian header `magic, count[, rows, cols]`, then uint8 payload; magic 2051 = images, 2049 = labels.
"""
from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import Field

from models.data.base import DataArgs, DataError, ImageSplits, reading, register, require_file
from models.data.download import fetch

IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
SPLIT_FILES = {  # split -> (images file, labels file): the 4 canonical names
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


@dataclass(frozen=True)
class IdxSource:
    """Where a dataset's 4 files come from and what their bytes must hash to."""

    title: str
    labels: tuple[str, ...]
    mirrors: tuple[str, ...]  # base URLs ending in "/"
    sha256: dict[str, str]  # file name -> sha256 of the .gz


# Checksums copied from /work/shared/data/{fashion-mnist,mnist}/SOURCE.md. The md5s in those tables
# (fashion: 8d4fb7e6..., 25c81989..., bef4ecab..., bb300cfd...; mnist: f68b3c2d..., d53e105e..., 9fb629c4...,
# ec29112d...) are the ones torchvision pins, so these sha256s name the very files torchvision downloads.
FASHION_MNIST = IdxSource(
    title="Fashion-MNIST",
    labels=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),  # torchvision's FashionMNIST.mirrors
    sha256={
        "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    },
)
MNIST = IdxSource(
    title="MNIST",
    labels=tuple(str(d) for d in range(10)),
    mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/",),  # torchvision's MNIST.mirrors[0]
    sha256={
        "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    },
)


class IdxArgs(DataArgs):
    root: Path
    download: bool = False
    mirror: str | None = None  # extra base URL tried first (an internal mirror, or file:///path/ for offline copies)
    # the first N training images only (quick runs of the big networks on a CPU); the test set stays whole
    max_train: int | None = Field(default=None, ge=1)


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Read one gzipped IDX file: uint8 array (count,) for labels or (count, rows, cols) for images."""
    with reading(path):
        with gzip.open(path, "rb") as f:
            raw = f.read()
    ndim = {IMAGES_MAGIC: 3, LABELS_MAGIC: 1}[magic]
    header = 4 * (1 + ndim)
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header})")
    found = struct.unpack(">I", raw[:4])[0]
    if found != magic:
        kind = "images" if magic == IMAGES_MAGIC else "labels"
        raise DataError(f"{path}: IDX magic number {found}, expected {magic} ({kind})")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    if ndim == 3 and (dims[1] == 0 or dims[2] == 0):
        raise DataError(f"{path}: image dimensions {dims[1]}x{dims[2]} must be positive")
    expected = int(np.prod(dims, dtype=np.int64))
    payload = len(raw) - header
    if payload != expected:
        what = "truncated" if payload < expected else "trailing bytes"
        shape = "x".join(map(str, dims))
        raise DataError(f"{path}: {what}: header says {shape} = {expected} bytes of data, file has {payload}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_split(root: Path, split: str, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One split as (uint8 (N, 1, H, W), int64 (N,)), with the image/label files checked against each other."""
    images_file, labels_file = (root / name for name in SPLIT_FILES[split])
    images = read_idx(images_file, IMAGES_MAGIC)  # (N, H, W)
    labels = read_idx(labels_file, LABELS_MAGIC)  # (N,)
    if len(images) != len(labels):
        raise DataError(
            f"{images_file} has {len(images)} images but {labels_file} has {len(labels)} labels"
        )
    if len(labels) and labels.max() >= num_classes:
        raise DataError(f"{labels_file}: label {labels.max()} out of range 0..{num_classes - 1}")
    x = torch.from_numpy(images.copy()).unsqueeze(1)  # (N, 1, H, W) uint8
    y = torch.from_numpy(labels.astype(np.int64))  # (N,)
    return x, y


def ensure_files(source: IdxSource, args: IdxArgs) -> None:
    """Download missing files when allowed; otherwise fail naming the first missing file."""
    for name in (n for pair in SPLIT_FILES.values() for n in pair):
        path = args.root / name
        if path.is_file():
            continue
        if not args.download:
            require_file(path, f" (the {source.title} files; set download: true to fetch them)")
        mirrors = ((args.mirror.rstrip("/") + "/",) if args.mirror else ()) + source.mirrors
        fetch([m + name for m in mirrors], path, source.sha256[name])


def load_idx(source: IdxSource, args: IdxArgs) -> ImageSplits:
    ensure_files(source, args)
    train_x, train_y = read_split(args.root, "train", len(source.labels))
    test_x, test_y = read_split(args.root, "test", len(source.labels))
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DataError(
            f"{args.root}: train images are {tuple(train_x.shape[2:])} but test images {tuple(test_x.shape[2:])}"
        )
    if args.max_train is not None:
        train_x, train_y = train_x[: args.max_train], train_y[: args.max_train]  # (n, 1, 28, 28), (n,)
    return ImageSplits(train_x, train_y, test_x, test_y, list(source.labels))


@register("fashion_mnist", task="classification", input="image", args=IdxArgs)
def fashion_mnist(args: IdxArgs, seed: int) -> ImageSplits:
    """Zalando's Fashion-MNIST: 60k/10k 28x28 grayscale clothing images, 10 classes."""
    return load_idx(FASHION_MNIST, args)


@register("mnist", task="classification", input="image", args=IdxArgs)
def mnist(args: IdxArgs, seed: int) -> ImageSplits:
    """LeCun's MNIST: 60k/10k 28x28 grayscale handwritten digits."""
    return load_idx(MNIST, args)
