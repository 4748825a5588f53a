"""GPU training samples/s of specserve's trainer: fp32 vs bf16/fp16 autocast, channels-last, torch.compile.

    .venv/bin/python benchmarks/train_cuda.py                        # LeNet + ResNet-18, default grid, writes BENCHMARKS.md
    .venv/bin/python benchmarks/train_cuda.py resnet18 --full        # every combination (12 per model)
    .venv/bin/python benchmarks/train_cuda.py --device cpu --synthetic --test-count 64 --steps 2 --epochs 2 \
        --rounds 1 --batch 8 --no-write                          # smoke test of this script on a CPU

On a machine without CUDA it prints why and exits 0 (unless --device cpu asks for the smoke test).

Each configuration is a real `models.train.loop.train` run (spec.train.precision via Spec.with_train, TrainOptions.compile, and the
spec's train.channels_last) of --epochs epochs capped at --steps optimizer steps; the figure is the trainer's
own hot-loop samples/s (metrics.json `samples_per_s`) of the epochs after the first, whose time includes
torch.compile's compilation and cuDNN's first calls and is reported separately. Configurations are run
round-robin for --rounds rounds (the order reversed every other round) and the median is reported.

Data: Fashion-MNIST from ../shared/data when present; otherwise synthetic uint8 images of the same shape
(60,000 / 10,000 × 1×28×28, random labels) registered as a dataset, so the input pipeline (uint8 → device →
resize to 96×96 for ResNet-18 → normalize) is the same either way. Speed does not depend on the pixel values.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.common import (command_line, fashion_mnist_root, fmt, load_note, load_spec_variant, md_table,  # noqa: E402
                               median, now, write_section)
from models.data.base import ImageSplits, SeededArgs, register  # noqa: E402
from models.train.loop import TrainOptions, train  # noqa: E402

SECTION = "train_cuda"
MODELS = {"lenet": "lenet.yaml", "resnet18": "resnet18.yaml"}


@dataclass(frozen=True)
class Config:
    precision: str  # fp32 | bf16 | fp16
    channels_last: bool
    compile: bool

    def label(self) -> str:
        return " + ".join([self.precision] + ["channels-last"] * self.channels_last + ["compile"] * self.compile)


# The default grid answers one question per row against fp32 eager: what does each switch buy alone, and together.
DEFAULT_GRID = [Config("fp32", False, False), Config("bf16", False, False), Config("fp16", False, False),
                Config("fp32", True, False), Config("bf16", True, False), Config("fp32", False, True),
                Config("bf16", True, True)]
FULL_GRID = [Config(p, cl, c) for p in ("fp32", "bf16", "fp16") for cl in (False, True) for c in (False, True)]


class SyntheticArgs(SeededArgs):
    train_count: int = 60_000
    test_count: int = 2_000  # evaluation is not timed; a smaller test set only shortens the run


@register("bench_synthetic_images", task="classification", input="image", args=SyntheticArgs)
def synthetic_images(args: SyntheticArgs, seed: int) -> ImageSplits:
    """Fashion-MNIST-shaped random images (uint8 (N, 1, 28, 28)) and labels, for machines without the files."""
    g = torch.Generator().manual_seed(seed)
    n, m = args.train_count, args.test_count
    x = torch.randint(0, 256, (n + m, 1, 28, 28), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (n + m,), generator=g)
    return ImageSplits(x[:n], y[:n], x[n:], y[n:], [str(i) for i in range(10)])


def data_root(args: argparse.Namespace) -> Path | None:
    return None if args.synthetic else fashion_mnist_root()


def spec_for(model: str, config: Config, args: argparse.Namespace):
    overrides: dict = {"train": {"channels_last": config.channels_last}, "data": {}}
    if args.batch:
        overrides["data"]["batch_size"] = args.batch
    if data_root(args) is None:
        overrides["data"].update({"dataset": "bench_synthetic_images", "root": None, "test_count": args.test_count})
    return load_spec_variant(MODELS[model], overrides)


@dataclass
class Result:
    model: str
    config: Config
    samples_per_s: list[float]
    first_epoch_s: list[float]
    peak_mib: list[float]


def run_once(model: str, config: Config, args: argparse.Namespace) -> tuple[float, float, float]:
    """One trainer run; returns (steady samples/s, first-epoch seconds, peak GPU memory MiB)."""
    spec = spec_for(model, config, args)
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory(prefix="bench-cuda-") as tmp:
        result = train(spec.with_train(epochs=args.epochs, precision=config.precision),
                       TrainOptions(out=Path(tmp) / "run", device=args.device, quiet=True,
                                          max_steps=args.steps, compile=config.compile,
                                          data_root=data_root(args)))
    history = result.history
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan")
    del result
    if cuda:
        torch.cuda.empty_cache()
    return median([h["samples_per_s"] for h in history[1:]]), history[0]["seconds"], peak


def measure(models: list[str], grid: list[Config], args: argparse.Namespace) -> list[Result]:
    results = {(m, c): Result(m, c, [], [], []) for m in models for c in grid}
    keys = list(results)
    for r in range(args.rounds):
        for key in keys if r % 2 == 0 else reversed(keys):
            rate, first, peak = run_once(*key, args)
            res = results[key]
            res.samples_per_s.append(rate)
            res.first_epoch_s.append(first)
            res.peak_mib.append(peak)
            print(f"  round {r + 1} {key[0]:>8} {key[1].label():<32} {rate:10,.0f} samples/s  first epoch {first:6.1f} s"
                  f"  peak {peak:8,.0f} MiB", flush=True)
    return list(results.values())


def report(results: list[Result], args: argparse.Namespace) -> str:
    base = {r.model: median(r.samples_per_s) for r in results if r.config == Config("fp32", False, False)}
    rows = []
    for r in results:
        rate = median(r.samples_per_s)
        rows.append([r.model, r.config.label(), fmt(rate), f"{rate / base[r.model]:.2f}" if r.model in base else "–",
                     fmt(median(r.first_epoch_s), 1), fmt(median(r.peak_mib), 0)])
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU (smoke test)"
    data = "Fashion-MNIST" if data_root(args) else "synthetic Fashion-MNIST-shaped data"
    return "\n".join([
        "## Training on CUDA: mixed precision, channels-last, torch.compile", "",
        f"`{command_line('train_cuda.py')}` — {now()}, {device}, torch {torch.__version__}, {load_note()}.", "",
        f"{data}; LeNet at 28×28, ResNet-18 at 96×96 (resized on the device); batch "
        f"{args.batch or 'from the spec (256)'}; {args.epochs} epochs × {args.steps} steps per run, first epoch "
        f"dropped; {args.rounds} round(s), median. cuDNN benchmark off and TF32 matmul off (PyTorch defaults, "
        f"as the trainer leaves them). `vs fp32` = samples/s over fp32 eager without channels-last.", "",
        md_table(["model", "configuration", "samples/s", "vs fp32", "first epoch s (incl. compile)", "peak MiB"], rows,
                 align="llrrrr"),
    ])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="*", metavar="MODEL", help="lenet and/or resnet18 (default: both)")
    p.add_argument("--full", action="store_true", help="all 12 combinations per model instead of the default 7")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=3, help="per run; the first is warm-up (and compilation)")
    p.add_argument("--steps", type=int, default=60, help="optimizer steps per epoch")
    p.add_argument("--batch", type=int, help="override the specs' batch size (256)")
    p.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu to smoke-test this script")
    p.add_argument("--synthetic", action="store_true", help="synthetic images even where Fashion-MNIST is present")
    p.add_argument("--test-count", type=int, default=2_000, help="synthetic held-out images (evaluated, not timed)")
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = p.parse_args(argv)
    if unknown := set(args.models) - set(MODELS):
        p.error(f"unknown model(s) {sorted(unknown)}; choose from {', '.join(MODELS)}")
    if args.epochs < 2:
        p.error("--epochs must be >= 2 (the first epoch is warm-up)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("train_cuda: no CUDA device visible to torch here; nothing measured (run it on a GPU machine, or "
              "pass --device cpu to smoke-test the script)")
        return 0
    grid = FULL_GRID if args.full else DEFAULT_GRID
    results = measure(args.models or list(MODELS), grid, args)
    text = report(results, args)
    print("\n" + text)
    if not args.no_write and args.device.startswith("cuda"):
        write_section(SECTION, text)
        print(f"\nwritten to BENCHMARKS.md ({SECTION})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
