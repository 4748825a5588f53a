"""Training samples/s: specserve's trainer against a hand-written PyTorch loop on the same model, data and optimizer.

    .venv/bin/python benchmarks/train_throughput.py                 # LeNet and digits_cnn, writes BENCHMARKS.md
    .venv/bin/python benchmarks/train_throughput.py digits_cnn --rounds 2 --epochs 3 --no-write
    .venv/bin/python benchmarks/train_throughput.py --profile lenet # cProfile of one trainer run, top functions

Both sides get the network from `models.build.build` (same spec, same seed), the same uint8 tensors (the
dataset the spec names, loaded once by models.data), the same batch size and the same optimizer class and
hyper-parameters. The hand-written loop is the plain one:

    for x, y in batches: opt.zero_grad(); loss = F.cross_entropy(net(normalize(x / 255)), y); loss.backward(); opt.step()

with batches cut from a fresh random permutation each epoch by indexing (the trainer does the same).

What is counted:
  * hot loop, two ways, epoch 1 (warm-up) dropped on both sides:
    - per epoch: the trainer's own per-epoch `seconds` (metrics.json: from the first batch drawn to the end of
      the last optimizer step) against the same span of the hand loop; the run's figure is the median epoch.
      Epochs are capped at --steps steps.
    - per step: a forward-pre-hook on the network stamps every forward call; the gap between two training
      forwards of one epoch is one whole step (batch gather, preprocessing, forward, loss, backward, optimizer,
      the trainer's schedule and statistics). The median step is immune to another job's burst, which on this
      shared 2-core machine moves a per-epoch total by ±10 %, so this is the ratio to trust.
  * whole epoch: a full pass over the training set plus what ends an epoch. Trainer: evaluation (torchmetrics,
    confusion matrix), two checkpoint pointers with sha256, metrics.json and curves.png, all fsync'ed. Hand
    loop: an accuracy pass over the test set and one torch.save of the state dict. Each side's fixed
    per-epoch cost is measured (time between the trainer's on_epoch callbacks minus its loop seconds), and the
    whole-epoch time is (steps in a full epoch × measured seconds per step + fixed cost); where --steps
    covers the whole training set that is simply the measured epoch.
Rounds alternate trainer/hand (ABBA), and every ratio is the median of per-round ratios.
"""
from __future__ import annotations

import argparse
import cProfile
import math
import pstats
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.common import (command_line, fashion_mnist_root, fmt, interleave, load_note, load_spec_variant,  # noqa: E402
                               md_table, median, now, seconds_per_call, publish, set_threads)
from models.build import build  # noqa: E402
from models.train.checkpoint import save_checkpoint  # noqa: E402
from models.data import normalize, resize_batch  # noqa: E402
from models.train.data_source import open_dataset  # noqa: E402
from models.train.plots import plot_curves  # noqa: E402
from models.train.runs import Run  # noqa: E402
from models.spec.schema import Spec  # noqa: E402
import models.train.loop  # noqa: E402
from models.train.loop import TrainOptions, train  # noqa: E402

SECTION = "train_throughput"


@dataclass
class Case:
    name: str
    spec: Spec
    data_root: Path | None
    data_note: str
    steps: int | None  # optimizer steps per measured epoch (None: whole epochs)
    epochs: int  # per run, the first being warm-up


@dataclass
class Measured:
    """One run of several epochs, warm-up epoch dropped; medians over the rest."""

    samples_per_s: float  # hot loop, from the median epoch
    step_s: float  # seconds per optimizer step in the median epoch
    fixed_s: float  # seconds per epoch outside the step loop (evaluation, checkpoint, ...)
    median_step_s: float  # the median single step (StepClock)


