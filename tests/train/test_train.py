"""The trainer on every task, resume after SIGKILL, torchrun with two processes, fine-tuning, bad runs."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from models.train.checkpoint import CheckpointError, load_checkpoint
from models.errors import SpecError
from models.spec.load import load_spec, load_spec_text
from models.train.loop import TrainError, TrainOptions, evaluate_run, train
from tests.conftest import ROOT

TINY_DIGITS = """
name: tiny-digits
task: classification
input: {channels: 1, size: [8, 8], mean: [0.3], std: [0.38]}
network:
  - conv2d: {out: 8, kernel: 3, padding: 1}
  - relu
  - dropout: {p: 0.2}
  - flatten
  - linear: {out: 32, name: features}
  - relu
  - linear: {out: 10}
data: {dataset: digits, batch_size: 16}
train: {epochs: EPOCHS, optimizer: {sgd: {lr: 0.05, momentum: 0.9}}, seed: 3}
"""


def write_spec(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def specserve(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "models.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, **kwargs)


# ------------------------------------------------------------------ each task trains (loss goes down)
TASK_SPECS = {
    "classification": TINY_DIGITS.replace("EPOCHS", "2"),
    "segmentation": """
name: tiny-seg
task: segmentation
input: {channels: 3, size: [32, 32], mean: [0.5, 0.5, 0.5], std: [0.3, 0.3, 0.3]}
network:
  - conv2d: {out: 16, kernel: 3, padding: 1}
  - batchnorm2d
  - relu
  - conv2d: {out: 32, kernel: 3, padding: 1, stride: 2}
  - batchnorm2d
  - relu
  - conv2d: {out: 4, kernel: 1}
  - conv_transpose2d: {out: 4, kernel: 4, stride: 2, padding: 1, init: bilinear}
data: {dataset: shapes, size: [32, 32], train_count: 256, test_count: 32, batch_size: 16, augment: [hflip, vflip]}
train: {epochs: 4, optimizer: {adam: {lr: 0.01}}}
""",
    "text": """
name: tiny-text
task: sequence
input: {vocab: 28, steps: 16}
network: [one_hot, gru: {hidden: 32}, linear: {out: 28}]
data: {dataset: embedded_text, batch_size: 32}
train: {epochs: 2, optimizer: {adam: {lr: 0.01}}, clip_grad_norm: 1.0}
""",
    "series": """
name: tiny-series
task: sequence
input: {window: 4}
network: [reshape: {shape: [4, 1]}, lstm: {hidden: 8, output: last}, linear: {out: 1}]
data: {dataset: sine, batch_size: 16}
train: {epochs: 3, optimizer: {adam: {lr: 0.01}}}
""",
    "regression": """
name: tiny-regression
task: regression
input: {features: 2}
network: [linear: {out: 1}]
data: {dataset: linear_synthetic, batch_size: 10}
train: {epochs: 2, optimizer: {sgd: {lr: 0.03}}}
""",
}


TASK_SPECS["text_classification"] = """
name: tiny-text-classifier
task: classification
input: {vocab: 96, steps: 12}
network: [embedding: {dim: 16}, transformer_encoder: {heads: 2, ff: 32}, permute: {dims: [1, 0]}, global_avgpool,
          linear: {out: 3}]
