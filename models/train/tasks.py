"""What differs between tasks, behind one interface the trainer drives: batches, preprocessing, loss, metrics.

Each Task wraps the dataset splits of its kind (models.data) and knows:
  - how to cut training batches (sharded for DistributedDataParallel) and preprocess them on the device
    (uint8 → float, resize to the spec's input size, augmentation, normalization);
  - the loss of one step, and cheap running statistics (device tensors, no per-step host sync);
  - evaluation on the held-out split with torchmetrics, and which metric decides "best";
  - what the exporter and the service need to know (labels, vocabulary, scaling) and real samples for parity.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
import torchmetrics.functional as TMF
from torch import nn

from models.artifact.scaling import k_step_forecast, unscale
from models.data import (DataError, ImageData, LabelledTexts, RegressionSplits, SegData, SeriesSplits, TextCorpus,
                         build_augment, normalize, resize_batch, text_batches, to_float)
from models.data.base import Samples, TensorSamples, count_classes
from models.errors import SpecError
from models.spec.data_section import augment_steps
from models.train.plots import plot_segmentation
from models.spec.schema import Spec

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class StepResult:
    loss: torch.Tensor  # scalar, with grad
    stats: dict[str, torch.Tensor]  # sums over the batch, detached (e.g. {"loss": Σ, "correct": Σ, "count": n})
    state: tuple[torch.Tensor, ...] | None = None


@dataclass
class Task:
    spec: Spec
    splits: Any
    device: torch.device
    primary: str = "loss"  # the metric that decides the best checkpoint
    higher_is_better: bool = False
    info: dict[str, Any] = field(default_factory=dict)  # what export and serving need (labels, vocab, scaling)

    def __post_init__(self) -> None:
        """Subclasses check the splits against the spec here (the dataclass __init__ calls it)."""

    def check_network(self, net: nn.Module) -> None:
        """Refuse, before the first step, a network whose outputs do not fit the data (SpecError at the layer)."""

    # -- training
    def train_samples(self) -> Samples:
        """The training split as Samples (in memory or streamed from files)."""
        return TensorSamples(self.splits.train_x, self.splits.train_y)

    def steps_per_epoch(self, world: int = 1) -> int:
        """Optimizer steps in one epoch of train_batches, computed (not by cutting every batch)."""
        n = len(self.train_samples())
        per_rank = n - n % world if world > 1 else n
        return math.ceil(per_rank // world / self.spec.data.batch_size)

    def train_batches(self, generator: torch.Generator, rank: int = 0, world: int = 1) -> Iterator[Batch]:
        return self.train_samples().batches(self.spec.data.batch_size, shuffle=True, generator=generator, rank=rank,
                                            world=world)

    def data_report(self) -> dict[str, Any] | None:
        """What the run records about the data each epoch (bad files skipped), or None."""
        report = getattr(self.splits, "report", None)
        return report() if report else None

    def close(self) -> None:
        """Stop the data's reader processes, if any (they start again when batches are asked for)."""
        close = getattr(self.splits, "close", None)
        if close:
            close()

    def step(self, net: nn.Module, batch: Batch, state=None, generator: torch.Generator | None = None) -> StepResult:
        raise NotImplementedError

    def running(self, totals: dict[str, float]) -> dict[str, float]:
        """Training metrics of an epoch from summed stats."""
        return {"loss": totals["loss"] / max(totals["count"], 1)}

    # -- evaluation
    @torch.no_grad()
    def evaluate(self, net: nn.Module) -> dict[str, Any]:
        raise NotImplementedError

    def figures(self, net: nn.Module, directory: Path) -> None:
        """Task-specific pictures written with the curves after each epoch (none by default)."""

    # -- export
    def parity_inputs(self, n: int = 256) -> dict[str, np.ndarray]:
        """n real samples: {"inputs": what the exported graph takes (see models.export), "labels": targets}."""
        raise NotImplementedError

    def sample_size(self, batch: Batch) -> int:
        return len(batch[0])


