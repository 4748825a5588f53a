"""shapes (generated), CamVid (SegNet layout) and VOC (palette masks) on generated files."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.data import DataError, load_dataset

from .formats import random_rgb, shared, write_camvid, write_png, write_voc


# --- shapes --------------------------------------------------------------------------------------------------------


def test_shapes_contract_and_determinism():
    opts = {"size": [32, 40], "train_count": 20, "test_count": 6}
    a = load_dataset("shapes", opts, seed=5)
    assert a.train_x.shape == (20, 3, 32, 40) and a.train_x.dtype == torch.uint8
    assert a.train_y.shape == (20, 32, 40) and a.train_y.dtype == torch.int64
    assert a.test_x.shape == (6, 3, 32, 40)
    assert a.labels == ["background", "circle", "square", "triangle"] and len(a.colors) == 4
    assert a.ignore_index is None
    assert set(a.train_y.unique().tolist()) == {0, 1, 2, 3}
    b = load_dataset("shapes", opts, seed=5)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert not torch.equal(a.train_x, load_dataset("shapes", opts, seed=6).train_x)
    assert not torch.equal(a.train_x[:6], a.test_x)  # test is not a copy of train


def test_shapes_colour_does_not_give_the_class_away():
    """Shape pixels differ from the background around them, but colour alone can't tell circle from square."""
    s = load_dataset("shapes", {"train_count": 200, "test_count": 1})
    x = s.train_x.permute(0, 2, 3, 1).reshape(-1, 3).float()
    y = s.train_y.reshape(-1)
    means = torch.stack([x[y == c].mean(0) for c in (1, 2, 3)])  # (3 classes, RGB)
    assert (means.max(0).values - means.min(0).values).max() < 25


# --- CamVid ----------------------------------------------------------------------------------------------------------


def test_camvid_reads_pairs(tmp_path):
    write_camvid(tmp_path, {"train": 3, "val": 2, "test": 1}, hw=(12, 16))
    s = load_dataset("camvid", {"root": str(tmp_path)})
    assert s.train_x.shape == (3, 3, 12, 16) and s.train_y.shape == (3, 12, 16) and s.test_x.shape == (2, 3, 12, 16)
    assert s.ignore_index == 11 and len(s.labels) == 11 and s.labels[0] == "Sky" and s.colors[4] == (60, 40, 222)
    assert int(s.train_y.max()) <= 11
    both = load_dataset("camvid", {"root": str(tmp_path), "train_split": ["train", "val"], "test_split": "test"})
    assert both.train_x.shape[0] == 5 and both.test_x.shape[0] == 1


def test_camvid_resize_keeps_classes(tmp_path):
    write_camvid(tmp_path, {"train": 2, "val": 1}, hw=(12, 16))
    native = load_dataset("camvid", {"root": str(tmp_path)})
    small = load_dataset("camvid", {"root": str(tmp_path), "size": [5, 7]})
    assert small.train_x.shape == (2, 3, 5, 7) and small.train_y.shape == (2, 5, 7)
    for n in range(2):  # nearest: every value of the resized mask is one of the original mask's values
        assert set(small.train_y[n].unique().tolist()) <= set(native.train_y[n].unique().tolist())


def test_camvid_mask_size_mismatch(tmp_path):
    write_camvid(tmp_path, {"train": 2, "val": 1}, hw=(12, 16))
    write_png(tmp_path / "trainannot" / "seq_00001.png", np.zeros((10, 16), np.uint8))
    with pytest.raises(DataError, match=r"trainannot/seq_00001\.png: mask 10x16 but image 12x16"):
        load_dataset("camvid", {"root": str(tmp_path)})


def test_camvid_class_out_of_range(tmp_path):
    write_camvid(tmp_path, {"train": 2, "val": 1}, hw=(12, 16))
    mask = np.zeros((12, 16), np.uint8)
    mask[3, 4] = 200
    write_png(tmp_path / "valannot" / "seq_00000.png", mask)
    expected = r"valannot/seq_00000\.png: class index 200 out of range \(valid: 0\.\.10 or 11"
    with pytest.raises(DataError, match=expected):
        load_dataset("camvid", {"root": str(tmp_path)})


def test_camvid_colour_mask_rejected(tmp_path):
    write_camvid(tmp_path, {"train": 1, "val": 1}, hw=(12, 16))
    write_png(tmp_path / "trainannot" / "seq_00000.png", random_rgb(np.random.default_rng(0), 12, 16))
    with pytest.raises(DataError, match=r"trainannot/seq_00000\.png: mask mode RGB"):
        load_dataset("camvid", {"root": str(tmp_path)})


