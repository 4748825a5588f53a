"""digits (bundled with scikit-learn) and image_folder (PNG/JPEG class folders)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from models.data import DataError, load_dataset

from .formats import random_rgb, write_class_folders, write_png


def test_digits():
    splits = load_dataset("digits", {}, seed=0)
    assert splits.train_x.dtype == torch.uint8 and splits.train_x.shape[1:] == (1, 8, 8)
    assert len(splits.train_x) + len(splits.test_x) == 1797
    assert splits.train_x.max() == 255 and splits.train_x.min() == 0  # 0..16 rescaled to 0..255
    assert abs(len(splits.test_x) / 1797 - 0.2) < 0.01
    assert set(splits.test_y.tolist()) == set(range(10))  # stratified: every class in test
    again = load_dataset("digits", {"seed": 0})
    assert torch.equal(again.test_x, splits.test_x)


def test_split_layout(tmp_path):
    write_class_folders(tmp_path / "train", {"cat": 3, "dog": 2}, hw=(10, 12))
    write_class_folders(tmp_path / "test", {"cat": 1, "dog": 1}, hw=(10, 12))
    splits = load_dataset("image_folder", {"root": str(tmp_path)})
    assert splits.labels == ["cat", "dog"]
    assert splits.train_x.shape == (5, 3, 10, 12) and splits.train_y.tolist() == [0, 0, 0, 1, 1]
    assert splits.test_x.shape == (2, 3, 10, 12)


def test_channels_and_resize(tmp_path):
    write_class_folders(tmp_path, {"a": 4, "b": 4, "c": 4}, hw=(20, 30))
    splits = load_dataset("image_folder", {"root": str(tmp_path), "channels": 1, "size": [8, 6], "test_fraction": 0.25})
    assert splits.train_x.shape == (9, 1, 8, 6) and splits.test_x.shape == (3, 1, 8, 6)
    assert sorted(splits.test_y.tolist()) == [0, 1, 2]


def test_gray_and_rgba_files_convert(tmp_path):
    write_png(tmp_path / "a" / "gray.png", np.full((4, 4), 200, np.uint8))
    (tmp_path / "b").mkdir()
    Image.fromarray(np.full((4, 4, 4), 100, np.uint8)).save(tmp_path / "b" / "rgba.png")
    Image.fromarray(random_rgb(np.random.default_rng(0), 4, 4)).save(tmp_path / "b" / "photo.jpg")
    splits = load_dataset("image_folder", {"root": str(tmp_path), "test_fraction": 0.0})
    assert splits.train_x.shape == (3, 3, 4, 4)
    assert splits.train_x[0].unique().tolist() == [200]


def test_different_sizes_without_size_option(tmp_path):
    write_class_folders(tmp_path, {"a": 1}, hw=(10, 12))
    write_png(tmp_path / "b" / "big.png", np.zeros((11, 12, 3), np.uint8))
    with pytest.raises(DataError, match=r"b/big\.png: shape \(3, 11, 12\) differs.*set size"):
        load_dataset("image_folder", {"root": str(tmp_path)})


def test_no_classes(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path}: no class folders"):
        load_dataset("image_folder", {"root": str(tmp_path)})


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match=r"nope: folder not found"):
        load_dataset("image_folder", {"root": str(tmp_path / "nope")})


def test_empty_class_folder(tmp_path):
    write_class_folders(tmp_path, {"a": 2})
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"empty: empty class folder"):
        load_dataset("image_folder", {"root": str(tmp_path)})


def test_unreadable_image(tmp_path):
    write_class_folders(tmp_path, {"a": 2})
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match=r"a/broken\.png: "):
        load_dataset("image_folder", {"root": str(tmp_path)})


def test_truncated_image(tmp_path):
    write_class_folders(tmp_path, {"a": 1}, hw=(64, 64))
    path = tmp_path / "a" / "0.png"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match=r"a/0\.png: "):
        load_dataset("image_folder", {"root": str(tmp_path)})


def test_decompression_bomb(tmp_path, monkeypatch):
    write_class_folders(tmp_path, {"a": 1}, hw=(40, 40))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1600 px: PIL only warns between 1x and 2x
    with pytest.raises(DataError, match=r"a/0\.png: image too large.*decompression bomb"):
        load_dataset("image_folder", {"root": str(tmp_path)})
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # past 2x PIL raises
    with pytest.raises(DataError, match=r"a/0\.png: image too large"):
        load_dataset("image_folder", {"root": str(tmp_path)})


def test_split_layout_needs_both(tmp_path):
    write_class_folders(tmp_path / "train", {"a": 1})
    with pytest.raises(DataError, match=r"test: folder not found \(found .*train"):
        load_dataset("image_folder", {"root": str(tmp_path)})


def test_test_class_unknown_to_train(tmp_path):
    write_class_folders(tmp_path / "train", {"a": 1})
    write_class_folders(tmp_path / "test", {"a": 1, "zebra": 1})
    with pytest.raises(DataError, match=r"test/zebra: class 'zebra' is not among the training classes"):
        load_dataset("image_folder", {"root": str(tmp_path)})


def test_channels_validated():
    import pydantic

    with pytest.raises(pydantic.ValidationError):
        load_dataset("image_folder", {"root": ".", "channels": 2})