class StepClock:
    """Forward-pre-hook timestamps on the trained network: consecutive training-mode forwards are one step apart.

    Gaps that span an evaluation (eval-mode forwards in between) are not steps; gaps before the first evaluation
    belong to the warm-up epoch and are dropped."""

    def __init__(self) -> None:
        self.stamps: list[tuple[float, bool]] = []

    def attach(self, net: torch.nn.Module) -> torch.nn.Module:
        net.register_forward_pre_hook(lambda module, _: self.stamps.append((time.perf_counter(), module.training)))
        return net

    def median_step(self) -> float:
        steps, warm = [], True
        for (t0, train0), (t1, train1) in zip(self.stamps, self.stamps[1:]):
            warm = warm and train0
            if not warm and train0 and train1:
                steps.append(t1 - t0)
        return median(steps)


@contextmanager
def clocked_trainer(clock: StepClock) -> Iterator[None]:
    """While active, the trainer's network gets `clock`'s hook. The trainer offers no per-step callback, so the
    name it builds with (models.train.loop.build) is wrapped for the run and restored after."""
    original = models.train.loop.build
    models.train.loop.build = lambda *args, **kwargs: clock.attach(original(*args, **kwargs))
    try:
        yield
    finally:
        models.train.loop.build = original


def lenet_case(steps: int, epochs: int | None) -> Case:
    root, epochs = fashion_mnist_root(), epochs or 4
    if root is not None:
        return Case("LeNet", load_spec_variant("lenet.yaml"), root, "Fashion-MNIST (60,000 × 28×28, ../shared/data)",
                    steps, epochs)
    # No offline copy: the embedded digits, resized to LeNet's 28×28 batch by batch (both sides do the same).
    spec = load_spec_variant("lenet.yaml", {"labels": [str(d) for d in range(10)],
                                            "data": {"dataset": "digits", "root": None}})
    return Case("LeNet", spec, None, "scikit-learn digits (1,437 × 8×8) resized to 28×28 per batch", steps, epochs)


def digits_case(epochs: int | None) -> Case:
    # 23 steps (~0.5 s) make a whole epoch: measure whole epochs, and more of them, since a short epoch is
    # easily hit by another job's burst
    return Case("digits_cnn", load_spec_variant("digits_cnn.yaml"), None, "scikit-learn digits (1,437 × 8×8)", None,
                epochs or 8)


# ----------------------------------------------------------------------------------------------- the trainer
def run_trainer(case: Case) -> tuple[Measured, Any]:
    """Train case.epochs epochs in a throwaway run directory; returns the figures and the TrainResult."""
    marks: list[float] = []
    clock = StepClock()
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp, clocked_trainer(clock):
        result = train(case.spec.with_train(epochs=case.epochs), TrainOptions(out=Path(tmp) / "run", device="cpu", quiet=True,
                                               max_steps=case.steps, data_root=case.data_root,
                                               on_epoch=lambda _: marks.append(time.perf_counter())))
        history = result.history
        # on_epoch fires after the epoch's checkpoint and plot, so the gap between two calls is one whole epoch
        whole = [b - a for a, b in zip(marks, marks[1:])]  # epochs 2..E
        loops = [h["seconds"] for h in history[1:]]
        steps = [h["seconds"] / _steps(case, result.task) for h in history[1:]]
    measured = Measured(samples_per_s=median([h["samples_per_s"] for h in history[1:]]), step_s=median(steps),
                        fixed_s=median([w - s for w, s in zip(whole, loops)]), median_step_s=clock.median_step())
    return measured, result


def _steps(case: Case, task) -> int:
    full = task.steps_per_epoch()
    return min(full, case.steps) if case.steps else full


# ----------------------------------------------------------------------------------------------- by hand
def plain_optimizer(spec: Spec, params) -> torch.optim.Optimizer:
    """What someone would write for the spec's optimizer section (one group, no schedule)."""
    t = spec.train
    args = t.optimizer.args
    if t.optimizer.kind == "sgd":
        return torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=t.weight_decay)
    cls = torch.optim.Adam if t.optimizer.kind == "adam" else torch.optim.AdamW
    return cls(params, lr=args.lr, betas=args.betas, weight_decay=t.weight_decay)