data: {dataset: synthetic_reviews, train_count: 320, test_count: 64, batch_size: 16}
train: {epochs: 2, optimizer: {adam: {lr: 0.01}}}
"""
TASK_SPECS["segmentation_balanced"] = TASK_SPECS["segmentation"].replace(
    "name: tiny-seg", "name: tiny-seg-balanced").replace("lr: 0.01}}}", "lr: 0.01}}, class_weights: median_frequency}")


@pytest.mark.parametrize("kind", sorted(TASK_SPECS))
def test_each_task_trains(kind, tmp_path):
    spec = load_spec(write_spec(tmp_path, TASK_SPECS[kind]))
    result = train(spec, TrainOptions(out=tmp_path / "run", quiet=True, max_steps=40))
    losses = [h["train"]["loss"] for h in result.history]
    assert losses[-1] < losses[0], losses
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert len(metrics["history"]) == spec.train.epochs
    assert (tmp_path / "run" / "curves.png").stat().st_size > 1000
    assert load_checkpoint(tmp_path / "run" / "checkpoints", "best").pointer["epoch"] >= 1
    assert metrics["hardware"].startswith("CPU: ")  # every figure names what it was measured on
    assert metrics["complete"] is True
    final = result.final
    if kind.startswith("segmentation"):
        assert final["mean_iou"] > final["baseline_mean_iou"]
        assert (tmp_path / "run" / "predictions.png").stat().st_size > 1000
    if kind == "series":
        assert {"rmse", "mae", "naive_rmse", "rmse_4_step"} <= set(final)
    if kind == "text":
        assert final["perplexity"] < 28  # better than uniform over the vocabulary
    if kind == "text_classification":
        assert final["accuracy"] > final["baseline_accuracy"]  # better than always the most frequent class


def test_median_frequency_class_weights():
    from models.train.tasks import class_weights

    masks = torch.tensor([0] * 80 + [1] * 10 + [2] * 10 + [11] * 5)  # class 3 absent, 11 = void
    weights = class_weights(masks, 4, 11, "median_frequency", "cpu")
    assert torch.allclose(weights, torch.tensor([0.125, 1.0, 1.0, 0.0]))  # median 0.1 / frequencies 0.8, 0.1, 0.1
    assert class_weights(masks, 4, 11, "none", "cpu") is None


def test_digits_reaches_097(tmp_path):
    spec = load_spec(ROOT / "specs" / "digits_cnn.yaml")
    result = train(spec, TrainOptions(out=tmp_path / "run", quiet=True))
    assert result.final["accuracy"] >= 0.97


# ------------------------------------------------------------------ checkpoints and resume
def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoints", "last", with_state=False).weights


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path):
    spec_path = write_spec(tmp_path, TINY_DIGITS.replace("EPOCHS", "4").replace("batch_size: 16", "batch_size: 4"))
    reference = tmp_path / "reference"
    assert specserve("train", str(spec_path), "--out", str(reference), "--quiet").returncode == 0

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "models.cli", "train", str(spec_path), "--out", str(killed), "--quiet"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pointer = killed / "checkpoints" / "last.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if pointer.exists() and json.loads(pointer.read_text() or "{}").get("epoch", 0) >= 2:
            break
        time.sleep(0.05)
    time.sleep(0.3)  # well into epoch 3 (each epoch is ~360 steps)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = load_checkpoint(killed / "checkpoints", "last").pointer["epoch"]
    assert 2 <= done < 4, "the kill should land before the run finished"
    assert not list((killed / "checkpoints").glob(".*.tmp")) or True  # temp files may remain; they are never read

    result = specserve("train", str(spec_path), "--out", str(killed), "--resume", "--quiet")
    assert result.returncode == 0, result.stderr
    history = json.loads((killed / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    ref_history = json.loads((reference / "metrics.json").read_text())["history"]
    assert history[-1]["test"]["accuracy"] == ref_history[-1]["test"]["accuracy"]
    assert history[-1]["train"]["loss"] == pytest.approx(ref_history[-1]["train"]["loss"], rel=1e-6)
    ref, got = _final_weights(reference), _final_weights(killed)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=0, atol=1e-6)


def test_existing_run_is_not_overwritten(tmp_path):
    spec = load_spec(write_spec(tmp_path, TINY_DIGITS.replace("EPOCHS", "1")))
    train(spec, TrainOptions(out=tmp_path / "run", quiet=True, max_steps=2))
    with pytest.raises(TrainError, match="already holds a run; pass --resume"):
        train(spec, TrainOptions(out=tmp_path / "run", quiet=True, max_steps=2))


def test_corrupted_checkpoint_is_refused(tmp_path):
    spec = load_spec(write_spec(tmp_path, TINY_DIGITS.replace("EPOCHS", "1")))
    train(spec, TrainOptions(out=tmp_path / "run", quiet=True, max_steps=2))
    checkpoints = tmp_path / "run" / "checkpoints"
    weights = checkpoints / json.loads((checkpoints / "last.json").read_text())["weights"]
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 differs"):
        load_checkpoint(checkpoints, "last")
    result = specserve("evaluate", str(tmp_path / "run"), "--checkpoint", "last")
    assert result.returncode == 2 and "sha256 differs" in result.stderr and "Traceback" not in result.stderr


# ------------------------------------------------------------------ distributed
def test_torchrun_two_processes_on_cpu(tmp_path):
    spec_path = write_spec(tmp_path, TINY_DIGITS.replace("EPOCHS", "2"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "models.cli", "train", str(spec_path), "--out", str(tmp_path / "run"), "--quiet"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = evaluate_run(tmp_path / "run")
    assert metrics["accuracy"] > 0.8


# ------------------------------------------------------------------ fine-tuning
def test_fine_tuning_freezes_the_backbone_and_scales_learning_rates(tmp_path):
    base = write_spec(tmp_path, TINY_DIGITS.replace("EPOCHS", "1"), "base.yaml")
    train(load_spec(base), TrainOptions(out=tmp_path / "base", quiet=True))
    finetune = write_spec(tmp_path, """