def _take(test: torch.Tensor, train: torch.Tensor, n: int) -> torch.Tensor:
    """n real samples, held-out ones first; a dataset smaller than n is cycled (parity needs a fixed count)."""
    pool = torch.cat([test[:n], train[: max(n - len(test), 0)]])
    return pool[torch.arange(n) % len(pool)]


def _take_samples(test: Samples, train: Samples, n: int) -> Batch:
    """_take over Samples (in memory or streamed): only the samples used are read."""
    n_test, n_train = min(len(test), n), min(len(train), max(n - len(test), 0))
    pool = n_test + n_train
    picks = torch.arange(n) % pool  # positions in test[:n_test] + train[:n_train]
    parts = []
    if n_test:
        parts.append(test.take(range(n_test)))
    if n_train:
        parts.append(train.take(range(n_train)))
    x, y = (torch.cat([p[i] for p in parts]) for i in (0, 1))
    return x[picks], y[picks]


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise DataError(message)


class _ImageMixin:
    """uint8 images → float, resized to the spec's input size, augmented (training only), normalized."""

    def train_samples(self) -> Samples:
        return self.splits.train

    def _setup_images(self) -> None:
        spec = self.spec
        self.splits.use_device(self.device)  # streamed batches are pinned for non-blocking copies on CUDA
        channels = self.splits.train.sample_shape[0]
        _check(channels == spec.input.channels,
               f"{spec.data.dataset}: images have {channels} channel(s) but input.channels is {spec.input.channels}")
        self.size = tuple(spec.input.size)
        self.mean, self.std = spec.input.mean, spec.input.std
        # mean/std as float32 tensors on the device, made once: building them from the lists every step costs a
        # blocking host→device copy per tensor on CUDA (a stream sync that stalls the loop), and ~20 µs on CPU
        self._norm = None if self.mean is None else tuple(
            torch.tensor(v, dtype=torch.float32, device=self.device) for v in (self.mean, self.std or [1.0] * len(self.mean)))
        steps = augment_steps(spec)
        self.augment = build_augment(steps) if steps else None

    def _pixels(self, x: torch.Tensor, mask: torch.Tensor | None, train: bool, generator=None):
        x = to_float(x.to(self.device, non_blocking=True))  # (B, C, H, W) in [0, 1]
        if mask is not None:
            mask = mask.to(self.device, non_blocking=True)
        if tuple(x.shape[-2:]) != self.size:
            x = resize_batch(x, self.size)
            if mask is not None:  # nearest: a resized mask never invents classes
                mask = F.interpolate(mask[:, None].float(), size=self.size, mode="nearest")[:, 0].long()
        if train and self.augment is not None:
            x, mask = self.augment(x, mask, generator=None)
        if self._norm is not None:
            x = normalize(x, *self._norm)  # x is float32 on self.device: as_tensor passes the cached tensors through
        return x, mask

    def _uint8_resized(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) at the input size, as a client would send after resizing."""
        if tuple(x.shape[-2:]) != self.size:
            x = resize_batch(x, self.size)
            x = x if x.dtype == torch.uint8 else (x * 255).round().clamp(0, 255).to(torch.uint8)
        return x

    def _uint8_at_input_size(self, x: torch.Tensor) -> np.ndarray:
        """uint8 NHWC pixels at the input size: what a client sends to the exported graph."""
        return self._uint8_resized(x).permute(0, 2, 3, 1).contiguous().numpy()  # (N, H, W, C)


def class_counts(labels: torch.Tensor, classes: int, ignore: int | None) -> torch.Tensor:
    """How many labels (or mask pixels) of each class, ignored ones left out: int64 (K,)."""
    return count_classes(labels, classes, ignore)


def class_weights(labels: torch.Tensor, classes: int, ignore: int | None, mode: str, device) -> torch.Tensor | None:
    """Per-class loss weights (K,) from the training labels: median frequency / frequency ("median_frequency",
    Eigen & Fergus 2015, as SegNet trains CamVid), so a class with a tenth of the median's pixels weighs 10×.
    A class absent from the training labels gets weight 0: no target ever asks for it."""
    if mode == "none":
        return None
    return weights_from_counts(class_counts(labels, classes, ignore), mode, device)


def weights_from_counts(counts: torch.Tensor, mode: str, device) -> torch.Tensor | None:
    """class_weights from per-class counts (K,) (a streamed split counts its masks without holding them)."""
    if mode == "none":
        return None
    classes = len(counts)
    counts = counts.double()  # (K,)
    frequency = counts / counts.sum()
    present = counts > 0
    weights = torch.zeros(classes, dtype=torch.float64)
    weights[present] = frequency[present].median() / frequency[present]
    return weights.float().to(device)


def _check_classes(task: Task, outputs: int, what: str) -> None:
    """The network's class outputs against the classes the data has: a SpecError at the last layer that names the
    dataset and its folder (a 1000-output ImageNet net on a 2-class folder would train, then fail in evaluation)."""
    if outputs == task.classes:
        return
    spec = task.spec
    last = (spec.nodes or spec.backbone_nodes)[-1]
    folder = spec.data.options.get("root") or spec.data.options.get("path")
    source = f"dataset {spec.data.dataset}" + (f" at {folder}" if folder else "")
    raise SpecError.one(last.location, last.where, f"the network outputs {outputs} {what} but {source} has "
                                                   f"{task.classes} classes; set this layer's out to {task.classes}")


def _class_step(task: Task, logits: torch.Tensor, labels: torch.Tensor) -> StepResult:
    """Cross-entropy of class scores (B, K) against labels (B,), with the task's class weights and smoothing."""
    y = labels.to(task.device, non_blocking=True)
    loss = F.cross_entropy(logits.float(), y, weight=task.weights, label_smoothing=task.spec.train.label_smoothing)
    correct = (logits.argmax(1) == y).sum()
    return StepResult(loss, {"loss": loss.detach() * len(y), "correct": correct, "count": torch.tensor(len(y))})


