"""File datasets streamed or held in memory (models.data.files) and the decode cache (models.data.cache).

Small generated folders: the paths must give the same batches, fail on a bad file with its name (or skip it when
told), notice changed files and damaged caches, and shard ranks exactly as the in-memory path does.
"""
from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.data import DataError, ImageSplits, SegSplits, load_dataset
from models.data import files as files_module
from models.data.files import StreamedImages, StreamedSeg

from .formats import write_camvid, write_class_folders, write_png


def batches(samples, batch_size=8, seed=5, **kwargs):
    return list(samples.batches(batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed), **kwargs))


def assert_same(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert xa.dtype == xb.dtype == torch.uint8 and ya.dtype == yb.dtype == torch.int64
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "photos"
    write_class_folders(root, {"ant": 13, "bee": 9, "cat": 11}, hw=(10, 12))
    return root


def folder_data(root, **options):
    return load_dataset("image_folder", {"root": str(root), "size": [8, 8], **options}, seed=1)


def cache_folders(root: Path) -> list[Path]:
    return sorted(p for p in (root / ".specserve-cache").glob("image_folder-*") if p.is_dir())


# ------------------------------------------------------------------ one interface, same batches
@pytest.mark.parametrize("cache, workers", [("none", 0), ("none", 2), ("disk", 0), ("disk", 2)])
def test_streamed_and_in_memory_give_the_same_batches(folder, cache, workers):
    memory = folder_data(folder, cache="memory")
    assert isinstance(memory, ImageSplits)
    streamed = folder_data(folder, cache=cache, workers=workers)
    try:
        assert isinstance(streamed, StreamedImages) and streamed.labels == memory.labels
        assert len(streamed.train) == len(memory.train) and len(streamed.test) == len(memory.test)
        assert streamed.train.sample_shape == memory.train.sample_shape == (3, 8, 8)
        for epoch in range(2):  # the same generator seed, epoch after epoch (one set of workers serves both)
            assert_same(batches(streamed.train, seed=epoch), batches(memory.train, seed=epoch))
        assert_same(list(streamed.test.batches(4)), list(memory.test.batches(4)))  # evaluation: in order
        for a, b in zip(streamed.train.take([3, 0, 7]), memory.train.take([3, 0, 7])):
            assert torch.equal(a, b)
        assert torch.equal(streamed.train.targets(), memory.train_y)
    finally:
        streamed.close()


@pytest.mark.parametrize("cache", ["none", "disk"])
def test_segmentation_streams_index_exact_masks(tmp_path, cache):
    write_camvid(tmp_path, {"train": 10, "val": 5}, hw=(12, 16))
    options = {"root": str(tmp_path), "size": [5, 7]}
    memory = load_dataset("camvid", {**options, "cache": "memory"})
    assert isinstance(memory, SegSplits)
    streamed = load_dataset("camvid", {**options, "cache": cache, "workers": 1})
    try:
        assert isinstance(streamed, StreamedSeg) and streamed.ignore_index == 11 and streamed.colors == memory.colors
        assert_same(batches(streamed.train, 4), batches(memory.train, 4))
        assert_same(list(streamed.test.batches(2)), list(memory.test.batches(2)))
        assert torch.equal(streamed.train.class_counts(11, 11), memory.train.class_counts(11, 11))
        x, y = streamed.test.take(range(2))
        assert y.shape == (2, 5, 7) and set(y.unique().tolist()) <= set(range(12))  # nearest: never a blend
    finally:
        streamed.close()


def test_tasks_read_both_paths_alike(folder):
    """The trainer's view: steps, training batches, evaluation and parity samples are the same on both paths."""
    from models.build import build
    from models.spec.load import load_spec_text
    from models.train.tasks import make_task

    spec = load_spec_text("""
name: t
task: classification
input: {channels: 3, size: [8, 8], mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}
network: [flatten, linear: {out: 3}]
data: {dataset: image_folder, root: photos, batch_size: 4}
""", "t.yaml")
    memory = make_task(spec, folder_data(folder, cache="memory"), torch.device("cpu"))
    streamed = make_task(spec, folder_data(folder, cache="none", workers=1), torch.device("cpu"))
    net = build(spec, seed=0)
    assert streamed.steps_per_epoch(2) == memory.steps_per_epoch(2)
    g = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    assert_same(list(streamed.train_batches(g(), 1, 2)), list(memory.train_batches(g(), 1, 2)))
    assert streamed.evaluate(net) == memory.evaluate(net)
    a, b = streamed.parity_inputs(40), memory.parity_inputs(40)  # more than the test split: cycles into train
    assert np.array_equal(a["inputs"], b["inputs"]) and np.array_equal(a["labels"], b["labels"])
    streamed.close()


# ------------------------------------------------------------------ choosing the path
def test_auto_holds_small_sets_in_memory_and_streams_large_ones(folder, monkeypatch, capfd):
    assert isinstance(folder_data(folder), ImageSplits)  # 33 small images: far under the 2 GiB threshold
    monkeypatch.setattr(files_module, "MEMORY_LIMIT", 1000)
    large = folder_data(folder, workers=0)
    assert isinstance(large, StreamedImages) and large.how.startswith("disk cache ")
    assert Path(large.how.removeprefix("disk cache ")).parent == folder / ".specserve-cache"
    blocked = folder.parent / "not-a-folder"
    blocked.write_text("a file where the cache folder should be")
    nowhere = folder_data(folder, workers=0, cache_dir=str(blocked))
    assert isinstance(nowhere, StreamedImages) and nowhere.how == "files"
    assert "decoding from the files every epoch" in capfd.readouterr().err
    with pytest.raises(DataError, match="no folder for the decode cache"):
        folder_data(folder, workers=0, cache="disk", cache_dir=str(blocked))


def test_cache_dir_option_and_environment(folder, tmp_path, monkeypatch):
    data = folder_data(folder, cache="disk", workers=0, cache_dir=str(tmp_path / "mine"))
    assert str(tmp_path / "mine") in data.how
    monkeypatch.setenv("SPECSERVE_CACHE_DIR", str(tmp_path / "machine"))
    data = folder_data(folder, cache="disk", workers=0, cache_dir=str(tmp_path / "mine"))
    assert str(tmp_path / "machine") in data.how  # the machine's folder wins over the spec's


def test_new_options_are_validated():
    import pydantic

    for bad in ({"cache": "ram"}, {"workers": -1}, {"prefetch": 0}, {"skip_bad_files": "sometimes"}):
        with pytest.raises(pydantic.ValidationError):
            load_dataset("image_folder", {"root": ".", **bad})


# ------------------------------------------------------------------ bad files
def corrupt(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:60])  # a truncated PNG: the header reads, the pixels don't