name: finetune
task: classification
input: {channels: 1, size: [8, 8], mean: [0.3], std: [0.38]}
backbone: {spec: base.yaml, until: features, weights: BASE, freeze: true}
network: [relu, linear: {out: 10}]
data: {dataset: digits, batch_size: 16}
train: {epochs: 1, optimizer: {sgd: {lr: 0.1}}}
""".replace("BASE", str(tmp_path / "base")), "finetune.yaml")
    base_weights = _final_weights(tmp_path / "base")
    result = train(load_spec(finetune), TrainOptions(out=tmp_path / "ft", quiet=True))
    tuned = _final_weights(tmp_path / "ft")
    for name, tensor in tuned.items():
        if name.startswith("backbone."):
            source = "body." + name.removeprefix("backbone.")
            torch.testing.assert_close(tensor, base_weights[source], rtol=0, atol=0)  # frozen: loaded and unchanged
    head = [n for n in tuned if n.startswith("body.")]
    assert head and result.final["accuracy"] > 0.8

    scaled = write_spec(tmp_path, finetune.read_text().replace("freeze: true", "lr_scale: 0.1"), "scaled.yaml")
    from models.train.optim import make_optimizer
    from models.build import build
    from models.train.pretrained import apply_pretrained

    spec = load_spec(scaled)
    net = build(spec)
    optimizer = make_optimizer(net, spec, apply_pretrained(net, spec))
    lrs = sorted({g["lr"] for g in optimizer.param_groups})
    assert lrs == pytest.approx([0.01, 0.1])  # the course's 10× rate for the new head


# ------------------------------------------------------------------ bad data and paths
def test_missing_dataset_files_name_the_file(tmp_path):
    spec_path = write_spec(tmp_path, (ROOT / "specs" / "lenet.yaml").read_text())
    result = specserve("train", str(spec_path), "--out", str(tmp_path / "run"), "--data-root", str(tmp_path))
    assert result.returncode == 2
    assert "fashion-mnist" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("root", ["../outside", "/etc", "a/../../b"])
def test_dataset_paths_cannot_leave_the_data_root(tmp_path, root):
    from models.train.data_source import open_dataset

    spec = load_spec_text(f"""