def _class_running(totals: dict[str, float]) -> dict[str, float]:
    return {"loss": totals["loss"] / totals["count"], "accuracy": totals["correct"] / totals["count"]}


def _class_scores(logits: torch.Tensor, y: torch.Tensor, k: int) -> dict[str, Any]:
    """Held-out loss, accuracy (top-5 too beyond 5 classes) and the confusion matrix of scores (N, K)."""
    result = {
        "loss": float(F.cross_entropy(logits, y)),
        "accuracy": float(TMF.accuracy(logits, y, task="multiclass", num_classes=k, average="micro")),
        "confusion_matrix": TMF.confusion_matrix(logits, y, task="multiclass", num_classes=k).tolist(),
    }
    if k > 5:
        result["top5_accuracy"] = float(TMF.accuracy(logits, y, task="multiclass", num_classes=k, top_k=5, average="micro"))
    return result


class Classification(_ImageMixin, Task):
    def __post_init__(self) -> None:
        _check(isinstance(self.splits, ImageData) and not isinstance(self.splits, SegData),
               f"dataset {self.spec.data.dataset} does not give images with labels")
        self._setup_images()
        self.classes = self.splits.num_classes
        labels = self.spec.labels or self.splits.labels
        _check(len(labels) == self.classes,
               f"{self.spec.data.dataset}: {self.classes} classes but the spec lists {len(labels)} labels")
        self.primary, self.higher_is_better = "accuracy", True
        self.info = {"labels": list(labels)}
        self.weights = class_weights(self.splits.train.targets(), self.classes, None, self.spec.train.class_weights,
                                     self.device)

    def check_network(self, net: nn.Module) -> None:
        _check_classes(self, net.sample_output[-1], "class scores")

    def step(self, net, batch, state=None, generator=None) -> StepResult:
        x, _ = self._pixels(batch[0], None, train=True)
        return _class_step(self, net(x), batch[1])  # logits (B, K)

    def running(self, totals):
        return _class_running(totals)

    @torch.no_grad()
    def evaluate(self, net) -> dict[str, Any]:
        net.eval()
        logits_all, targets = [], []
        for x, y in self.splits.test.batches(512, shuffle=False):
            x, _ = self._pixels(x, None, train=False)
            logits_all.append(net(x).float().cpu())
            targets.append(y)
        return _class_scores(torch.cat(logits_all), torch.cat(targets), self.classes)  # (N, K), (N,)

    def parity_inputs(self, n: int = 256) -> dict[str, np.ndarray]:
        x, y = _take_samples(self.splits.test, self.splits.train, n)
        return {"inputs": self._uint8_at_input_size(x), "labels": y.numpy()}


