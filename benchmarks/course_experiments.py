"""The course's remaining experiments, reproduced from specs: weight decay, dropout, augmentation, fine-tuning.

    .venv/bin/python benchmarks/course_experiments.py                          # train what has no finished run, write
    .venv/bin/python benchmarks/course_experiments.py --only wd_0,wd_3         # some rows (prerequisites trained too)
    .venv/bin/python benchmarks/course_experiments.py --experiment dropout     # one experiment's rows
    .venv/bin/python benchmarks/course_experiments.py --table-only             # no training: write from the runs present
    .venv/bin/python benchmarks/course_experiments.py --fresh                  # retrain even rows with a finished run
    .venv/bin/python benchmarks/course_experiments.py --readme-out FILE        # also write the README block to FILE

The companion of benchmarks/course_table.py (the architecture table), in its style: every row is a spec from specs/
trained by the product's own trainer (`models.train.loop.train`, what `specserve train` runs), a few rows with
overrides printed next to the spec; one command per row. Each experiment compares rows that differ in one thing:

  weight_decay   D2L 3.7: linear regression with 200 features and 20 training samples, λ = 0 against λ > 0
  dropout        D2L 5.6: the course's MLP on 1,000 Fashion-MNIST images, with and without dropout
  augmentation   D2L 14.1: a small CNN on 5,000 Fashion-MNIST images, with and without flips and crops
  finetuning     D2L 14.2: a CNN trained on Fashion-MNIST, fine-tuned on 1,000 MNIST digits (new head, backbone at
                 a tenth of the learning rate), against the same network from scratch with the same budget
  finetuning_fcn D2L 13.11 + 14.2: the FCN on CamVid with the course's ResNet-18 trained on Fashion-MNIST as its
                 backbone (first convolution adapted from 1 to 3 channels) against the FCN from scratch
  finetuning_torchvision  a torchvision ResNet-18 trained here on Fashion-MNIST, saved as a state_dict under
                 torchvision's names, fine-tuned on 1,000 MNIST digits through the weights import vs from scratch

Runs go to runs/course_experiments/<row>/ (ignored by git). The fine-tuned specs name their source runs relative to
their own file (`backbone.weights: ../runs/course_experiments/finetune_source`), so they resolve from any
directory. Retraining a source (`--only finetune_source --fresh`) does not retrain the rows fine-tuned from it:
name them too (`--only finetune_source,ft_mnist,ft_mnist_gap --fresh`).

Output: BENCHMARKS.md section course_experiments, figures benchmarks/figures/course_{weight_decay,dropout,
augmentation,finetuning,finetuning_fcn,finetuning_torchvision}.png, and the same text as a README block: written
into README.md only where README.md already has the `<!-- course_experiments:begin -->` /
`<!-- course_experiments:end -->` markers, and into --readme-out FILE when given. A row whose spec the schema refuses is shown as refused, with the schema's message.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.common import (  # noqa: E402
    ROOT, SHARED_DATA, SPECS, load_note, load_spec_variant, md_table, now, replace_section, set_threads, write_section,
)
from benchmarks.course_table import FIGURES, README, _save, _settings, duration, finished, train_seconds  # noqa: E402

RUNS = ROOT / "runs" / "course_experiments"
SECTION = "course_experiments"


COSINE = {"train": {"schedule": "cosine"}}  # anneal the learning rate to 0 over the run
GAP_HEAD = {"network": ["global_avgpool", {"linear": {"out": 10}}]}  # a list replaces the spec's whole network


@dataclass(frozen=True)
class Row:
    key: str  # run folder and --only name
    label: str  # the row's name in the table and the legend
    spec: str  # file in specs/
    experiment: str  # key of its Experiment
    overrides: dict[str, Any] = field(default_factory=dict)
    setting: str = "the spec as written"
    needs_data: bool = True  # reads ../shared/data (else generated data)
    needs: tuple[str, ...] = ()  # rows whose runs this one loads (trained first when missing)
    then: Callable[[Path], Any] | None = None  # run after training (and when a finished run lacks what it writes)


ROWS = [
    # weight decay: D2L's numbers are ‖w‖ 13.97 (λ 0) and 0.37 (λ 3) after 100 epochs
    Row("wd_0", "λ = 0", "weight_decay_0.yaml", "weight_decay",
        setting="course recipe: 20 samples, 200 features, SGD 0.003, batch 5, 100 epochs", needs_data=False),
    Row("wd_3", "λ = 3", "weight_decay_3.yaml", "weight_decay", setting="the course's recipe with λ = 3",
        needs_data=False),
    # dropout
    Row("dropout_off", "no dropout", "dropout_off.yaml", "dropout", setting="1,000 images, 1,000 epochs, SGD 0.1"),
    Row("dropout_on", "dropout 0.2 / 0.5 (course)", "dropout_on.yaml", "dropout",
        setting="1,000 images, 1,000 epochs, SGD 0.1"),
    Row("dropout_strong", "dropout 0.2 input / 0.5 / 0.5", "dropout_strong.yaml", "dropout",
        setting="1,000 images, 1,000 epochs, SGD 0.1"),
    # augmentation
    Row("augment_none", "no augmentation", "augment_none.yaml", "augmentation",
        setting="5,000 images, 30 epochs, Adam 0.001"),
    Row("augment_flip", "flip", "augment_flip.yaml", "augmentation", setting="5,000 images, 30 epochs, Adam 0.001"),
    Row("augment_flip_shift", "flip + shift (pad 2, crop 28)", "augment_flip_shift.yaml", "augmentation",
        setting="5,000 images, 30 epochs, Adam 0.001"),
    Row("augment_flip_crop", "flip + resized crop", "augment_flip_crop.yaml", "augmentation",
        setting="5,000 images, 30 epochs, Adam 0.001"),
    Row("augment_flip_crop_jitter", "flip + resized crop + brightness/contrast", "augment_flip_crop_jitter.yaml",
        "augmentation", setting="5,000 images, 30 epochs, Adam 0.001"),
    # the same two with the learning rate annealed to 0 (a cosine), so that the last epochs settle
    Row("augment_none_cosine", "no augmentation, cosine lr", "augment_none.yaml", "augmentation", COSINE,
        "5,000 images, 30 epochs, Adam 0.001 → 0 (cosine)"),
    Row("augment_flip_crop_cosine", "flip + resized crop, cosine lr", "augment_flip_crop.yaml", "augmentation", COSINE,
        "5,000 images, 30 epochs, Adam 0.001 → 0 (cosine)"),
    # fine-tuning
    Row("finetune_source", "source: Fashion-MNIST", "finetune_source.yaml", "finetuning",
        setting="60,000 Fashion-MNIST images, 3 epochs, Adam 0.002, cosine"),
    Row("ft_mnist", "fine-tuned", "finetune_mnist.yaml", "finetuning",
        setting="1,000 MNIST images, 15 epochs, SGD 0.05 + momentum; backbone lr × 0.1", needs=("finetune_source",)),
    Row("ft_scratch", "from scratch", "finetune_mnist_scratch.yaml", "finetuning",
        setting="1,000 MNIST images, 15 epochs, SGD 0.05 + momentum; all at full lr"),
    # the first design: the head on the source's globally pooled 128 features (as the source's own head)
    Row("ft_mnist_gap", "fine-tuned, pooled head", "finetune_mnist.yaml", "finetuning", GAP_HEAD,
        "as fine-tuned, new head on the globally pooled 128 features", needs=("finetune_source",)),
    Row("ft_scratch_gap", "from scratch, pooled head", "finetune_mnist_scratch.yaml", "finetuning", GAP_HEAD,
        "as from scratch, head on the globally pooled 128 features"),
]

# fine-tuning the FCN on CamVid: the course's ResNet-18 (resnet18.yaml, one gray channel) trained on Fashion-MNIST at
# its own 28×28 is the backbone of fcn_camvid_finetune.yaml; its first convolution is adapted to CamVid's 3 channels
RESNET_SOURCE = {"input": {"size": [28, 28]}, "data": {"max_train": 20_000, "batch_size": 128},
                 "train": {"epochs": 3, "optimizer": {"sgd": None, "adam": {"lr": 0.002}}, "schedule": "cosine",
                           "seed": 0}}
TORCHVISION_FILE = "resnet18_fashion_mnist_torchvision.pth"  # written into the ft_tv_source run


def save_torchvision_file(run: Path) -> Path:
    """The run's best weights under torchvision's key names (conv1.weight, layer1.0.bn1.running_mean, ..., fc.bias):
    the file a torchvision user would have, read back by finetune_mnist_torchvision.yaml through the import path.

    Names come from torchvision's own ResNet-18 module tree (the replica in tests/export/torchvision_layout.py when
    torchvision does not import), with conv1 on one channel and fc on 10 classes as trained; tensors are paired by
    order, shape and kind (models.train.weights_import.map_weights), every one of them, and the file is checked by
    running both networks on the same images. A run that already has the file keeps it (retraining the row
    removes the run first)."""
    if (run / TORCHVISION_FILE).is_file():
        return run / TORCHVISION_FILE
    import torch
    from torch import nn

    from models.build import build
    from models.spec.load import load_spec
    from models.train.checkpoint import load_checkpoint
    from models.train.weights_import import map_weights
    from tests.export.torchvision_layout import resnet18

    net = build(load_spec(run / "spec.yaml"), seed=0)
    stored = load_checkpoint(run / "checkpoints", "best", with_state=False).weights
    trained = {name: stored[name] for name in net.state_dict()}  # module order (safetensors returns names sorted)
    reference, _ = resnet18(num_classes=10)
    reference.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)  # Fashion-MNIST is gray: the trained stem has 1 channel
    names = reference.state_dict()
    mapping = map_weights(trained, names)  # specserve name → torchvision name
    if len(mapping) != len(trained) or set(mapping.values()) != set(names):
        raise RuntimeError(f"{run}: {len(mapping)} of {len(trained)} tensors map onto torchvision's "
                           f"{len(names)}: not the layout of resnet18_torchvision.yaml")
    state = {tv: trained[own].clone() for own, tv in mapping.items()}
    state = {name: state[name] for name in names}  # torchvision's order
    reference.load_state_dict(state)
    net.load_state_dict(trained)
    images = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(reference.eval()(images), net.eval()(images), rtol=1e-4, atol=1e-4)
    path = run / TORCHVISION_FILE
    torch.save(state, path)
    print(f"[{run.name}] wrote {path}: {len(state)} tensors under torchvision's names", flush=True)
    return path


ROWS += [
    Row("ft_resnet_source", "source: ResNet-18 on Fashion-MNIST", "resnet18.yaml", "finetuning_fcn", RESNET_SOURCE,
        "28×28, 20,000 Fashion-MNIST images, 3 epochs, Adam 0.002, cosine"),
    Row("fcn_ft", "fine-tuned", "fcn_camvid_finetune.yaml", "finetuning_fcn",
        setting="CamVid 96×128, 157 images, 35 epochs, Adam 0.002, cosine; backbone lr × 0.1, conv 1 → 3 channels",
        needs=("ft_resnet_source",)),
    Row("fcn_scratch", "from scratch", "fcn_camvid_scratch.yaml", "finetuning_fcn",
        setting="CamVid 96×128, 157 images, 35 epochs, Adam 0.002, cosine; all at full lr"),
    Row("ft_tv_source", "source: torchvision ResNet-18 on Fashion-MNIST", "finetune_source_torchvision.yaml",
        "finetuning_torchvision", setting="28×28, 20,000 Fashion-MNIST images, 3 epochs, Adam 0.002, cosine; saved "
        f"as a torchvision state_dict ({TORCHVISION_FILE})", then=save_torchvision_file),
    Row("ft_tv_mnist", "fine-tuned from the .pth", "finetune_mnist_torchvision.yaml", "finetuning_torchvision",
        setting="1,000 MNIST images, 15 epochs, SGD 0.05 + momentum; backbone lr × 0.1", needs=("ft_tv_source",)),
    Row("ft_tv_scratch", "from scratch", "finetune_mnist_torchvision_scratch.yaml", "finetuning_torchvision",
        setting="1,000 MNIST images, 15 epochs, SGD 0.05 + momentum; all at full lr"),
]
BY_KEY = {row.key: row for row in ROWS}


# ----------------------------------------------------------------------------------------------- training
def load_row(row: Row):
    """The row's spec (with overrides), or the schema's refusal as a string."""
    from models.errors import SpecserveError

    try:
        return load_spec_variant(row.spec, row.overrides)
    except SpecserveError as err:  # "file:line:col field: message"; the line is the merged YAML's, not the file's
        first = str(err).splitlines()[0]
        return first.split(" ", 1)[1] if first.startswith(str(SPECS)) else first


def train_row(row: Row, data_root: Path | None) -> None:
    from models.train.loop import TrainOptions, train

    spec = load_row(row)
    if isinstance(spec, str):
        print(f"[{row.key}] refused by the spec schema, not trained: {spec}", flush=True)
        return
    run = RUNS / row.key
    if run.exists():
        shutil.rmtree(run)  # an unfinished or --fresh run: start over (training would refuse a non-empty folder)
    began = time.perf_counter()
    print(f"[{row.key}] training {row.spec} ({row.setting}) → {run.relative_to(ROOT)}", flush=True)
    train(spec, TrainOptions(out=run, data_root=data_root, quiet=True))
    print(f"[{row.key}] done in {time.perf_counter() - began:.0f} s wall", flush=True)
    if row.then is not None:
        row.then(run)


# ----------------------------------------------------------------------------------------------- reading runs
def curve(metrics: dict[str, Any], split: str, name: str) -> list[float]:
    return [epoch[split][name] for epoch in metrics["history"]]


def best(values: list[float], higher: bool) -> tuple[float, int]:
    """(best value, its 1-based epoch)."""
    pick = max if higher else min
    value = pick(values)
    return value, values.index(value) + 1


def weight_norm(run: Path) -> float:
    """‖w‖₂ of every weight matrix of the run's last checkpoint together (the course prints it for λ)."""
    import torch

    from models.train.checkpoint import load_checkpoint

    weights = load_checkpoint(run / "checkpoints", "last", with_state=False).weights
    squares = [t.double().pow(2).sum() for name, t in weights.items() if name.endswith("weight") and t.dim() >= 2]
    return float(torch.stack(squares).sum().sqrt())


