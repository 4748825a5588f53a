"""Augmentation: shapes, mask values preserved by geometric ops, exact flips, colour ops leave masks alone, seeds."""
from __future__ import annotations

import pydantic
import pytest
import torch

from models.data import AUGMENTATIONS, build_augment, normalize, resize_batch, to_float
from models.data.augment import hsv_to_rgb, rgb_to_hsv
from models.registry import UnknownName

GEOMETRIC = [
    ("resize", {"size": [12, 20]}),
    ("random_resized_crop", {}),
    ("random_resized_crop", {"scale": [0.5, 0.5], "ratio": [3.0, 3.0]}),  # can't fit often: the fallback path
    ("random_crop", {"size": [14, 14], "padding": 3, "padding_mode": "reflect"}),
    ("random_crop", {"size": [16, 18], "padding": 2, "padding_mode": "replicate"}),
    ("random_crop", {"size": [10, 10]}),
    ("hflip", {}),
    ("vflip", {"p": 1.0}),
]


def batch(b=6, c=3, h=16, w=18, classes=(0, 3, 7), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, c, h, w, generator=g)
    values = torch.tensor(classes)
    mask = values[torch.randint(len(classes), (b, h, w), generator=g)]
    return x, mask


def test_all_ops_registered_with_strict_args():
    expected = {"resize", "random_resized_crop", "random_crop", "hflip", "vflip", "color_jitter"}
    assert set(AUGMENTATIONS.names()) >= expected
    for name in AUGMENTATIONS.names():
        assert AUGMENTATIONS.get(name).args.model_config.get("extra") == "forbid"


@pytest.mark.parametrize("name,opts", GEOMETRIC)
def test_geometric_ops_keep_mask_values_and_shapes(name, opts):
    x, mask = batch()
    out_x, out_mask = build_augment([(name, opts)])(x, mask, torch.Generator().manual_seed(1))
    expected = tuple(opts["size"]) if "size" in opts else (16, 18)
    assert out_x.shape == (6, 3, *expected) and out_mask.shape == (6, *expected)
    assert out_mask.dtype == torch.int64 and out_x.dtype == torch.float32
    assert set(out_mask.unique().tolist()) <= {0, 3, 7}
    assert out_x.min() >= 0 and out_x.max() <= 1


def test_image_and_mask_move_together():
    """Encode each pixel's position in both image and mask; after any geometric op they must still agree."""
    b, h, w = 4, 16, 18
    ids = torch.arange(h * w).view(1, h, w).expand(b, h, w)  # (B, H, W) position id
    x = (ids.float() / (h * w)).unsqueeze(1)  # (B, 1, H, W)
    for name, opts in [("hflip", {"p": 0.5}), ("vflip", {"p": 0.5}), ("random_crop", {"size": [9, 11]}),
                       ("random_crop", {"size": [16, 18], "padding": 2, "padding_mode": "reflect"})]:
        out_x, out_mask = build_augment([(name, opts)])(x, ids.clone(), torch.Generator().manual_seed(3))
        assert torch.allclose(out_x[:, 0] * (h * w), out_mask.float(), atol=1e-3), name
    out_x, out_mask = build_augment([("random_resized_crop", {"scale": [0.3, 0.6]})])(
        x, ids.clone(), torch.Generator().manual_seed(3))
    # bilinear image vs nearest mask: positions agree to within one pixel
    err = (out_x[:, 0] * (h * w) - out_mask.float()).abs()
    assert (err <= w + 1.5).float().mean() > 0.99


def test_flips_are_exact():
    x, mask = batch()
    fx, fm = build_augment([("hflip", {"p": 1.0})])(x, mask)
    assert torch.equal(fx, x.flip(-1)) and torch.equal(fm, mask.flip(-1))
    vx, vm = build_augment([("vflip", {"p": 1.0})])(x, mask)
    assert torch.equal(vx, x.flip(-2)) and torch.equal(vm, mask.flip(-2))
    same_x, same_m = build_augment([("hflip", {"p": 0.0})])(x, mask)
    assert torch.equal(same_x, x) and torch.equal(same_m, mask)
    px, _ = build_augment([("hflip", {"p": 0.5})])(x, None, torch.Generator().manual_seed(0))
    flipped = [torch.equal(px[i], x[i].flip(-1)) for i in range(6)]
    assert all(f or torch.equal(px[i], x[i]) for i, f in enumerate(flipped)) and 0 < sum(flipped) < 6