class Segmentation(_ImageMixin, Task):
    def __post_init__(self) -> None:
        _check(isinstance(self.splits, SegData), f"dataset {self.spec.data.dataset} does not give images with masks")
        self._setup_images()
        self.classes = self.splits.num_classes
        self.ignore = self.splits.ignore_index
        labels = self.spec.labels or self.splits.labels
        _check(len(labels) == self.classes,
               f"{self.spec.data.dataset}: {self.classes} classes but the spec lists {len(labels)} labels")
        self.primary, self.higher_is_better = "mean_iou", True
        self.info = {"labels": list(labels), "colors": [list(c) for c in self.splits.colors[: self.classes]],
                     "ignore_index": self.ignore}
        # the training masks' class counts, for median-frequency weights and the majority-class baseline: counted
        # once (a streamed split counts without holding the masks; its decode cache knows them already), and only
        # when first needed, so a streamed run without class weights starts training at once
        self._counts: torch.Tensor | None = None
        self.weights = (weights_from_counts(self.train_counts(), self.spec.train.class_weights, self.device)
                        if self.spec.train.class_weights != "none" else None)

    def train_counts(self) -> torch.Tensor:
        if self._counts is None:
            self._counts = self.splits.train.class_counts(self.classes, self.ignore)
        return self._counts

    @property
    def majority(self) -> int:
        """The majority-class baseline predicts the most frequent training class everywhere."""
        return int(self.train_counts().argmax())

    def check_network(self, net: nn.Module) -> None:
        _check_classes(self, net.sample_output[0], "class maps")

    def step(self, net, batch, state=None, generator=None) -> StepResult:
        x, mask = self._pixels(batch[0], batch[1], train=True)
        logits = net(x)  # (B, K, H, W)
        loss = F.cross_entropy(logits.float(), mask, weight=self.weights,
                               ignore_index=-100 if self.ignore is None else self.ignore)
        valid = mask != (-100 if self.ignore is None else self.ignore)
        correct = ((logits.argmax(1) == mask) & valid).sum()
        n = valid.sum()
        return StepResult(loss, {"loss": loss.detach() * n, "correct": correct, "count": n})

    def running(self, totals):
        return {"loss": totals["loss"] / totals["count"], "pixel_accuracy": totals["correct"] / totals["count"]}

    def _scores(self, pred: torch.Tensor, mask: torch.Tensor) -> dict[str, Any]:
        kwargs = dict(task="multiclass", num_classes=self.classes, ignore_index=self.ignore)
        iou = TMF.jaccard_index(pred, mask, average="none", **kwargs)  # (K,)
        present = class_counts(mask, self.classes, self.ignore) > 0
        return {"pixel_accuracy": float(TMF.accuracy(pred, mask, average="micro", **kwargs)),
                "mean_iou": float(iou[present].mean()), "iou": [round(float(v), 4) for v in iou]}

    @torch.no_grad()
    def evaluate(self, net) -> dict[str, Any]:
        net.eval()
        preds, masks = [], []
        for x, mask in self.splits.test.batches(16, shuffle=False):
            x, mask = self._pixels(x, mask, train=False)
            preds.append(net(x).argmax(1).cpu())
            masks.append(mask.cpu())
        pred, mask = torch.cat(preds), torch.cat(masks)  # (N, H, W)
        result = self._scores(pred, mask)
        baseline = self._scores(torch.full_like(mask, self.majority), mask)
        result["baseline_pixel_accuracy"] = baseline["pixel_accuracy"]
        result["baseline_mean_iou"] = baseline["mean_iou"]
        return result

    @torch.no_grad()
    def figures(self, net: nn.Module, directory: Path, count: int = 4) -> None:
        """predictions.png: a few validation images, true and predicted masks side by side."""
        net.eval()
        images, masks = self.splits.test.take(range(min(count, len(self.splits.test))))
        x, true = self._pixels(images, masks, train=False)
        pred = net(x).argmax(1).cpu()  # (n, H, W) at the input size
        plot_segmentation(self._uint8_resized(images), true.cpu(), pred, self.info["colors"], directory / "predictions.png", self.ignore)

    def parity_inputs(self, n: int = 256) -> dict[str, np.ndarray]:
        x, masks = _take_samples(self.splits.test, self.splits.train, n)  # (n, 3, H, W), (n, H, W)
        if tuple(masks.shape[-2:]) != self.size:
            masks = F.interpolate(masks[:, None].float(), size=self.size, mode="nearest")[:, 0].long()
        return {"inputs": self._uint8_at_input_size(x), "labels": masks.numpy()}