name: t
task: classification
input: {{channels: 1, size: [28, 28]}}
network: [flatten, linear: {{out: 10}}]
data: {{dataset: fashion_mnist, root: "{root}"}}
""", "paths.yaml")
    with pytest.raises(SpecError, match="data root|absolute"):
        open_dataset(spec, tmp_path / "data")


# ------------------------------------------------------------------ runs that scale with classes
def _class_folders(root: Path, classes: int, per_class: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"c{c:04d}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (4, 4), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


FOLDER_SPEC = """
name: many-classes
task: classification
input: {channels: 1, size: [4, 4]}
network: [flatten, linear: {out: OUTPUTS}]
data: {dataset: image_folder, root: photos, channels: 1, test_fraction: 0.5, batch_size: 256}
train: {epochs: 3, optimizer: {adam: {lr: 0.01}}}
"""


def test_a_thousand_class_run_keeps_metrics_small(tmp_path):
    """metrics.json holds no per-class table per epoch; the confusion matrix of the best and last epoch is in its
    own compact file."""
    _class_folders(tmp_path / "photos", 1000, 2)
    spec = load_spec(write_spec(tmp_path, FOLDER_SPEC.replace("OUTPUTS", "1000")))
    train(spec, TrainOptions(out=tmp_path / "run", quiet=True, max_steps=1, data_root=tmp_path))
    metrics = tmp_path / "run" / "metrics.json"
    assert len(json.loads(metrics.read_text())["history"]) == 3
    assert metrics.stat().st_size < 1_000_000, metrics.stat().st_size
    tables = json.loads((tmp_path / "run" / "class_metrics.json").read_text())
    assert len(tables["last"]["confusion_matrix"]) == 1000 and tables["last"]["epoch"] == 3


def test_outputs_that_do_not_fit_the_data_are_refused_before_the_first_step(tmp_path):
    _class_folders(tmp_path / "photos", 2, 4)
    spec_path = write_spec(tmp_path, FOLDER_SPEC.replace("OUTPUTS", "1000"))
    with pytest.raises(SpecError) as caught:
        train(load_spec(spec_path), TrainOptions(out=tmp_path / "run", quiet=True, data_root=tmp_path))
    message = str(caught.value)
    assert f"{spec_path}:5:20 network[1].linear: the network outputs 1000 class scores" in message
    assert "dataset image_folder at" in message and "photos has 2 classes" in message
    assert not (tmp_path / "run" / "checkpoints" / "last.json").exists()


# ------------------------------------------------------------------ file datasets streamed by workers (models.data.files)
STREAMED_SPEC = """
name: streamed
task: classification
input: {channels: 1, size: [8, 8], mean: [0.5], std: [0.3]}
network: [conv2d: {out: 4, kernel: 3, padding: 1}, relu, flatten, linear: {out: 3}]
data: {dataset: image_folder, root: photos, channels: 1, cache: CACHE, workers: 1, batch_size: 4, augment: [hflip]}
train: {epochs: EPOCHS, optimizer: {sgd: {lr: 0.05, momentum: 0.9}}, seed: 5}
"""


def _learnable_folders(root: Path, per_class: int) -> Path:
    """3 classes told apart by brightness, 8x8 gray PNGs with noise."""
    from PIL import Image

    rng = np.random.default_rng(1)
    for c in range(3):
        folder = root / f"c{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(rng.normal(40 + 80 * c, 30, (8, 8)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    return root


def test_streamed_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path):
    """The resume test above, on image files decoded by a DataLoader worker every epoch (cache: none)."""
    _learnable_folders(tmp_path / "photos", 200)
    spec_path = write_spec(tmp_path, STREAMED_SPEC.replace("CACHE", "none").replace("EPOCHS", "6"))
    common = ["--data-root", str(tmp_path), "--quiet"]
    reference = tmp_path / "reference"
    result = specserve("train", str(spec_path), "--out", str(reference), *common)
    assert result.returncode == 0, result.stderr

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "models.cli", "train", str(spec_path), "--out", str(killed), *common],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pointer = killed / "checkpoints" / "last.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if pointer.exists() and json.loads(pointer.read_text() or "{}").get("epoch", 0) >= 2:
            break
        time.sleep(0.02)
    time.sleep(0.15)  # into epoch 3 (each epoch is ~120 steps, ~0.5 s)
    proc.send_signal(signal.SIGKILL)  # its decoding worker dies with it
    proc.wait()
    done = load_checkpoint(killed / "checkpoints", "last").pointer["epoch"]
    assert 2 <= done < 6, "the kill should land before the run finished"

    result = specserve("train", str(spec_path), "--out", str(killed), "--resume", *common)
    assert result.returncode == 0, result.stderr
    history = json.loads((killed / "metrics.json").read_text())["history"]
    ref_history = json.loads((reference / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == list(range(1, 7))
    assert history[-1]["test"]["accuracy"] == ref_history[-1]["test"]["accuracy"] > 0.8
    assert history[-1]["train"]["loss"] == pytest.approx(ref_history[-1]["train"]["loss"], rel=1e-6)
    ref, got = _final_weights(reference), _final_weights(killed)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=0, atol=1e-6)


def test_streamed_and_in_memory_runs_train_alike(tmp_path):
    """Same seed, same batches, same augmentation draws: the disk-cached run ends where the in-memory one does."""
    _learnable_folders(tmp_path / "photos", 40)
    finals = {}
    for cache in ("memory", "disk"):
        spec = load_spec(write_spec(tmp_path, STREAMED_SPEC.replace("CACHE", cache).replace("EPOCHS", "2"), f"{cache}.yaml"))
        result = train(spec, TrainOptions(out=tmp_path / cache, quiet=True, data_root=tmp_path))
        finals[cache] = (result.history, _final_weights(tmp_path / cache))
    (h_mem, w_mem), (h_disk, w_disk) = finals["memory"], finals["disk"]
    assert [h["train"]["loss"] for h in h_disk] == pytest.approx([h["train"]["loss"] for h in h_mem], rel=1e-6)
    for name in w_mem:
        torch.testing.assert_close(w_disk[name], w_mem[name], rtol=0, atol=1e-6)


def test_skipped_bad_files_are_counted_in_the_metrics(tmp_path):
    from models.data import DataError

    _learnable_folders(tmp_path / "photos", 20)
    (tmp_path / "photos" / "c1" / "0003.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    text = STREAMED_SPEC.replace("CACHE", "none").replace("EPOCHS", "1")
    with pytest.raises(DataError, match=r"c1/0003\.png: "):
        train(load_spec(write_spec(tmp_path, text)), TrainOptions(out=tmp_path / "stops", quiet=True, data_root=tmp_path))
    skipping = text.replace("workers: 1,", "workers: 1, skip_bad_files: true,")
    train(load_spec(write_spec(tmp_path, skipping)), TrainOptions(out=tmp_path / "skips", quiet=True, data_root=tmp_path))
    record = json.loads((tmp_path / "skips" / "metrics.json").read_text())["history"][-1]
    assert record["data"]["bad_files_skipped"] == 1
    assert record["data"]["bad_files"][0].endswith("c1/0003.png")


def test_torchrun_two_processes_streaming_from_the_disk_cache(tmp_path):
    """Two ranks open one decode cache (built once, under a lock) and each reads only its shard."""
    _learnable_folders(tmp_path / "photos", 60)
    spec_path = write_spec(tmp_path, STREAMED_SPEC.replace("CACHE", "disk").replace("EPOCHS", "2"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "models.cli", "train", str(spec_path), "--out", str(tmp_path / "run"), "--quiet",
                             "--data-root", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    caches = [p for p in (tmp_path / "photos" / ".specserve-cache").iterdir() if p.is_dir()]
    assert len(caches) == 1 and not [p for p in caches if ".tmp-" in p.name]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2] and "× 2 processes" in metrics["hardware"]