def test_corrupt_file_mid_epoch_names_the_file(folder):
    streamed = folder_data(folder, cache="none", workers=1)
    corrupt(folder / "bee" / "4.png")  # after listing: found while streaming
    with pytest.raises(DataError, match=r"bee/4\.png: "):
        for _ in batches(streamed.train, 4) + list(streamed.test.batches(4)):
            pass
    streamed.close()


def test_skip_bad_files_leaves_them_out_and_counts_them(folder):
    assert folder_data(folder, cache="memory").report() is None  # not asked to skip: nothing to report
    streamed = folder_data(folder, cache="none", workers=0, skip_bad_files=True)
    corrupt(folder / "bee" / "4.png")
    seen = sum(len(y) for _, y in batches(streamed.train, 4)) + sum(len(y) for _, y in streamed.test.batches(4))
    assert seen == 33 - 1
    assert streamed.report() == {"bad_files": [str(folder / "bee" / "4.png")]}
    memory = folder_data(folder, cache="memory", skip_bad_files=True)  # known at load on the in-memory path
    assert len(memory.train) + len(memory.test) == 32 and memory.report()["bad_files"] == [str(folder / "bee" / "4.png")]


def test_bad_file_while_building_the_cache(folder):
    corrupt(folder / "cat" / "2.png")
    with pytest.raises(DataError, match=r"cat/2\.png: "):
        folder_data(folder, cache="disk", workers=0)
    assert not cache_folders(folder)  # nothing half-built left behind
    skipping = folder_data(folder, cache="disk", workers=0, skip_bad_files=True)
    assert len(skipping.train) + len(skipping.test) == 32 and skipping.report()["bad_files"][0].endswith("cat/2.png")
    with pytest.raises(DataError, match=r"cat/2\.png: "):  # the cache remembers, for a run that doesn't skip
        folder_data(folder, cache="disk", workers=0)


def test_different_sizes_streamed(tmp_path):
    write_class_folders(tmp_path, {"a": 2}, hw=(10, 12))
    write_png(tmp_path / "b" / "big.png", np.zeros((11, 12, 3), np.uint8))
    streamed = load_dataset("image_folder", {"root": str(tmp_path), "cache": "none", "test_fraction": 0.0})
    with pytest.raises(DataError, match=r"b/big\.png: shape \(3, 11, 12\) differs from \(3, 10, 12\) of .*a/0\.png"):
        list(streamed.train.batches(2))