def test_random_crop_constant_padding_fills():
    x, mask = batch(classes=(1, 2))
    aug = build_augment([("random_crop", {"size": [16, 18], "padding": 4, "fill": 0.5, "mask_fill": 255})])
    out_x, out_mask = aug(x, mask, torch.Generator().manual_seed(0))
    assert set(out_mask.unique().tolist()) <= {1, 2, 255}
    assert torch.equal(out_mask == 255, (out_x == 0.5).all(dim=1))  # padded exactly where the image is padded


def test_random_crop_without_padding_is_a_window():
    x, mask = batch()
    out_x, out_mask = build_augment([("random_crop", {"size": [5, 7]})])(x, mask, torch.Generator().manual_seed(2))
    for i in range(len(x)):
        hits = [(t, l) for t in range(12) for l in range(12) if torch.equal(x[i, :, t : t + 5, l : l + 7], out_x[i])]
        assert len(hits) == 1
        t, l = hits[0]
        assert torch.equal(mask[i, t : t + 5, l : l + 7], out_mask[i])


def test_color_jitter_touches_only_the_image():
    x, mask = batch()
    aug = build_augment([("color_jitter", {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1})])
    out_x, out_mask = aug(x, mask, torch.Generator().manual_seed(0))
    assert torch.equal(out_mask, mask) and out_x.shape == x.shape
    assert not torch.allclose(out_x, x) and out_x.min() >= 0 and out_x.max() <= 1
    gray = torch.rand(2, 1, 8, 8)
    g_out, _ = aug(gray, None, torch.Generator().manual_seed(0))
    assert g_out.shape == gray.shape


def test_hsv_round_trip_and_hue_shift():
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(hsv_to_rgb(rgb_to_hsv(x)), x, atol=1e-5)
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    hsv = rgb_to_hsv(red)
    assert torch.allclose(hsv.flatten(), torch.tensor([0.0, 1.0, 1.0]))
    green = hsv_to_rgb(torch.tensor([1 / 3, 1.0, 1.0]).view(1, 3, 1, 1))
    assert torch.allclose(green.flatten(), torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)
    gray = torch.full((1, 3, 2, 2), 0.4)
    assert torch.allclose(hsv_to_rgb(rgb_to_hsv(gray)), gray)


def test_seeded_determinism():
    x, mask = batch()
    aug = build_augment([("random_resized_crop", {}), ("hflip", {}), ("random_crop", {"size": [16, 18], "padding": 2}),
                         ("color_jitter", {"brightness": 0.3, "hue": 0.2})])
    a = aug(x, mask, torch.Generator().manual_seed(7))
    b = aug(x, mask, torch.Generator().manual_seed(7))
    c = aug(x, mask, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_build_errors():
    with pytest.raises(UnknownName, match="did you mean hflip"):
        build_augment([("hflipp", {})])
    with pytest.raises(pydantic.ValidationError):
        build_augment([("hflip", {"p": 2})])
    with pytest.raises(pydantic.ValidationError):
        build_augment([("random_resized_crop", {"scale": [0.9, 0.1]})])
    with pytest.raises(pydantic.ValidationError):
        build_augment([("color_jitter", {"hue": 0.7})])
    with pytest.raises(ValueError, match="float batch"):
        build_augment([("hflip", {})])(torch.zeros(2, 3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="mask must be int64"):
        build_augment([("hflip", {})])(torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 5, dtype=torch.int64))


def test_conversions():
    u8 = torch.tensor([[[[0, 255], [51, 102]]]], dtype=torch.uint8)
    f = to_float(u8)
    assert f.dtype == torch.float32 and f.flatten().tolist() == pytest.approx([0, 1, 0.2, 0.4])
    n = normalize(torch.ones(2, 3, 2, 2), [0.5, 0.5, 0.5], [0.25, 0.5, 1.0])
    assert n[0, :, 0, 0].tolist() == [2.0, 1.0, 0.5]
    big = torch.rand(2, 3, 32, 32)
    small = resize_batch(big, [8, 8])
    assert small.shape == (2, 3, 8, 8)
    assert torch.allclose(small.mean(), big.mean(), atol=0.02)  # antialiased: an average, not a subsample
    assert resize_batch(torch.full((1, 1, 4, 4), 200, dtype=torch.uint8), [2, 2]).unique().tolist() == [200]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_runs_on_gpu_like_on_cpu():
    x, mask = batch()
    aug = build_augment([("random_resized_crop", {}), ("hflip", {}), ("color_jitter", {"brightness": 0.3, "hue": 0.1})])
    cpu = aug(x, mask, torch.Generator().manual_seed(0))
    gpu = aug(x.cuda(), mask.cuda(), torch.Generator().manual_seed(0))
    assert gpu[0].is_cuda and torch.allclose(gpu[0].cpu(), cpu[0], atol=1e-4)
    assert torch.equal(gpu[1].cpu(), cpu[1])