def tail(values: list[float]) -> list[float]:
    """The last tenth of a run's epochs (at least 5): where a curve has settled, if it does."""
    return values[-max(5, len(values) // 10):]


def tail_median(values: list[float]) -> float:
    """Median over tail(): robust to the single-epoch loss spikes SGD shows on these small training sets."""
    return statistics.median(tail(values))


def seconds_text(seconds: float) -> str:
    """course_table's duration, with a decimal under 10 s (the weight-decay rows train in about a second)."""
    return f"{seconds:.1f} s" if seconds < 10 else duration(seconds)


def command(row: Row) -> str:
    return f"`.venv/bin/python benchmarks/course_experiments.py --only {row.key}`"


def spec_cell(row: Row) -> str:
    shown = json.dumps(_settings(row.overrides), separators=(",", ":"))
    return f"[`{row.spec}`](specs/{row.spec})" + (f"<br>overrides `{shown}`" if row.overrides else "")


# ----------------------------------------------------------------------------------------------- experiments
Cells = Callable[[Row, dict[str, Any]], list[Any]]


@dataclass(frozen=True)
class Experiment:
    key: str
    title: str
    intro: str  # what the course shows, and what was reduced
    header: list[str]  # result columns (between "setting" and "epochs")
    cells: Cells
    plot: Callable[[list[tuple[Row, dict[str, Any]]]], str]  # figure file name (under benchmarks/figures)
    compare: Callable[[dict[str, dict[str, Any]]], str] = lambda runs: ""  # a sentence of differences


def _weight_decay_cells(row: Row, m: dict[str, Any]) -> list[Any]:
    train, test = curve(m, "train", "loss"), curve(m, "test", "loss")
    low, at = best(test, higher=False)
    return [f"{train[-1]:.2e}", f"**{test[-1]:.3g}**", f"{low:.3g} (epoch {at})", f"{weight_norm(RUNS / row.key):.3g}"]


def _classifier_cells(row: Row, m: dict[str, Any]) -> list[Any]:
    acc, loss = curve(m, "test", "accuracy"), curve(m, "test", "loss")
    top, at = best(acc, higher=True)
    low, low_at = best(loss, higher=False)
    return [f"**{acc[-1]:.3f}**", f"{tail_median(acc):.3f} ({len(tail(acc))} epochs)", f"{top:.3f} (epoch {at})",
            f"{loss[-1]:.3f}", f"{tail_median(loss):.3f}",
            f"{low:.3f} (epoch {low_at})", f"{m['history'][-1]['train']['accuracy']:.3f}",
            f"{m['history'][-1]['train']['loss']:.3g}"]


def _finetune_cells(row: Row, m: dict[str, Any]) -> list[Any]:
    acc = curve(m, "test", "accuracy")
    top, at = best(acc, higher=True)
    dataset = "Fashion-MNIST" if row.key == "finetune_source" else "MNIST"
    return [dataset, f"**{acc[-1]:.3f}**", f"{acc[0]:.3f}", f"{top:.3f} (epoch {at})", f"{curve(m, 'test', 'loss')[-1]:.3f}"]


def _plot_losses(ax, runs, log: bool) -> None:
    """Training solid, test dashed, one colour per row."""
    for row, m in runs:
        epochs = [e["epoch"] for e in m["history"]]
        line, = ax.plot(epochs, curve(m, "train", "loss"), label=f"{row.label}: training")
        ax.plot(epochs, curve(m, "test", "loss"), linestyle="--", color=line.get_color(), label=f"{row.label}: test")
    if log:
        ax.set_yscale("log")


def _figure(ncols: int = 1):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    FIGURES.mkdir(parents=True, exist_ok=True)
    return plt.subplots(1, ncols, figsize=(7 * ncols if ncols > 1 else 7, 4.2))


def _plot_weight_decay(runs) -> str:
    fig, ax = _figure()
    _plot_losses(ax, runs, log=True)
    ax.set(xlabel="epoch", ylabel="squared loss (log)", title="Weight decay: 200 features, 20 training samples")
    _save(fig, ax, name := "course_weight_decay.png")
    return name


def _plot_dropout(runs) -> str:
    fig, (left, right) = _figure(2)
    _plot_losses(left, runs, log=True)
    left.set(xlabel="epoch", ylabel="cross-entropy (log)", title="Dropout: loss (training = running, dropout on)")
    left.grid(alpha=0.3)
    left.legend(fontsize=7)
    for row, m in runs:
        right.plot([e["epoch"] for e in m["history"]], curve(m, "test", "accuracy"), label=row.label)
    right.set(xlabel="epoch", ylabel="test accuracy", title="Dropout: test accuracy, 1,000 Fashion-MNIST images",
              ylim=(0.6, 0.85))
    _save(fig, right, name := "course_dropout.png")
    return name


def _plot_augmentation(runs) -> str:
    fig, (left, right) = _figure(2)
    for row, m in runs:
        epochs = [e["epoch"] for e in m["history"]]
        left.plot(epochs, curve(m, "test", "accuracy"), marker=".", label=row.label)
        right.plot(epochs, curve(m, "train", "accuracy"), marker=".", label=row.label)
    left.set(xlabel="epoch", ylabel="test accuracy (10,000 images)", ylim=(0.72, 0.9),
             title="Augmentation: CNN on 5,000 Fashion-MNIST images")
    left.grid(alpha=0.3)
    left.legend(fontsize=7)
    right.set(xlabel="epoch", ylabel="training accuracy (running, augmented batches)", ylim=(0.6, 1.0),
              title="the same runs: training accuracy")
    _save(fig, right, name := "course_augmentation.png")
    return name


def _plot_finetuning(runs) -> str:
    fig, ax = _figure()
    colours = {"ft_mnist": "C0", "ft_scratch": "C1", "ft_mnist_gap": "C0", "ft_scratch_gap": "C1"}
    for row, m in runs:
        if row.key == "finetune_source":
            continue
        style = {"linestyle": ":", "marker": "."} if row.key.endswith("_gap") else {"marker": "o"}
        ax.plot([e["epoch"] for e in m["history"]], curve(m, "test", "accuracy"), color=colours.get(row.key),
                label=row.label, **style)
    ax.set(xlabel="epoch", ylabel="MNIST test accuracy (10,000 images)",
           title="Fine-tuning a Fashion-MNIST CNN on 1,000 MNIST digits")
    _save(fig, ax, name := "course_finetuning.png")
    return name


def _diff(runs, a: str, b: str, fn: Callable[[dict[str, Any]], float]) -> float | None:
    return fn(runs[a]) - fn(runs[b]) if runs.get(a) and runs.get(b) else None


def _signed(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:+.{digits}f}"


def _compare_classifiers(runs, pairs: list[tuple[str, str]]) -> str:
    parts = []
    for a, b in pairs:
        if not (runs.get(a) and runs.get(b)):
            continue
        final = _diff(runs, a, b, lambda m: curve(m, "test", "accuracy")[-1])
        settled = _diff(runs, a, b, lambda m: tail_median(curve(m, "test", "accuracy")))
        peak = _diff(runs, a, b, lambda m: max(curve(m, "test", "accuracy")))
        loss = _diff(runs, a, b, lambda m: tail_median(curve(m, "test", "loss")))
        parts.append(f"{BY_KEY[a].label} − {BY_KEY[b].label}: test accuracy {_signed(final)} at the last epoch, "
                     f"{_signed(settled)} in median over the last tenth of the epochs, {_signed(peak)} at the best "
                     f"epoch; median test loss over the last tenth {_signed(loss)}.")
    return " ".join(parts)


def _compare_weight_decay(runs) -> str:
    parts = []
    for key in ("wd_0", "wd_3"):
        if runs.get(key):
            h = runs[key]["history"]
            parts.append(f"{BY_KEY[key].label}: test loss {h[0]['test']['loss']:.3g} after epoch 1 → "
                         f"{h[-1]['test']['loss']:.3g} after epoch {len(h)}")
    return ("; ".join(parts) + ".") if parts else ""


def _compare_finetuning(runs) -> str:
    parts = []
    for ft, sc, head in (("ft_mnist", "ft_scratch", "flatten head"), ("ft_mnist_gap", "ft_scratch_gap", "pooled head")):
        if not (runs.get(ft) and runs.get(sc)):
            continue
        a, b = (curve(runs[k], "test", "accuracy") for k in (ft, sc))
        parts.append(f"Fine-tuned − from scratch, {head}: MNIST test accuracy {_signed(a[0] - b[0])} after epoch 1, "
                     f"{_signed(a[-1] - b[-1])} after epoch {len(a)}, {_signed(max(a) - max(b))} at the best epoch, "
                     f"{_signed(tail_median(a) - tail_median(b))} in median over the last 5 epochs.")
    return " ".join(parts)


def _transfer_cells(row: Row, m: dict[str, Any]) -> list[Any]:
    """A source (classification) or a fine-tuned / scratch row (classification or segmentation): the run's primary
    metric at the end, after epoch 1, at its best and in median over the last 5 epochs."""
    primary = m["primary"]
    values = curve(m, "test", primary)
    top, at = best(values, higher=True)
    final = m["history"][-1]["test"]
    what = {"accuracy": "accuracy", "mean_iou": "mean IoU"}[primary]
    result = f"{what} **{values[-1]:.3f}**"
    if primary == "mean_iou":
        result += f", pixel accuracy {final['pixel_accuracy']:.3f}"
    data = {"ft_resnet_source": "Fashion-MNIST", "ft_tv_source": "Fashion-MNIST"}.get(
        row.key, "CamVid" if primary == "mean_iou" else "MNIST")
    return [data, result, f"{values[0]:.3f}", f"{top:.3f} (epoch {at})", f"{statistics.median(values[-5:]):.3f}"]


TRANSFER_HEADER = ["data", "test result (last epoch)", "after epoch 1", "best", "median, last 5 epochs"]


def _plot_transfer(runs, sources: tuple[str, ...], ylabel: str, title: str, name: str) -> str:
    fig, ax = _figure()
    for row, m in runs:
        if row.key in sources:
            continue
        ax.plot([e["epoch"] for e in m["history"]], curve(m, "test", m["primary"]), marker=".", label=row.label)
    ax.set(xlabel="epoch", ylabel=ylabel, title=title)
    _save(fig, ax, name)
    return name


def _plot_finetuning_fcn(runs) -> str:
    return _plot_transfer(runs, ("ft_resnet_source",), "CamVid test mean IoU (59 images, void ignored)",
                          "FCN on CamVid 96×128: ResNet-18 from Fashion-MNIST vs from scratch",
                          "course_finetuning_fcn.png")


def _plot_finetuning_torchvision(runs) -> str:
    return _plot_transfer(runs, ("ft_tv_source",), "MNIST test accuracy (10,000 images)",
                          "torchvision ResNet-18 .pth → 1,000 MNIST digits vs from scratch",
                          "course_finetuning_torchvision.png")


def _compare_transfer(runs, tuned: str, scratch: str, what: str) -> str:
    if not (runs.get(tuned) and runs.get(scratch)):
        return ""
    a, b = (curve(runs[k], "test", runs[k]["primary"]) for k in (tuned, scratch))
    return (f"Fine-tuned − from scratch: {what} {_signed(a[0] - b[0])} after epoch 1, {_signed(a[-1] - b[-1])} after "
            f"epoch {len(a)}, {_signed(max(a) - max(b))} at the best epoch, "
            f"{_signed(statistics.median(a[-5:]) - statistics.median(b[-5:]))} in median over the last 5 epochs.")


CLASSIFIER_HEADER = ["test accuracy (last epoch)", "median test accuracy, last 10 % of epochs", "best test accuracy",
                     "test loss (last)", "median test loss, last 10 %", "lowest test loss",
                     "training accuracy (running, last)", "training loss (running, last)"]

EXPERIMENTS = [
    Experiment(
        "weight_decay", "Weight decay (D2L 3.7)",
        "The course's high-dimensional linear regression, generated by seed (`high_dim_linear`: y = 0.05 + Σ 0.01·xᵢ "
        "+ ε, ε ~ N(0, 0.01²), x ~ N(0, I), 200 features, 20 training and 100 test samples), weights drawn from "
        "N(0, 1), SGD lr 0.003, batch 5, 100 epochs, squared loss (MSELoss, as the course's concise version); the "
        "penalty λ is the optimizer's weight decay on the weights, not the bias. Not reduced. The course: without "
        "decay the training loss falls and the test loss stays high (‖w‖ 13.97); with λ = 3 both fall (‖w‖ 0.37). "
        "Training loss: the trainer's mean over each epoch's steps.",
        ["training loss (last epoch)", "test loss (last epoch)", "lowest test loss", "‖w‖₂ at the end"],
        _weight_decay_cells, _plot_weight_decay, _compare_weight_decay),
    Experiment(
        "dropout", "Dropout (D2L 5.6)",
        "The course's MLP (784 → 256 → 256 → 10, weights N(0, 0.01²), SGD, batch 256) on a reduced training set "
        "where it overfits: the first 1,000 Fashion-MNIST training images (of 60,000), 1,000 epochs (4,000 steps), "
        "lr 0.1 instead of the course's 0.5 (at 0.5 the loss on 1,000 images kept spiking), no weight decay; the "
        "whole 10,000-image test set every epoch. Training figures are the trainer's running means with dropout "
        "active.",
        CLASSIFIER_HEADER, _classifier_cells, _plot_dropout,
        lambda runs: _compare_classifiers(runs, [("dropout_on", "dropout_off"), ("dropout_strong", "dropout_off")])),
    Experiment(
        "augmentation", "Image augmentation (D2L 14.1)",
        "A small CNN (conv–BN–ReLU stages of 32, 64, 128 channels, two max pools, one linear layer; 155,850 "
        "parameters) on the first 5,000 Fashion-MNIST training images (of 60,000), Adam 0.001, batch 128, 30 "
        "epochs, the whole 10,000-image test set every epoch; augmentation on the training batches only, drawn "
        "afresh every epoch: horizontal flip (p 0.5; the course's CIFAR-10 recipe), flip + a shift of up to 2 "
        "pixels (pad 2, random 28×28 window), flip + random resized crop (70-100 % of the area, aspect 3:4-4:3), "
        "and that plus brightness and contrast ±30 % (saturation and hue need 3 channels; these images have 1). "
        "The last two rows anneal the learning rate to 0 (cosine) so the final epochs settle. The course trains "
        "ResNet-18 on CIFAR-10 with flips; this is the CPU-sized stand-in. Training accuracy: the trainer's running "
        "mean on the augmented batches.",
        CLASSIFIER_HEADER, _classifier_cells, _plot_augmentation,
        lambda runs: _compare_classifiers(runs, [(k, "augment_none") for k in (
            "augment_flip", "augment_flip_shift", "augment_flip_crop", "augment_flip_crop_jitter")]
            + [("augment_flip_crop_cosine", "augment_none_cosine")])),
    Experiment(
        "finetuning", "Fine-tuning (D2L 14.2)",
        "The course fine-tunes an ImageNet ResNet-18 on 2,000 hot-dog photos: a new output layer, the pretrained "
        "layers at a tenth of its learning rate, against the same network from scratch. CPU-sized stand-in: a small "
        "CNN (`finetune_source.yaml`: three conv–BN–ReLU stages = `features`, global average pooling, a linear "
        "head) trained on the 60,000 Fashion-MNIST images for 3 epochs; its `features` with a new output layer "
        "fine-tuned on the first 1,000 MNIST training images (`backbone.lr_scale: 0.1`), against the same network "
        "from random weights with every parameter at the head's rate; both 15 epochs of SGD 0.05 with momentum 0.9, "
        "weight decay 0.001, batch 64, scored on the 10,000 MNIST test images. Two heads: flatten + linear on the "
        "128 × 7 × 7 maps (the specs as written), and linear on the globally pooled 128 features (the first design "
        "tried, as overrides).",
        ["data", "test accuracy (last epoch)", "after epoch 1", "best test accuracy", "test loss (last)"],
        _finetune_cells, _plot_finetuning, _compare_finetuning),
    Experiment(
        "finetuning_fcn", "Fine-tuning the FCN on CamVid (D2L 13.11 + 14.2)",
        "The course's FCN starts from an ImageNet ResNet-18; offline, the pretrained backbone here is the course's "
        "ResNet-18 (`resnet18.yaml`, one gray channel) trained on Fashion-MNIST at its own 28×28 (the first 20,000 "
        "training images, 3 epochs of Adam 0.002 with a cosine schedule: row ft_resnet_source). "
        "`fcn_camvid_finetune.yaml` takes its stages b1..b4 as the FCN's backbone, a new head (1×1 convolution to "
        "the 11 classes, bilinear-initialised ×16 transposed convolution) and the backbone at a tenth of the head's "
        "learning rate; CamVid is RGB, so the first convolution's 1-channel kernel is repeated over the 3 channels "
        "and divided by 3 when it loads (the trainer prints `weights: backbone.weights ...: backbone.0.0.weight: "
        "the 1-channel kernel repeated over 3 input channels and divided by 3 ...`). `fcn_camvid_scratch.yaml` is "
        "the same network from random weights, all at the full rate. Both: CamVid at 96×128, the train and val "
        "lists (157 images), fcn_camvid.yaml's flips, resized crops and colour jitter, 35 epochs of Adam 0.002 "
        "(cosine), batch 8, scored on the 59 test images every epoch (mean IoU over the 11 classes, void ignored). "
        "fcn_camvid.yaml itself trains 180 epochs (the course results table).",
        TRANSFER_HEADER, _transfer_cells, _plot_finetuning_fcn,
        lambda runs: _compare_transfer(runs, "fcn_ft", "fcn_scratch", "CamVid test mean IoU")),
    Experiment(
        "finetuning_torchvision", "Fine-tuning from a torchvision state_dict (D2L 14.2)",
        "The course's recipe with the weights coming from a file in another library's layout. No torchvision "
        "weights exist offline, so an honest one is made: torchvision's ResNet-18 (`resnet18_torchvision.yaml` up "
        "to layer4, on one channel) with a 10-class head on the pooled features, trained on the first 20,000 "
        "Fashion-MNIST images at 28×28 (3 epochs, Adam 0.002, cosine), saved as a torch state_dict under "
        f"torchvision's key names (`{TORCHVISION_FILE}`: conv1.weight, layer1.0.bn1.running_mean, ..., fc.bias; "
        "checked by running torchvision's module tree with it against the trained network). "
        "`finetune_mnist_torchvision.yaml` imports it through the weights-import path (names mapped by order, "
        "shape and kind), a new output layer on the pooled 512 features, backbone `lr_scale: 0.1`; "
        "`finetune_mnist_torchvision_scratch.yaml` is the same network from random weights. Both: the first 1,000 "
        "MNIST training images, 15 epochs of SGD 0.05 with momentum 0.9, weight decay 0.001, batch 64, scored on "
        "the 10,000 MNIST test images.",
        TRANSFER_HEADER, _transfer_cells, _plot_finetuning_torchvision,
        lambda runs: _compare_transfer(runs, "ft_tv_mnist", "ft_tv_scratch", "MNIST test accuracy")),
]
BY_EXPERIMENT = {e.key: e for e in EXPERIMENTS}


# ----------------------------------------------------------------------------------------------- writing
def experiment_text(experiment: Experiment) -> str:
    rows = [row for row in ROWS if row.experiment == experiment.key]
    runs = {row.key: finished(RUNS / row.key) for row in rows}
    lines, notes, plotted = [], [], []
    width = len(experiment.header)
    for row in rows:
        spec = load_row(row)
        metrics = runs[row.key]
        if isinstance(spec, str):
            lines.append([row.label, spec_cell(row), row.setting, f"refused by the spec schema: `{spec}`",
                          *[""] * (width - 1), "", "", "", command(row)])
            continue
        if metrics is None:
            notes.append(row.key)
            continue
        plotted.append((row, metrics))
        lines.append([row.label, spec_cell(row), row.setting, *experiment.cells(row, metrics), len(metrics["history"]),
                      seconds_text(train_seconds(metrics)), metrics.get("hardware", "not recorded"), command(row)])
    header = ["row", "spec", "setting", *experiment.header, "epochs", "training time", "hardware", "command"]
    parts = [f"### {experiment.title}", experiment.intro]
    if lines:
        parts.append(md_table(header, lines, "lll" + "l" * width + "rrll"))
    if compared := experiment.compare(runs):
        parts.append(compared)
    if notes:
        parts.append(f"Not yet run: {', '.join(notes)} (`benchmarks/course_experiments.py --only NAME`).")
    if plotted:
        name = experiment.plot(plotted)
        parts.append(f"![{Path(name).stem}](benchmarks/figures/{name})")
    return "\n\n".join(parts)


def write_outputs(readme_out: Path | None) -> str:
    sections = "\n\n".join(experiment_text(e) for e in EXPERIMENTS)
    text = (f"Written by `.venv/bin/python benchmarks/course_experiments.py` on {now()} ({load_note()}). Each "
            f"experiment trains specs that differ in one thing; training time is the trainer's per-epoch time "
            f"summed, evaluation excluded, on the hardware named in the row; other jobs shared the CPU.\n\n{sections}")
    write_section(SECTION, "## The course's experiments: weight decay, dropout, augmentation, fine-tuning\n\n" + text)
    readme = README.read_text()
    if f"<!-- {SECTION}:begin -->" in readme and f"<!-- {SECTION}:end -->" in readme:
        README.write_text(replace_section(readme, SECTION, text))
    if readme_out is not None:
        readme_out.write_text(f"<!-- {SECTION}:begin -->\n{text}\n<!-- {SECTION}:end -->\n")
    print(text)
    return text


# ----------------------------------------------------------------------------------------------- entry point
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="", help=f"comma-separated rows: {', '.join(r.key for r in ROWS)}")
    p.add_argument("--experiment", default="", help=f"comma-separated experiments: {', '.join(BY_EXPERIMENT)}")
    p.add_argument("--fresh", action="store_true", help="retrain rows that already have a finished run")
    p.add_argument("--table-only", action="store_true", help="train nothing; write the sections from present runs")
    p.add_argument("--data-root", type=Path, default=SHARED_DATA, help="where fashion-mnist/, mnist/ are")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: the CPU is shared)")
    p.add_argument("--readme-out", type=Path, default=None, help="also write the README block to this file")
    args = p.parse_args(argv)
    if unknown := {k for k in args.only.split(",") if k} - set(BY_KEY):
        p.error(f"unknown row(s) {sorted(unknown)}; choose from {', '.join(BY_KEY)}")
    if unknown := {k for k in args.experiment.split(",") if k} - set(BY_EXPERIMENT):
        p.error(f"unknown experiment(s) {sorted(unknown)}; choose from {', '.join(BY_EXPERIMENT)}")
    return args