def plain_prepare(spec: Spec) -> Callable[[torch.Tensor], torch.Tensor]:
    size = tuple(spec.input.size)
    mean, std = spec.input.mean, spec.input.std

    def prepare(x: torch.Tensor) -> torch.Tensor:  # uint8 (B,C,h,w) → normalized float (B,C,H,W)
        x = x.float() / 255
        if tuple(x.shape[-2:]) != size:
            x = resize_batch(x, size)
        return normalize(x, mean, std)

    return prepare


def run_handwritten(case: Case, splits, seed: int) -> Measured:
    spec = case.spec
    clock = StepClock()
    net = clock.attach(build(spec, seed=seed))
    opt = plain_optimizer(spec, net.parameters())
    prepare = plain_prepare(spec)
    X, Y = splits.train_x, splits.train_y
    batch = spec.data.batch_size
    steps = min(math.ceil(len(X) / batch), case.steps or 10**9)
    loop_s, whole_s = [], []
    with tempfile.TemporaryDirectory(prefix="bench-hand-") as tmp:
        for epoch in range(case.epochs):
            began = time.perf_counter()
            net.train()
            order = torch.randperm(len(X), generator=torch.Generator().manual_seed(seed + epoch))
            samples = 0
            for i in range(steps):
                idx = order[i * batch:(i + 1) * batch]
                x, y = X[idx], Y[idx]
                opt.zero_grad()
                loss = F.cross_entropy(net(prepare(x)), y)
                loss.backward()
                opt.step()
                samples += len(y)
            looped = time.perf_counter()
            net.eval()
            with torch.no_grad():  # the minimal end of an epoch: test accuracy, then save the weights
                correct = sum(int((net(prepare(splits.test_x[i:i + 512])).argmax(1) == splits.test_y[i:i + 512]).sum())
                              for i in range(0, len(splits.test_x), 512))
            torch.save(net.state_dict(), Path(tmp) / "weights.pt")
            done = time.perf_counter()
            assert 0 <= correct <= len(splits.test_x)
            loop_s.append(looped - began)
            whole_s.append(done - began)
    keep = slice(1, None)  # epoch 1 is warm-up
    return Measured(samples_per_s=samples / median(loop_s[keep]), step_s=median(loop_s[keep]) / steps,
                    fixed_s=median([w - s for w, s in zip(whole_s[keep], loop_s[keep])]), median_step_s=clock.median_step())


# ----------------------------------------------------------------------------------------------- fixed costs
def trainer_epoch_costs(result) -> dict[str, float]:
    """The trainer's end-of-epoch steps, timed one by one on its real net and history (a breakdown of fixed_s)."""
    net, history, task = result.net, result.history, result.task
    state = {"epoch": 1, "optimizer": {}, "rng": torch.get_rng_state()}
    with tempfile.TemporaryDirectory(prefix="bench-costs-") as tmp:
        root = Path(tmp)
        counter = iter(range(10**6))

        def checkpoints() -> None:  # a new tag each call, "best" and "last" as an improving epoch writes them
            tag = f"epoch-{next(counter):04d}"
            save_checkpoint(root / "checkpoints", "best", tag, net, state, {"epoch": 1})
            save_checkpoint(root / "checkpoints", "last", tag, net, state, {"epoch": 1})

        run = Run(root)
        return {
            "evaluate": seconds_per_call(lambda: task.evaluate(net), min_calls=3, min_seconds=0),
            "checkpoint (best + last)": seconds_per_call(checkpoints, min_calls=3, min_seconds=0),
            "metrics.json": seconds_per_call(lambda: run.write_json("metrics.json", {"history": history}), min_calls=3,
                                             min_seconds=0),
            "curves.png": seconds_per_call(lambda: plot_curves(history, task.primary, root / "curves.png", "x"),
                                           min_calls=3, min_seconds=0),
        }