class TokenSequence(Task):
    """Character language model: truncated BPTT, hidden state carried (sequential) or reset (random)."""

    def __post_init__(self) -> None:
        _check(isinstance(self.splits, TextCorpus), f"dataset {self.spec.data.dataset} does not give a text corpus")
        vocab = self.splits.vocab
        _check(len(vocab) == self.spec.input.vocab,
               f"{self.spec.data.dataset}: the text's vocabulary has {len(vocab)} tokens but input.vocab is "
               f"{self.spec.input.vocab}")
        self.steps = self.spec.input.sample_shape()[0]
        self.sequential = self.spec.data.partition == "sequential"
        self.primary, self.higher_is_better = "perplexity", False
        self.info = {"vocab": vocab.to_dict()}

    def steps_per_epoch(self, world: int = 1) -> int:
        # the stream's batch count depends on the random offset of each epoch: count one (slices are views)
        return sum(1 for _ in self.train_batches(torch.Generator().manual_seed(0)))

    def train_batches(self, generator, rank=0, world=1):
        # every rank reads the same stream: text models are small, and sharding a stream would break state carry-over
        return text_batches(self.splits.train, self.spec.data.batch_size, self.steps,
                            "sequential" if self.sequential else "random", generator)

    def step(self, net, batch, state=None, generator=None) -> StepResult:
        x, y = (t.to(self.device, non_blocking=True) for t in batch)  # (B, T) each
        if state is not None and (not self.sequential or state[0].shape[0] != x.shape[0]):
            state = None
        if state is not None:
            state = tuple(s.detach() for s in state)  # truncated BPTT: gradients stop at the batch boundary
        logits, state = net(x, state)  # (B, T, V)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        n = torch.tensor(y.numel())
        return StepResult(loss, {"loss": loss.detach() * n, "count": n}, state)

    def running(self, totals):
        mean = totals["loss"] / totals["count"]
        return {"loss": mean, "perplexity": math.exp(min(mean, 50.0))}

    @torch.no_grad()
    def evaluate(self, net) -> dict[str, Any]:
        """Held-out perplexity: the test text read in order, state carried across windows."""
        net.eval()
        tokens = self.splits.test.to(self.device)
        rows = min(16, max(1, (len(tokens) - 1) // (self.steps * 2)))
        length = (len(tokens) - 1) // rows
        xs = tokens[: rows * length].reshape(rows, length)  # (R, L)
        ys = tokens[1: rows * length + 1].reshape(rows, length)
        state, total, count = None, 0.0, 0
        for i in range(0, length, self.steps):
            logits, state = net(xs[:, i: i + self.steps], state)  # (R, T, V)
            total += float(F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), ys[:, i: i + self.steps].reshape(-1), reduction="sum"))
            count += ys[:, i: i + self.steps].numel()
        mean = total / max(count, 1)
        return {"loss": mean, "perplexity": math.exp(min(mean, 50.0))}

    def parity_inputs(self, n: int = 256) -> dict[str, np.ndarray]:
        tokens = self.splits.test
        starts = torch.linspace(0, len(tokens) - self.steps - 1, n).long()
        windows = torch.stack([tokens[s: s + self.steps + 1] for s in starts])  # (n, T + 1)
        return {"inputs": windows[:, :-1].numpy(), "labels": windows[:, 1:].numpy()}

    def sample_size(self, batch):
        return batch[0].numel()