def test_camvid_missing_list_and_file(tmp_path):
    with pytest.raises(DataError, match=r"train\.txt: file not found"):
        load_dataset("camvid", {"root": str(tmp_path)})
    write_camvid(tmp_path, {"train": 2, "val": 1}, hw=(12, 16))
    (tmp_path / "train" / "seq_00001.png").unlink()
    with pytest.raises(DataError, match=r"train/seq_00001\.png: file not found \(listed in .*train\.txt:2\)"):
        load_dataset("camvid", {"root": str(tmp_path)})


def test_camvid_bad_list_line(tmp_path):
    write_camvid(tmp_path, {"train": 1, "val": 1}, hw=(12, 16))
    (tmp_path / "val.txt").write_text("val/seq_00000.png\n")
    with pytest.raises(DataError, match=r"val\.txt:1: expected '<image> <mask>'"):
        load_dataset("camvid", {"root": str(tmp_path)})


def test_camvid_upstream_absolute_lists(tmp_path):
    write_camvid(tmp_path, {"train": 2, "val": 1}, hw=(12, 16))
    (tmp_path / "up.txt").write_text(
        "/SegNet/CamVid/train/seq_00000.png /SegNet/CamVid/trainannot/seq_00000.png\n"
    )
    s = load_dataset("camvid", {"root": str(tmp_path), "train_split": "up"})
    assert s.train_x.shape[0] == 1


def test_real_camvid():
    root = shared("camvid")
    s = load_dataset("camvid", {"root": str(root), "size": [90, 120], "train_split": "val", "test_split": "val"})
    assert s.train_x.shape == (34, 3, 90, 120) and s.train_y.shape == (34, 90, 120)
    assert s.train_y.min() >= 0 and s.train_y.max() <= 11
    share = torch.bincount(s.train_y.reshape(-1), minlength=12).float() / s.train_y.numel()
    assert abs(share[3].item() - 0.290) < 0.02  # road share of val in SOURCE.md
    assert s.train_y.unique().numel() >= 10


# --- VOC -------------------------------------------------------------------------------------------------------------


def test_voc_palette_masks(tmp_path):
    write_voc(tmp_path, {"train": 3, "val": 2}, hw=(12, 16))
    s = load_dataset("voc", {"root": str(tmp_path)})
    assert s.train_x.shape == (3, 3, 12, 16) and s.train_y.shape == (3, 12, 16) and s.test_x.shape[0] == 2
    assert len(s.labels) == 21 and s.labels[15] == "person" and s.ignore_index == 255
    assert s.colors[1] == (128, 0, 0) and s.colors[15] == (192, 128, 128)
    assert (s.train_y[:, 0] == 255).all()  # palette indices, not colours
    assert int(s.train_y[:, 1:].max()) <= 20


def test_voc_resize_nearest(tmp_path):
    write_voc(tmp_path, {"train": 2, "val": 1}, hw=(12, 16))
    s = load_dataset("voc", {"root": str(tmp_path), "size": [6, 8]})
    assert s.train_y.shape == (2, 6, 8)
    values = set(s.train_y.unique().tolist())
    assert values <= set(range(21)) | {255}


def test_voc_bad_mask_value(tmp_path):
    write_voc(tmp_path, {"train": 1, "val": 1}, hw=(12, 16))
    from models.data.segmentation import voc_colormap

    mask = np.full((12, 16), 21, np.uint8)
    write_png(tmp_path / "SegmentationClass" / "2007_train_0000.png", mask, [c for rgb in voc_colormap() for c in rgb])
    with pytest.raises(DataError, match=r"2007_train_0000\.png: class index 21 out of range"):
        load_dataset("voc", {"root": str(tmp_path)})


def test_voc_sizes_differ_without_size(tmp_path):
    write_voc(tmp_path, {"train": 2, "val": 1}, hw=(12, 16))
    write_voc(tmp_path / "other", {"train": 1}, hw=(10, 16))
    for sub in ("JPEGImages/2007_train_0001.jpg", "SegmentationClass/2007_train_0001.png"):
        (tmp_path / sub).write_bytes((tmp_path / "other" / sub.replace("0001", "0000")).read_bytes())
    with pytest.raises(DataError, match=r"2007_train_0001\.jpg: shape \(3, 10, 16\) differs.*set size"):
        load_dataset("voc", {"root": str(tmp_path)})


def test_voc_missing_image(tmp_path):
    write_voc(tmp_path, {"train": 1, "val": 1}, hw=(12, 16))
    (tmp_path / "JPEGImages" / "2007_val_0000.jpg").unlink()
    with pytest.raises(DataError, match=r"JPEGImages/2007_val_0000\.jpg: file not found"):
        load_dataset("voc", {"root": str(tmp_path)})