def chosen_rows(only: str, experiments: str) -> list[Row]:
    """The rows asked for, with the rows they need first (in ROWS order)."""
    keys = {k for k in only.split(",") if k} | {r.key for r in ROWS if r.experiment in experiments.split(",")}
    if not keys:
        keys = set(BY_KEY)
    wanted = set(keys)
    for key in keys:
        wanted |= set(BY_KEY[key].needs)
    return [r for r in ROWS if r.key in wanted]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.chdir(ROOT)  # the runs, figures and commands are the repository root's
    if not args.table_only:
        set_threads(args.threads)
        asked = {k for k in args.only.split(",") if k} | {r.key for r in ROWS if r.experiment in args.experiment.split(",")}
        for row in chosen_rows(args.only, args.experiment):
            fresh = args.fresh and (not asked or row.key in asked)  # a prerequisite is kept when it is finished
            if row.needs_data and not args.data_root.is_dir():
                print(f"[{row.key}] skipped: no data root {args.data_root}", flush=True)
            elif fresh or finished(RUNS / row.key) is None:
                train_row(row, args.data_root if row.needs_data else None)
            else:
                print(f"[{row.key}] finished run present in {(RUNS / row.key).relative_to(ROOT)}; kept", flush=True)
                if row.then is not None:
                    row.then(RUNS / row.key)  # what the run writes besides itself, if it lacks it
    write_outputs(args.readme_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