class TextClassification(Task):
    """A text → one class: each text as `input.steps` token ids (cut or padded; models.artifact.text), the scores
    trained with cross-entropy; held-out accuracy against the majority-class baseline."""

    def __post_init__(self) -> None:
        s, name = self.splits, self.spec.data.dataset
        _check(isinstance(s, LabelledTexts), f"dataset {name} does not give texts with labels")
        rows = self.spec.input.vocab
        _check(len(s.vocab) <= rows,
               f"{name}: the training texts give a vocabulary of {len(s.vocab)} tokens (<pad> and <unk> included) "
               f"but input.vocab is {rows}; set input.vocab to {len(s.vocab)}, or data.max_vocab to {rows}")
        _check(self.spec.labels is None or self.spec.labels == s.labels,
               f"{name}: the spec lists labels {self.spec.labels} but the training split's (sorted) are {s.labels}")
        self.length = self.spec.input.sample_shape()[0]  # every text becomes exactly this many ids
        self.classes = len(s.labels)
        self.train_x, self.test_x = s.encode(s.train_texts, self.length), s.encode(s.test_texts, self.length)  # (N, L)
        self.primary, self.higher_is_better = "accuracy", True
        self.info = {"labels": list(s.labels), "vocab": {"tokens": list(s.vocab)},
                     "text": {"split": s.split, "lowercase": s.lowercase, "length": self.length}}
        counts = count_classes(s.train_y, self.classes, None)  # (K,), for the loss weights and the baseline
        self.majority = int(counts.argmax())  # the majority-class baseline predicts the most frequent class
        self.weights = weights_from_counts(counts, self.spec.train.class_weights, self.device)

    def check_network(self, net: nn.Module) -> None:
        _check_classes(self, net.sample_output[-1], "class scores")

    def train_samples(self) -> Samples:
        return TensorSamples(self.train_x, self.splits.train_y)

    def step(self, net, batch, state=None, generator=None) -> StepResult:
        return _class_step(self, net(batch[0].to(self.device, non_blocking=True)), batch[1])  # logits (B, K)

    def running(self, totals):
        return _class_running(totals)

    @torch.no_grad()
    def evaluate(self, net) -> dict[str, Any]:
        net.eval()
        logits = torch.cat([net(x.to(self.device)).float().cpu() for x in self.test_x.split(512)])  # (N, K)
        y = self.splits.test_y
        result = _class_scores(logits, y, self.classes)
        result["baseline_accuracy"] = float((y == self.majority).float().mean())
        return result

    def parity_inputs(self, n: int = 256) -> dict[str, np.ndarray]:
        s = self.splits  # token ids (n, L), as the service makes them from texts
        return {"inputs": _take(self.test_x, self.train_x, n).numpy(), "labels": _take(s.test_y, s.train_y, n).numpy()}


def _mse_step(self: Task, net, batch, state=None, generator=None) -> StepResult:
    """One regression step: inputs (B, τ) or (B, F) → (B, 1), mean squared error."""
    x, y = (t.to(self.device, non_blocking=True) for t in batch)
    loss = F.mse_loss(net(x).float(), y)
    return StepResult(loss, {"loss": loss.detach() * len(y), "count": torch.tensor(len(y))})


