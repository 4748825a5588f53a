"""The course's results table, reproduced from specs alone: train each row's spec, read its run, write the table.

    .venv/bin/python benchmarks/course_table.py                  # train what has no finished run, write the table
    .venv/bin/python benchmarks/course_table.py --only alexnet   # one row (several: --only lenet,nin)
    .venv/bin/python benchmarks/course_table.py --table-only     # no training: the table from the runs present
    .venv/bin/python benchmarks/course_table.py --fresh          # retrain even rows that have a finished run

Each row is a spec from specs/ trained by the product's own trainer (`models.train.loop.train`, what `specserve train`
runs); rows marked "reduced" override a few values of the spec (input size, number of training images, epochs,
optimizer) so that the big networks train on a 2-core CPU in minutes instead of GPU-hours. The overrides are printed
in the table next to the spec, so every figure can be reproduced with the command above.

Runs go to runs/course/<row>/ (ignored by git). The table is written into README.md between
`<!-- course_results:begin -->` and `<!-- course_results:end -->`, into BENCHMARKS.md (section course_results) and
as figures under benchmarks/figures/: test accuracy against training time for the image classifiers, and
perplexity per epoch for the language models. Times are the trainer's own per-epoch training time (evaluation
excluded), on the hardware each run recorded in its metrics.json.

The course's other experiments (weight decay, dropout, augmentation, fine-tuning: pairs of specs that differ in one
thing) are benchmarks/course_experiments.py, in the same style, with its own BENCHMARKS.md section.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.common import (  # noqa: E402
    ROOT, SHARED_DATA, fmt, load_note, load_spec_variant, md_table, now, replace_section, set_threads, write_section,
)

RUNS = ROOT / "runs" / "course"
FIGURES = ROOT / "benchmarks" / "figures"
README = ROOT / "README.md"
SECTION = "course_results"

# the big CNNs on a CPU: 10,000 training images (of 60,000), 3 epochs, SGD with momentum (the course's plain SGD
# needs the full data and 10 epochs to get going), the whole 10,000-image test set
REDUCED = {"data": {"max_train": 10_000, "batch_size": 64}, "train": {"epochs": 3}}


def _reduced(size: int, optimizer: dict[str, Any]) -> dict[str, Any]:
    # the spec's own optimizer kind is removed (None deletes a key in the merge): a spec names exactly one kind
    replaced = {"sgd": None, "adam": None, "adamw": None, **optimizer}
    return {**REDUCED, "input": {"size": [size, size]}, "train": {**REDUCED["train"], "optimizer": replaced}}


def _momentum(lr: float) -> dict[str, Any]:
    """SGD with momentum 0.9: on a tenth of the data and 3 epochs, plain SGD (the course's) barely moves."""
    return {"sgd": {"lr": lr, "momentum": 0.9}}


@dataclass(frozen=True)
class Row:
    key: str  # run folder and --only name
    model: str  # what the course calls it
    spec: str  # file in specs/
    overrides: dict[str, Any] = field(default_factory=dict)
    setting: str = "the spec as written"  # what the overrides mean, for the table
    needs_data: bool = True  # reads ../shared/data (else embedded or generated data)


ROWS = [
    Row("lenet", "LeNet", "lenet.yaml", setting="course recipe, 60,000 images, 28×28"),
    Row("lenet_bn", "LeNet + batch norm", "lenet_bn.yaml", setting="course recipe, 60,000 images, 28×28"),
    Row("alexnet", "AlexNet", "alexnet.yaml", _reduced(80, _momentum(0.01)), "reduced: 80×80, 10,000 images, 3 epochs"),
    # The deep networks without batch norm (VGG-11, NiN, GoogLeNet) stayed at chance with SGD + momentum on this
    # budget (loss 2.30 after 60 steps; test accuracy 0.100 after 1-3 epochs, measured); Adam gets them going
    Row("vgg11", "VGG-11", "vgg11.yaml", _reduced(32, {"adam": {"lr": 0.0005}}), "reduced: 32×32, 10,000 images, 3 epochs"),
    Row("nin", "NiN", "nin.yaml", _reduced(80, {"adam": {"lr": 0.001}}), "reduced: 80×80, 10,000 images, 3 epochs"),
    Row("googlenet", "GoogLeNet", "googlenet.yaml", _reduced(64, {"adam": {"lr": 0.001}}), "reduced: 64×64, 10,000 images, 3 epochs"),
    Row("resnet18", "ResNet-18", "resnet18.yaml", _reduced(64, _momentum(0.01)), "reduced: 64×64, 10,000 images, 3 epochs"),
    Row("fcn_camvid", "FCN (ResNet-18 backbone)", "fcn_camvid.yaml",
        setting="CamVid at 96×128, 157 training images, from scratch"),
    # FPN's laterals and top-down path on the same ResNet-18, data and optimizer as fcn_camvid; 35 epochs, not
    # 180, to train in about 10 minutes here (compare fcn_camvid_scratch.yaml in course_experiments: 35 epochs)
    Row("fpn_camvid", "FPN (ResNet-18 backbone)", "fpn_camvid.yaml",
        setting="CamVid at 96×128, 157 training images, from scratch, 35 epochs"),
    Row("char_rnn", "RNN", "char_rnn.yaml", setting="course recipe: first 10,000 characters, 500 epochs"),
    Row("char_gru", "GRU", "char_gru.yaml", setting="course recipe: first 10,000 characters, 500 epochs"),
    Row("char_lstm", "LSTM", "char_lstm.yaml", setting="course recipe: first 10,000 characters, 500 epochs"),
    Row("char_gru_book", "GRU", "char_gru_book.yaml", setting="the whole book (150,000 characters), 140 epochs"),
    Row("sine", "MLP forecaster", "sine_forecaster.yaml", setting="course series: sin(0.01 t) + noise 0.2",
        needs_data=False),
    Row("airline", "MLP forecaster", "airline_forecaster.yaml", setting="airline passengers, monthly"),
    Row("sunspots", "MLP forecaster", "sunspots_forecaster.yaml", setting="Zurich sunspots, monthly"),
]


# ----------------------------------------------------------------------------------------------- training
def finished(run: Path) -> dict[str, Any] | None:
    """The run's metrics when it trained every epoch its spec asked for, else None."""
    metrics_file, spec_file = run / "metrics.json", run / "spec.yaml"
    if not (metrics_file.is_file() and spec_file.is_file()):
        return None
    metrics = json.loads(metrics_file.read_text())
    epochs = (yaml.safe_load(spec_file.read_text()).get("train") or {}).get("epochs", 10)
    return metrics if metrics.get("complete") or len(metrics["history"]) >= epochs else None


def train_row(row: Row, data_root: Path | None) -> None:
    from models.train.loop import TrainOptions, train

    run = RUNS / row.key
    if run.exists():
        shutil.rmtree(run)  # an unfinished or --fresh run: start over (training would refuse a non-empty folder)
    spec = load_spec_variant(row.spec, row.overrides)
    began = time.perf_counter()
    print(f"[{row.key}] training {row.spec} ({row.setting}) → {run.relative_to(ROOT)}", flush=True)
    train(spec, TrainOptions(out=run, data_root=data_root, quiet=True))
    print(f"[{row.key}] done in {time.perf_counter() - began:.0f} s wall", flush=True)


# ----------------------------------------------------------------------------------------------- the table
def train_seconds(metrics: dict[str, Any]) -> float:
    return sum(epoch["seconds"] for epoch in metrics["history"])


def duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def result_cells(metrics: dict[str, Any]) -> tuple[str, str]:
    """(result, comparison) for the run's task, read from its final evaluation."""
    final, primary = metrics["final"], metrics["primary"]
    if primary == "accuracy":
        return f"test accuracy **{final['accuracy']:.3f}**", f"top-5 {final.get('top5_accuracy', float('nan')):.3f}"
    if primary == "mean_iou":
        return (f"mean IoU **{final['mean_iou']:.3f}**, pixel accuracy {final['pixel_accuracy']:.3f}",
                f"majority class: mean IoU {final['baseline_mean_iou']:.3f}, "
                f"pixel accuracy {final['baseline_pixel_accuracy']:.3f}")
    if primary == "perplexity":
        train_ppl = metrics["history"][-1]["train"]["perplexity"]
        best = min(metrics["history"], key=lambda e: e["test"]["perplexity"])
        return (f"perplexity: training **{train_ppl:.2f}**, held-out **{final['perplexity']:.2f}** (lowest held-out "
                f"{best['test']['perplexity']:.2f} at epoch {best['epoch']}, training then {best['train']['perplexity']:.2f})",
                "uniform guess: 28")
    if primary == "rmse":
        k_step = next((f"{k.split('_')[1]}-step {v:.3g}" for k, v in final.items() if k.startswith("rmse_")), "")
        return (f"1-step RMSE **{final['rmse']:.3g}**" + (f", {k_step}" if k_step else ""),
                f"naive last value: {final['naive_rmse']:.3g}")
    return f"{primary} {final.get(primary)}", ""


def _settings(overrides: dict[str, Any]) -> dict[str, Any]:
    """The overrides without the merge's deletions (None values): what the row sets, for the table."""
    return {k: _settings(v) if isinstance(v, dict) else v for k, v in overrides.items() if v is not None}


def command(row: Row) -> str:
    return f"`.venv/bin/python benchmarks/course_table.py --only {row.key}`"


def table(rows: list[Row], runs: dict[str, dict[str, Any] | None]) -> tuple[str, list[str]]:
    lines, missing = [], []
    for row in rows:
        metrics = runs[row.key]
        if metrics is None:
            missing.append(row.key)
            continue
        result, comparison = result_cells(metrics)
        shown = json.dumps(_settings(row.overrides), separators=(",", ":"))
        overrides = f"<br>overrides `{shown}`" if row.overrides else ""
        lines.append([row.model, f"[`{row.spec}`](specs/{row.spec}){overrides}", row.setting, result, comparison,
                      len(metrics["history"]), duration(train_seconds(metrics)),
                      metrics.get("hardware", "not recorded"), command(row)])
    header = ["model", "spec", "setting", "result", "baseline / reference", "epochs", "training time", "hardware",
              "command"]
    return md_table(header, lines, "lllllrrll"), missing


def _save(fig, ax, name: str) -> Path:
    """Grid, legend, tight layout, written to benchmarks/figures/NAME, figure closed."""
    import matplotlib.pyplot as plt

    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = FIGURES / name
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot(rows: list[Row], metrics_of: dict[str, dict[str, Any] | None]) -> list[str]:
    """Accuracy vs cumulative training time (classifiers), perplexity per epoch (language models); PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    FIGURES.mkdir(parents=True, exist_ok=True)
    runs = [(row, m) for row in rows if (m := metrics_of[row.key]) is not None]
    written = []
    classifiers = [(row, m) for row, m in runs if m["primary"] == "accuracy"]
    if classifiers:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for row, m in classifiers:
            elapsed, accuracy, total = [], [], 0.0
            for epoch in m["history"]:
                total += epoch["seconds"]
                elapsed.append(total / 60)
                accuracy.append(epoch["test"]["accuracy"])
            ax.plot(elapsed, accuracy, marker="o", label=f"{row.model} ({row.setting.split(',')[0]})")
        ax.set(xlabel="training time (min, evaluation excluded)", ylabel="test accuracy",
               title="Fashion-MNIST: test accuracy vs training time", xscale="log")
        written.append(_save(fig, ax, "course_accuracy_vs_time.png"))
    language = [(row, m) for row, m in runs if m["primary"] == "perplexity"]
    if language:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for row, m in language:
            epochs = [e["epoch"] for e in m["history"]]
            line, = ax.plot(epochs, [e["train"]["perplexity"] for e in m["history"]], label=f"{row.spec} training")
            ax.plot(epochs, [e["test"]["perplexity"] for e in m["history"]], linestyle="--", color=line.get_color(),
                    label=f"{row.spec} held-out")
        ax.set(xlabel="epoch", ylabel="perplexity", title="The Time Machine: character perplexity", yscale="log")
        written.append(_save(fig, ax, "course_perplexity.png"))
    return [str(p.relative_to(ROOT)) for p in written]


def write_outputs(rows: list[Row]) -> None:
    runs = {row.key: finished(RUNS / row.key) for row in rows}  # each run's metrics.json read once
    body, missing = table(rows, runs)
    figures = plot(rows, runs)
    images = "\n\n".join(f"![{Path(p).stem}]({p})" for p in figures)
    note = (f"Not yet run: {', '.join(missing)} (`benchmarks/course_table.py --only NAME`).\n\n" if missing else "")
    text = (f"Written by `.venv/bin/python benchmarks/course_table.py` on {now()} ({load_note()}). Training time is "
            f"the trainer's per-epoch time summed, evaluation excluded, on the hardware named in the row; other jobs "
            f"shared the CPU for some rows.\n\n{body}\n\n{note}{images}")
    README.write_text(replace_section(README.read_text(), SECTION, text))
    write_section(SECTION, "## The course's results table\n\n" + text)
    print(body)


# ----------------------------------------------------------------------------------------------- entry point
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="", help=f"comma-separated rows: {', '.join(r.key for r in ROWS)}")
    p.add_argument("--fresh", action="store_true", help="retrain rows that already have a finished run")
    p.add_argument("--table-only", action="store_true", help="train nothing; write the table from present runs")
    p.add_argument("--data-root", type=Path, default=SHARED_DATA, help="where fashion-mnist/, camvid/... are")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = p.parse_args(argv)
    known = {r.key for r in ROWS}
    if unknown := {k for k in args.only.split(",") if k} - known:
        p.error(f"unknown row(s) {sorted(unknown)}; choose from {', '.join(sorted(known))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    chosen = [r for r in ROWS if not args.only or r.key in args.only.split(",")]
    if not args.table_only:
        set_threads(args.threads)
        for row in chosen:
            if row.needs_data and not args.data_root.is_dir():
                print(f"[{row.key}] skipped: no data root {args.data_root}", flush=True)
            elif args.fresh or finished(RUNS / row.key) is None:
                train_row(row, args.data_root if row.needs_data else None)
            else:
                print(f"[{row.key}] finished run present in {(RUNS / row.key).relative_to(ROOT)}; kept", flush=True)
    write_outputs(ROWS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