# ------------------------------------------------------------------ the decode cache
def test_second_run_decodes_nothing(folder, monkeypatch):
    first = folder_data(folder, cache="disk", workers=0)
    expected = batches(first.train)

    def no_decoding(*args, **kwargs):
        raise AssertionError("an image file was opened")

    monkeypatch.setattr(Image, "open", no_decoding)
    second = folder_data(folder, cache="disk", workers=0)  # a new run: lists the files, opens none
    assert_same(batches(second.train), expected)
    assert_same(batches(second.train), expected)  # and its second epoch


def test_a_changed_file_rebuilds_the_cache(folder):
    before = folder_data(folder, cache="disk", workers=0)
    old = cache_folders(folder)
    path = folder / "ant" / "0.png"
    write_png(path, np.full((10, 12, 3), 7, np.uint8))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))  # a new mtime, whatever the clock's resolution
    after = folder_data(folder, cache="disk", workers=0)
    assert cache_folders(folder) != old and len(cache_folders(folder)) == 1  # a new key; the stale cache removed
    assert before.how != after.how
    memory = folder_data(folder, cache="memory")
    assert_same(batches(after.train), batches(memory.train))  # the new pixels


def _only_cache(root: Path) -> Path:
    (path,) = cache_folders(root)
    return path


@pytest.mark.parametrize("damage", ["truncated shard", "bad header", "crc table", "index"])
def test_a_damaged_cache_is_rebuilt(folder, capfd, damage):
    folder_data(folder, cache="disk", workers=0)
    cache = _only_cache(folder)
    shard = cache / "shard-00000.bin"
    if damage == "truncated shard":
        shard.write_bytes(shard.read_bytes()[:-100])
    elif damage == "bad header":
        data = bytearray(shard.read_bytes())
        data[20] ^= 0xFF  # inside the key digest
        shard.write_bytes(bytes(data))
    elif damage == "crc table":
        crc = bytearray((cache / "crc.u32").read_bytes())
        crc[0] ^= 1
        (cache / "crc.u32").write_bytes(bytes(crc))
    else:
        (cache / "index.json").write_text("{not json")
    capfd.readouterr()
    again = folder_data(folder, cache="disk", workers=0)
    assert "rebuilding it" in capfd.readouterr().err
    assert_same(batches(again.train), batches(folder_data(folder, cache="memory").train))
    json.loads((_only_cache(folder) / "index.json").read_text())  # complete again


def test_a_corrupt_row_is_detected_and_repaired(folder):
    memory = folder_data(folder, cache="memory")
    folder_data(folder, cache="disk", workers=0)
    shard = _only_cache(folder) / "shard-00000.bin"
    data = bytearray(shard.read_bytes())
    data[128 + 5] ^= 0xFF  # one pixel of sample 0: sizes and headers still look fine
    shard.write_bytes(bytes(data))
    cached = folder_data(folder, cache="disk", workers=0)
    with pytest.warns(UserWarning, match="failed their checksum"):
        got = batches(cached.train) + list(cached.test.batches(8))
    assert_same(got, batches(memory.train) + list(memory.test.batches(8)))
    assert shard.read_bytes()[128 + 5] == data[128 + 5] ^ 0xFF  # rewritten with the decoded pixel


def test_cache_is_built_once_and_shared(folder):
    """Two openings (as two ranks would) use one folder; the lock file stays, no temporary folder does."""
    a = folder_data(folder, cache="disk", workers=0)
    b = folder_data(folder, cache="disk", workers=0)
    assert a.how == b.how
    names = [p.name for p in (folder / ".specserve-cache").iterdir()]
    assert not [n for n in names if ".tmp-" in n] and any(n.endswith("-lock") for n in names)