# ----------------------------------------------------------------------------------------------- main
@dataclass
class CaseResult:
    case: Case
    trainer: list[Measured]
    hand: list[Measured]
    full_steps: int
    n_train: int
    costs: dict[str, float]

    def whole_epoch_s(self, m: Measured) -> float:
        return self.full_steps * m.step_s + m.fixed_s

    def ratios(self) -> tuple[float, float, float]:
        """trainer/hand speed (>1: the trainer is faster): per epoch, per median step, whole epoch."""
        pairs = list(zip(self.trainer, self.hand))
        return (median([t.samples_per_s / h.samples_per_s for t, h in pairs]),
                median([h.median_step_s / t.median_step_s for t, h in pairs]),
                median([self.whole_epoch_s(h) / self.whole_epoch_s(t) for t, h in pairs]))


def measure(case: Case, rounds: int) -> CaseResult:
    splits = open_dataset(case.spec, case.data_root, case.spec.train.seed)
    last: dict[str, Any] = {}

    def trainer() -> Measured:
        measured, last["result"] = run_trainer(case)
        return measured

    runs = interleave({"trainer": trainer, "hand": lambda: run_handwritten(case, splits, case.spec.train.seed)},
                      rounds, warmup=False)
    for name in ("trainer", "hand"):
        for r, m in enumerate(runs[name]):
            print(f"  {case.name} {name:>7} round {r + 1}: {m.samples_per_s:8,.0f} samples/s hot, "
                  f"{1e3 * m.step_s:7.2f} ms/step in the median epoch, median step {1e3 * m.median_step_s:7.2f} ms, "
                  f"fixed {1e3 * m.fixed_s:7.1f} ms/epoch", flush=True)
    task = last["result"].task
    full = task.steps_per_epoch()
    return CaseResult(case, runs["trainer"], runs["hand"], full, len(task.splits.train_x), trainer_epoch_costs(last["result"]))


def report(results: list[CaseResult], args: argparse.Namespace, threads: int) -> str:
    hot_rows, whole_rows = [], []
    for res in results:
        c, (per_epoch, per_step, whole) = res.case, res.ratios()
        steps = f"{c.steps} of {res.full_steps}" if c.steps and c.steps < res.full_steps else f"all {res.full_steps}"
        hot_rows.append([c.name, c.data_note, c.spec.data.batch_size, steps,
                         fmt(median([t.samples_per_s for t in res.trainer])),
                         fmt(median([h.samples_per_s for h in res.hand])), f"{per_epoch:.3f}",
                         f"{1e3 * median([t.median_step_s for t in res.trainer]):.2f}",
                         f"{1e3 * median([h.median_step_s for h in res.hand]):.2f}", f"**{per_step:.3f}**"])
        whole_rows.append([c.name, fmt(median([res.n_train / res.whole_epoch_s(t) for t in res.trainer])),
                           fmt(median([res.n_train / res.whole_epoch_s(h) for h in res.hand])), f"**{whole:.3f}**",
                           f"{1e3 * median([t.fixed_s for t in res.trainer]):.0f}",
                           f"{1e3 * median([h.fixed_s for h in res.hand]):.0f}",
                           *(f"{1e3 * v:.0f}" for v in res.costs.values())])
    cost_names = [f"{name} ms" for name in results[0].costs] if results else []
    optim = "; ".join(f"{r.case.name}: {r.case.spec.train.optimizer.kind} lr {r.case.spec.train.optimizer.args.lr:g}"
                      + (f", weight decay {r.case.spec.train.weight_decay:g}" if r.case.spec.train.weight_decay else "")
                      + (f", trainer also steps a {r.case.spec.train.schedule.kind} LR schedule"
                         if r.case.spec.train.schedule else "") for r in results)
    return "\n".join([
        "## Training throughput: specserve trainer vs a hand-written PyTorch loop", "",
        f"`{command_line('train_throughput.py')}` — {now()}, {load_note()}. CPU, torch {threads} intra-op "
        f"thread(s), fp32; {args.rounds} interleaved rounds per model, each one run per side of "
        f"{', '.join(f'{r.case.epochs} epochs ({r.case.name})' for r in results)}, epoch 1 of every run dropped as "
        f"warm-up. Same network (models.build.build, same seed), same uint8 tensors, batch size and optimizer "
        f"({optim}). Ratios are trainer speed / hand speed, median of per-round ratios; goal ≥ 0.95.", "",
        "Hot loop (optimizer steps only):", "",
        md_table(["model", "data", "batch", "steps/epoch timed", "trainer samples/s (median epoch)",
                  "hand samples/s (median epoch)", "per-epoch ratio", "trainer median step ms", "hand median step ms",
                  "per-step ratio"], hot_rows, align="llrrrrrrrr"), "",
        "Per epoch = the trainer's own per-epoch `seconds` against the same span of the hand loop; per step = the "
        "median gap between two training forwards of the network (one whole step). A burst from another job on "
        "this shared machine moves an epoch's total but hardly a median step: the per-step ratio is the one to "
        "trust.", "",
        "Whole epoch (a full pass over the training set plus the end-of-epoch work; trainer: evaluation with "
        "torchmetrics, checkpoints, metrics.json, curves.png; hand: a test-accuracy pass and one `torch.save`), "
        "computed as steps per full epoch × measured seconds per step + measured fixed cost per epoch; the "
        "trainer's fixed cost broken down step by step (each timed alone on the run's own net and history):", "",
        md_table(["model", "trainer samples/s", "hand samples/s", "whole-epoch ratio", "trainer fixed ms/epoch",
                  "hand fixed ms/epoch", *cost_names], whole_rows),
    ])