class SeriesForecast(Task):
    """Window of τ values → the next value; metrics in the series' own units against the last-value baseline."""

    def __post_init__(self) -> None:
        _check(isinstance(self.splits, SeriesSplits), f"dataset {self.spec.data.dataset} does not give a number series")
        _check(self.splits.window == self.spec.input.window,
               f"{self.spec.data.dataset}: windows of {self.splits.window} values but input.window is {self.spec.input.window}")
        self.primary, self.higher_is_better = "rmse", False
        self.info = {"scaling": dict(self.splits.scaling)}

    step = _mse_step

    @torch.no_grad()
    def evaluate(self, net, k: int = 4) -> dict[str, Any]:
        net.eval()
        scaling = self.splits.scaling
        x, y = self.splits.test_x, self.splits.test_y  # scaled (N, τ), (N, 1)
        pred = net(x.to(self.device)).float().cpu()
        true = unscale(y[:, 0].numpy().astype(np.float64), scaling)
        one = unscale(pred[:, 0].numpy().astype(np.float64), scaling)
        naive = unscale(x[:, -1].numpy().astype(np.float64), scaling)  # last value of each window
        result = {
            "rmse": float(np.sqrt(np.mean((one - true) ** 2))),
            "mae": float(np.mean(np.abs(one - true))),
            "naive_rmse": float(np.sqrt(np.mean((naive - true) ** 2))),
            "naive_mae": float(np.mean(np.abs(naive - true))),
        }
        # k-step: from each test window, predict k values ahead feeding predictions back; compare the k-th
        series = self.splits.series.numpy().astype(np.float64)
        windows = x[: max(len(x) - k + 1, 0)].numpy()
        if len(windows):
            predict = lambda w: net(torch.from_numpy(w).to(self.device)).float().cpu().numpy()  # noqa: E731
            ahead = unscale(k_step_forecast(predict, windows, k, self.splits.window)[:, -1].astype(np.float64), scaling)
            target = series[self.splits.split + k - 1: self.splits.split + k - 1 + len(windows)]
            result[f"rmse_{k}_step"] = float(np.sqrt(np.mean((ahead[: len(target)] - target) ** 2)))
        return result

    def parity_inputs(self, n: int = 256) -> dict[str, np.ndarray]:
        s = self.splits  # windows in model units: the service scales with the card's numbers before the graph
        return {"inputs": _take(s.test_x, s.train_x, n).numpy(), "labels": _take(s.test_y, s.train_y, n).numpy()}


class Regression(Task):
    def __post_init__(self) -> None:
        _check(isinstance(self.splits, RegressionSplits), f"dataset {self.spec.data.dataset} does not give features")
        self.primary, self.higher_is_better = "rmse", False

    step = _mse_step

    @torch.no_grad()
    def evaluate(self, net) -> dict[str, Any]:
        net.eval()
        pred = net(self.splits.test_x.to(self.device)).float().cpu()
        mse = float(F.mse_loss(pred, self.splits.test_y))
        return {"loss": mse, "rmse": math.sqrt(mse)}

    def parity_inputs(self, n: int = 256) -> dict[str, np.ndarray]:
        s = self.splits
        return {"inputs": _take(s.test_x, s.train_x, n).numpy(), "labels": _take(s.test_y, s.train_y, n).numpy()}


# The task classes by (task, input kind): every row of models/task_table.py has one (a test checks both ways).
TASK_CLASSES: dict[tuple[str, str], type[Task]] = {
    ("classification", "image"): Classification,
    ("classification", "tokens"): TextClassification,
    ("segmentation", "image"): Segmentation,
    ("sequence", "tokens"): TokenSequence,
    ("sequence", "series"): SeriesForecast,
    ("regression", "features"): Regression,
}


def make_task(spec: Spec, splits: Any, device: torch.device) -> Task:
    """The task object that trains and evaluates `spec` on `splits` (the spec's pair was checked at load)."""
    return TASK_CLASSES[spec.task, spec.input.kind](spec, splits, device)
