"""Writers of small files in the real on-disk formats, for reader tests (IDX gz, PNG folders, CamVid, VOC, CSV)."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from models.data.segmentation import voc_colormap

SHARED_DATA = Path(__file__).parents[2].parent / "shared" / "data"


def shared(sub: str) -> Path:
    """A folder of the offline real datasets, or skip the test when it is absent (CI without ../shared)."""
    import pytest

    path = SHARED_DATA / sub
    if not path.is_dir():
        pytest.skip(f"{path} not present")
    return path


def idx_bytes(magic: int, array: np.ndarray) -> bytes:
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def write_gz(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as f:
        f.write(data)
    return path


def write_idx_dataset(root: Path, n_train: int = 12, n_test: int = 5, hw: tuple[int, int] = (28, 28), seed: int = 0):
    """The 4 canonical MNIST-style files; returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, *hw), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        write_gz(root / f"{split}-images-idx3-ubyte.gz", idx_bytes(2051, images))
        write_gz(root / f"{split}-labels-idx1-ubyte.gz", idx_bytes(2049, labels))
        arrays[split] = (images, labels)
    return arrays


def write_png(path: Path, array: np.ndarray, palette: list[int] | None = None) -> Path:
    """(H, W) or (H, W, 3) uint8 as PNG; with `palette` a mode-P PNG whose indices are the array values."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array.astype(np.uint8))
    if palette is not None:
        img.putpalette(palette)
    img.save(path)
    return path


def random_rgb(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def write_class_folders(root: Path, counts: dict[str, int], hw: tuple[int, int] = (10, 12), seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            write_png(root / cls / f"{i}.png", random_rgb(rng, *hw))


def write_camvid(root: Path, counts: dict[str, int], hw: tuple[int, int] = (12, 16), seed: int = 0) -> None:
    """SegNet layout: <split>/<name>.png RGB, <split>annot/<name>.png L-mode class ids 0..11, <split>.txt lists."""
    rng = np.random.default_rng(seed)
    for split, n in counts.items():
        lines = []
        for i in range(n):
            name = f"seq_{i:05d}.png"
            write_png(root / split / name, random_rgb(rng, *hw))
            write_png(root / f"{split}annot" / name, rng.integers(0, 12, size=hw, dtype=np.uint8))
            lines.append(f"{split}/{name} {split}annot/{name}")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")


def write_voc(root: Path, counts: dict[str, int], hw: tuple[int, int] = (12, 16), seed: int = 0) -> None:
    """VOC2012 layout: JPEGImages/*.jpg, SegmentationClass/*.png (mode P, 255 = border), ImageSets lists."""
    rng = np.random.default_rng(seed)
    palette = [c for rgb in voc_colormap() for c in rgb]
    (root / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    for split, n in counts.items():
        ids = []
        for i in range(n):
            image_id = f"2007_{split}_{i:04d}"
            Image.fromarray(random_rgb(rng, *hw)).save(root / "JPEGImages" / f"{image_id}.jpg")
            mask = rng.integers(0, 21, size=hw, dtype=np.uint8)
            mask[0, :] = 255  # an object border
            write_png(root / "SegmentationClass" / f"{image_id}.png", mask, palette)
            ids.append(image_id)
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