def profile(case: Case, top: int) -> None:
    """cProfile the trainer from the end of epoch 1 on: steady state, without imports and first-call warm-up."""
    profiler = cProfile.Profile()

    def start(_: dict[str, Any]) -> None:
        if not started:
            started.append(True)
            profiler.enable()

    started: list[bool] = []
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        train(case.spec.with_train(epochs=case.epochs), TrainOptions(out=Path(tmp) / "run", device="cpu", quiet=True,
                                      max_steps=case.steps, data_root=case.data_root, on_epoch=start))
        profiler.disable()
    stats = pstats.Stats(profiler).strip_dirs()
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="*", metavar="MODEL", help="lenet and/or digits_cnn (default: both)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved trainer/hand rounds per model")
    p.add_argument("--epochs", type=int, help="epochs per run, the first being warm-up (default: LeNet 4, digits_cnn 8)")
    p.add_argument("--steps", type=int, default=30, help="LeNet: optimizer steps per timed epoch")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (both sides)")
    p.add_argument("--profile", choices=["lenet", "digits_cnn"], help="cProfile one trainer run of this model and exit")
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = p.parse_args(argv)
    if unknown := set(args.models) - {"lenet", "digits_cnn"}:
        p.error(f"unknown model(s) {sorted(unknown)}; choose from lenet, digits_cnn")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.epochs is not None and args.epochs < 2:
        raise SystemExit("--epochs must be >= 2 (the first epoch is warm-up and not counted)")
    set_threads(args.threads)
    cases = {"lenet": lambda: lenet_case(args.steps, args.epochs), "digits_cnn": lambda: digits_case(args.epochs)}
    if args.profile:
        profile(cases[args.profile](), top=30)
        return
    results = []
    for name in args.models or list(cases):
        case = cases[name]()
        print(f"{case.name}: {case.data_note}", flush=True)
        results.append(measure(case, args.rounds))
    text = report(results, args, torch.get_num_threads())
    publish(SECTION, text, write=not args.no_write)


if __name__ == "__main__":
    main()