# ------------------------------------------------------------------ sharding
@pytest.mark.parametrize("cache", ["memory", "none", "disk"])
def test_rank_shards_cover_every_sample_once_per_epoch(tmp_path, cache):
    write_class_folders(tmp_path / "train", {"a": 20, "b": 20}, hw=(4, 4))
    write_class_folders(tmp_path / "test", {"a": 1, "b": 1}, hw=(4, 4))
    data = load_dataset("image_folder", {"root": str(tmp_path), "cache": cache, "workers": 0})
    train = data.train
    ids = {bytes(x.numpy()) for x, _ in [train.take([i]) for i in range(len(train))]}
    assert len(ids) == 40  # random pixels: a sample is known by its bytes
    for epoch in range(2):
        shards = []
        for rank in range(4):
            got = batches(train, 3, seed=epoch, rank=rank, world=4)
            shards.append([bytes(x[i].numpy()) for x, _ in got for i in range(len(x))])
        assert [len(s) for s in shards] == [10] * 4  # equal: ranks step in lockstep
        together = [s for shard in shards for s in shard]
        assert sorted(together) == sorted(ids)  # every sample exactly once
    if cache != "memory":
        data.close()


def test_rank_shards_when_the_world_does_not_divide(folder):
    streamed = folder_data(folder, cache="none", workers=0)
    train = streamed.train
    n = len(train)
    assert n % 4
    ids = [bytes(train.take([i])[0].numpy()) for i in range(n)]
    dropped = []
    for epoch in range(3):
        seen = [bytes(x[i].numpy()) for rank in range(4) for x, _ in batches(train, 5, seed=epoch, rank=rank, world=4)
                for i in range(len(x))]
        assert len(seen) == len(set(seen)) == n - n % 4  # disjoint, all but the < 4 past the cut
        dropped.append(frozenset(set(ids) - set(seen)))
    assert len(set(dropped)) > 1  # a different few wait for another epoch each time


# ------------------------------------------------------------------ progress
def test_progress_shows_count_and_rate():
    from rich.console import Console

    from models.data.progress import progress

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    with progress("decoding photos", total=50, enabled=True, console=console) as advance:
        for _ in range(50):
            advance(1)
            time.sleep(0.002)
    text = out.getvalue()
    assert "decoding photos" in text and "50/50" in text and "files/s" in text
    with progress("silent", enabled=False) as advance:  # not a terminal: nothing drawn
        advance(1)


# ------------------------------------------------------------------ decoding and pinning
def test_streamed_decoding_gives_read_images_pixels(tmp_path):
    from models.data.images import decode_file, read_image

    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (300, 280, 3), dtype=np.uint8)).save(tmp_path / "big.jpg", quality=90)
    Image.fromarray(rng.integers(0, 256, (20, 30, 4), dtype=np.uint8)).save(tmp_path / "rgba.png")
    Image.fromarray(rng.integers(0, 256, (20, 30), dtype=np.uint8)).save(tmp_path / "gray.png")
    for name in ("big.jpg", "rgba.png", "gray.png"):
        for channels in (1, 3):
            for size in (None, (12, 10), (128, 128)):
                for fast in (False, True):
                    want = read_image(tmp_path / name, channels, size, fast)  # (C, H, W)
                    got = torch.from_numpy(decode_file(tmp_path / name, channels, size, fast).transpose(2, 0, 1).copy())
                    assert torch.equal(got, want), (name, channels, size, fast)
    fast, exact = (read_image(tmp_path / "big.jpg", 3, (128, 128), f) for f in (True, False))
    assert fast.shape == exact.shape and not torch.equal(fast, exact)  # DCT scaling: close, not identical
    assert (fast.float() - exact.float()).abs().mean() < 20


def test_batches_are_pinned_for_cuda(folder, monkeypatch):
    """use_device(cuda) asks for page-locked batches: the DataLoader's pin thread calls Fetched.pin_memory."""
    from models.data.workers import Fetched

    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a, **k: pinned.append(self.shape) or self)
    streamed = folder_data(folder, cache="none", workers=0)
    streamed.use_device(torch.device("cuda", 0))
    assert streamed.pipeline.pin
    batches(streamed.train)
    assert (len(streamed.train) + 7) // 8 * 2 == len(pinned)  # x and y of every batch
    fetched = Fetched(np.arange(2), torch.zeros(2, 3), torch.zeros(2))
    assert fetched.pin_memory() is fetched
    streamed.use_device(torch.device("cpu"))
    assert not streamed.pipeline.pin


def test_leftovers_of_a_killed_build_are_removed(folder):
    import socket

    first = folder_data(folder, cache="disk", workers=0)
    cache = Path(first.how.removeprefix("disk cache "))
    dead = cache.with_name(f"{cache.name}.tmp-{socket.gethostname()}-999999999")  # no such process
    dead.mkdir()
    (dead / "shard-00000.bin").write_bytes(b"half")
    folder_data(folder, cache="disk", workers=0)
    assert not dead.exists() and cache.is_dir()
