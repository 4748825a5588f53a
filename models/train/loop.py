"""The trainer: any spec, on CPU or GPU (mixed precision, channels-last), alone or under torchrun (DDP).

One loop for every task; what differs (batches, loss, metrics) lives in models.train.tasks. An epoch ends with an
evaluation on the held-out split, metrics appended to metrics.json, a curves PNG, and an atomic checkpoint
("last", and "best" by the task's primary metric). `resume=True` restores weights, optimizer, schedule, scaler,
RNG and history, and continues at the next epoch exactly as an uninterrupted run would (data order is a function
of seed and epoch, never of consumed random state).
"""
from __future__ import annotations

import ast
import json
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from models.build import SpecNet, build
from models.train.checkpoint import atomic_write_text, load_checkpoint, save_checkpoint
from models.train.data_source import open_dataset
from models.train.hardware import device_description
from models.train.pretrained import apply_pretrained
from models.train.optim import make_optimizer, make_schedule
from models.train.plots import plot_curves
from models.train.runs import Run, RunError
from models.spec.schema import Spec
from models.train.tasks import StepResult, Task, make_task
from models.errors import SpecserveError


PLOT_EVERY_S = 30.0
# Per-class tables grow with classes² (a 1000-class confusion matrix is ~25 MB of JSON): they stay out of the
# per-epoch history in metrics.json and go, for the best and the last epoch only, to class_metrics.json.
BULKY_METRICS = ("confusion_matrix",)
CLASS_METRICS_FILE = "class_metrics.json"


class TrainError(SpecserveError, RuntimeError):
    """A run that cannot start or continue (the message says why and what to do)."""


@dataclass
class TrainOptions:
    out: Path | None = None  # run directory; default runs/<spec name>
    device: str | None = None  # "cpu", "cuda", "cuda:1"; default: CUDA when present
    data_root: Path | None = None
    resume: bool = False
    max_steps: int | None = None  # stop each epoch after this many steps (smoke tests, benchmarks)
    compile: bool = False  # torch.compile the network
    quiet: bool = False
    on_epoch: Callable[[dict[str, Any]], None] | None = None


@dataclass
class TrainResult:
    run: Run
    history: list[dict[str, Any]]
    final: dict[str, Any]
    net: nn.Module = field(repr=False)
    task: Task = field(repr=False)


# ------------------------------------------------------------------ environment
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_hint: str | None) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and (device_hint or "cuda").startswith("cuda")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(dist.get_rank(), world, local)


def pick_device(requested: str | None, d: Dist) -> torch.device:
    if requested:
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise TrainError(f"--device {requested}: CUDA is not available on this machine")
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and d.world > 1:
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    return device


def _precision(spec: Spec, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for full fp32."""
    choice = spec.train.precision
    if choice == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[choice]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": torch.tensor(np.random.get_state()[1].astype(np.int64)),
             "numpy_pos": int(np.random.get_state()[2]), "python": repr(random.getstate())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate(ast.literal_eval(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------ auxiliary outputs (spec `outputs.aux`)
class _AuxTap(nn.Module):
    """What the training step calls for a net with auxiliary outputs: the net's forward_with_aux, returning the main
    output as the task expects and keeping the auxiliary ones of that call for the loss. It holds the net as its one
    child, so DDP and torch.compile wrap it like the net (same parameters, one forward per step)."""

    def __init__(self, net: SpecNet):
        super().__init__()
        self.net = net
        self.aux: dict[str, torch.Tensor] = {}

    def forward(self, *args: Any) -> Any:
        out, self.aux = self.net.forward_with_aux(*args)
        return out


class _Given(nn.Module):
    """Stands in for the net in a second call of the task's step: gives an auxiliary output already computed, so
    the task's own loss (and its own targets: labels, masks, next values) scores it."""

    def __init__(self, value: torch.Tensor):
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor, *_: Any) -> torch.Tensor:
        assert x.shape[0] == self.value.shape[0], "the step's batch is not the one the auxiliary output came from"
        return self.value


def _rng(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _step(s: "_Session", batch: Any, state: Any) -> StepResult:
    """One training step's loss: the task's loss on the main output, plus Σ weight × the task's loss on each
    auxiliary output. The task scores an auxiliary output by its own step (its public API: it preprocesses the batch
    and knows the targets) with the output given; the random generators are rewound to where the main step began,
    so augmentation draws the same crops and flips and the targets are those of the main output, then set to where
    the main step left them, so the run's random stream is the one it would be without auxiliary outputs."""
    if s.tap is None:
        return s.task.step(s.model, batch, state)
    before = _rng(s.device)
    result = s.task.step(s.model, batch, state)
    after = _rng(s.device)
    loss, stats = result.loss, dict(result.stats)
    for name, value in s.tap.aux.items():
        _set_rng(before, s.device)
        scored = s.task.step(_Given(value), batch, state)
        loss = loss + s.net.aux_weights[name] * scored.loss
        stats[f"{name}.loss"] = scored.stats["loss"]  # a sum over the batch, like the main loss's
    _set_rng(after, s.device)
    s.tap.aux = {}  # free the activations once they are in the graph of the loss
    return StepResult(loss, stats, result.state)


def _running(s: "_Session", totals: dict[str, float]) -> dict[str, float]:
    """The task's running metrics (its `loss` is the main output's), then each auxiliary output's loss and the
    total the optimizer minimised (main + Σ weight × auxiliary)."""
    metrics = s.task.running(totals)
    if not s.net.aux_weights:
        return metrics
    count = max(totals.get("count", 1.0), 1.0)
    total = float(metrics["loss"])
    for name, weight in s.net.aux_weights.items():
        metrics[f"{name}.loss"] = totals[f"{name}.loss"] / count
        total += weight * metrics[f"{name}.loss"]
    metrics["total_loss"] = total
    return metrics


# ------------------------------------------------------------------ the loop
def _reduce(totals: dict[str, torch.Tensor], d: Dist) -> dict[str, float]:
    keys = sorted(totals)
    packed = torch.stack([totals[k].double().cpu() for k in keys])
    if d.world > 1:
        dist.all_reduce(packed)
    return {k: float(v) for k, v in zip(keys, packed)}


class _Progress:
    """A rich progress bar with loss, metric and samples/s (only on the main rank, only on a terminal)."""

    def __init__(self, enabled: bool, description: str, total: int):
        self.bar = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[status]}"), TimeRemainingColumn(), transient=True)
            self.bar.start()
            self.task = self.bar.add_task(description, total=total, status="")

    def update(self, done: int, status: str) -> None:
        if self.bar:
            self.bar.update(self.task, completed=done, status=status)

    def close(self) -> None:
        if self.bar:
            self.bar.stop()


def _format(metrics: dict[str, Any]) -> str:
    return " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))


@dataclass
class _Session:
    """Everything the epochs of one run share, made once by `_setup`."""

    spec: Spec
    options: TrainOptions
    d: Dist
    device: torch.device
    run: Run
    task: Task
    net: SpecNet
    model: nn.Module  # net (or its _AuxTap), or its DDP / compiled wrapper: what the steps call
    tap: _AuxTap | None  # with auxiliary outputs: the module that keeps them for the loss
    optimizer: torch.optim.Optimizer
    schedule: Any
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    steps_per_epoch: int
    hardware: str
    history: list[dict[str, Any]] = field(default_factory=list)
    best: float | None = None
    stale: int = 0
    start_epoch: int = 1
    last_plot: float = float("-inf")

    @property
    def epochs(self) -> int:
        return self.spec.train.epochs  # command-line overrides are already merged into the spec


def _setup(spec: Spec, options: TrainOptions) -> _Session:
    """Device, data, network, optimizer and schedule of a run; its state restored when resuming."""
    d = _init_distributed(options.device)
    device = pick_device(options.device, d)
    run = Run(options.out or Path("runs") / spec.name)
    if run.exists() and not options.resume:
        raise TrainError(f"{run.path} already holds a run; pass --resume to continue it or --out for a new one")
    if options.resume and not run.exists():
        raise TrainError(f"{run.path}: nothing to resume (no checkpoints/last.json)")
    seed_everything(spec.train.seed)
    task = make_task(spec, open_dataset(spec, options.data_root, spec.train.seed, quiet=options.quiet), device)
    net = build(spec, device=device, seed=spec.train.seed)
    task.check_network(net)  # outputs against the data's classes, before any step
    lr_scales = apply_pretrained(net, spec)
    image = spec.input.kind == "image"
    channels_last = spec.train.channels_last is True or (spec.train.channels_last == "auto" and device.type == "cuda" and image)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    tap = _AuxTap(net) if net.aux_weights else None
    model: nn.Module = tap if tap is not None else net
    if d.world > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if options.compile:
        model = torch.compile(model)
    steps_per_epoch = task.steps_per_epoch(d.world)
    if options.max_steps:
        steps_per_epoch = min(steps_per_epoch, options.max_steps)
    optimizer = make_optimizer(net, spec, lr_scales)
    amp_dtype = _precision(spec, device)
    s = _Session(spec, options, d, device, run, task, net, model, tap, optimizer,
                 make_schedule(optimizer, spec, steps_per_epoch),
                 torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16), amp_dtype, steps_per_epoch,
                 device_description(device, d.world))
    if options.resume:
        ckpt = load_checkpoint(run.checkpoints, "last")
        net.load_state_dict(ckpt.weights)
        optimizer.load_state_dict(ckpt.state["optimizer"])
        s.schedule.load_state_dict(ckpt.state["schedule"])
        s.scaler.load_state_dict(ckpt.state["scaler"])
        _set_rng_state(ckpt.state["rng"])
        s.history = run.read_json("metrics.json")["history"]
        s.best, s.stale = ckpt.state["best"], ckpt.state["stale"]
        s.start_epoch = ckpt.state["epoch"] + 1
    elif d.main:
        run.write_spec(spec)
        run.write_json("task.json", {"task": spec.task, "primary": task.primary, **task.info})
    return s


def _train_epoch(s: _Session, epoch: int) -> tuple[dict[str, float], int, float]:
    """One pass over this rank's training batches: (running metrics, samples seen, seconds)."""
    s.model.train()
    if s.spec.backbone is not None and s.spec.backbone.freeze:
        s.net.backbone.eval()
    generator = torch.Generator().manual_seed(s.spec.train.seed * 100_003 + epoch)
    autocast = (lambda: torch.autocast(s.device.type, dtype=s.amp_dtype)) if s.amp_dtype else nullcontext
    clip = s.spec.train.clip_grad_norm
    totals: dict[str, torch.Tensor] = {}
    state = None
    samples, began = 0, time.perf_counter()
    progress = _Progress(s.d.main and not s.options.quiet and os.isatty(1), f"epoch {epoch}/{s.epochs}",
                         s.steps_per_epoch)
    for step, batch in enumerate(s.task.train_batches(generator, s.d.rank, s.d.world)):
        if step >= s.steps_per_epoch:
            break
        with autocast():
            result = _step(s, batch, state)
        state = result.state
        s.optimizer.zero_grad(set_to_none=True)
        s.scaler.scale(result.loss).backward()
        if clip:
            s.scaler.unscale_(s.optimizer)
            nn.utils.clip_grad_norm_(s.net.parameters(), clip)
        s.scaler.step(s.optimizer)
        s.scaler.update()
        s.schedule.step()
        for k, v in result.stats.items():
            totals[k] = totals[k] + v.to(totals[k].device) if k in totals else v.clone()
        samples += s.task.sample_size(batch)
        if progress.bar is not None and step % 20 == 0:  # .item() syncs with the GPU: only when a bar shows it
            progress.update(step + 1, f"loss {result.loss.item():.4f} {samples / (time.perf_counter() - began):,.0f}/s")
    progress.close()
    if s.device.type == "cuda":  # kernels still queued belong to this epoch: count them in seconds and samples/s
        torch.cuda.synchronize(s.device)
    return _running(s, _reduce(totals, s.d)), samples, time.perf_counter() - began


def _end_epoch(s: _Session, epoch: int, train_metrics: dict[str, float], samples: int, seconds: float) -> bool:
    """Evaluate, record, checkpoint and plot after an epoch; True when the run stops early."""
    d, task = s.d, s.task
    test_metrics = task.evaluate(s.net) if d.main else {}
    bulky = {k: test_metrics.pop(k) for k in BULKY_METRICS if k in test_metrics}
    primary = test_metrics.get(task.primary) if d.main else None
    if d.world > 1:
        shared = [primary]
        dist.broadcast_object_list(shared, src=0)
        primary = shared[0]
    improved = primary is not None and (s.best is None or (primary > s.best if task.higher_is_better else primary < s.best))
    if improved:
        s.best, s.stale = primary, 0
    else:
        s.stale += 1
    record = {"epoch": epoch, "train": train_metrics, "test": test_metrics, "seconds": seconds,
              "samples_per_s": samples * d.world / seconds, "lr": s.optimizer.param_groups[0]["lr"]}
    data = _data_report(task, d)
    if data is not None:  # file datasets with skip_bad_files: how many files were left out as unreadable
        record["data"] = data
    s.history.append(record)
    early = s.spec.train.early_stopping
    stopping = early is not None and s.stale >= early.patience
    if d.main:
        state_payload = {"epoch": epoch, "optimizer": s.optimizer.state_dict(), "schedule": s.schedule.state_dict(),
                         "scaler": s.scaler.state_dict(), "rng": _rng_state(), "best": s.best, "stale": s.stale}
        tag = f"epoch-{epoch:04d}"
        info = {"epoch": epoch, task.primary: primary}
        if improved:
            save_checkpoint(s.run.checkpoints, "best", tag, s.net, state_payload, info)
        save_checkpoint(s.run.checkpoints, "last", tag, s.net, state_payload, info)
        if bulky:
            _write_class_metrics(s.run, {"epoch": epoch, **bulky}, improved)
        # complete: the run ended (last epoch, or early stopping), so readers need not count epochs
        s.run.write_json("metrics.json", {"primary": task.primary, "hardware": s.hardware, "history": s.history,
                                          "final": test_metrics, "complete": stopping or epoch == s.epochs})
        # drawing takes 130-200 ms (measured): on fast epochs redraw at most every 30 s, and always at the end
        if stopping or epoch == s.epochs or time.monotonic() - s.last_plot > PLOT_EVERY_S:
            plot_curves(s.history, task.primary, s.run.path / "curves.png", s.spec.name)
            task.figures(s.net, s.run.path)
            s.last_plot = time.monotonic()
        if not s.options.quiet:
            print(f"epoch {epoch}/{s.epochs}  train {_format(train_metrics)}  test {_format(test_metrics)}  "
                  f"{record['samples_per_s']:,.0f} samples/s  {seconds:.1f}s", flush=True)
    if s.options.on_epoch:
        s.options.on_epoch(record)
    if stopping and d.main and not s.options.quiet:
        print(f"early stopping: {task.primary} did not improve for {early.patience} epochs", flush=True)
    return stopping


def _data_report(task: Task, d: Dist) -> dict[str, Any] | None:
    """What the data says about this run so far (bad files skipped, with skip_bad_files), every rank's files counted
    once; the first 10 named."""
    report = task.data_report()
    if report is None:
        return None
    files = set(report.get("bad_files", []))
    if d.world > 1:
        gathered: list[Any] = [None] * d.world
        dist.all_gather_object(gathered, sorted(files))
        files = {f for part in gathered for f in part}
    return {**report, "bad_files_skipped": len(files), "bad_files": sorted(files)[:10]}


def _write_class_metrics(run: Run, entry: dict[str, Any], improved: bool) -> None:
    """class_metrics.json = {"last": entry, "best": the best epoch's entry}, compact (no indentation)."""
    path = run.path / CLASS_METRICS_FILE
    best = entry if improved or not path.exists() else json.loads(path.read_text()).get("best", entry)
    atomic_write_text(path, json.dumps({"last": entry, "best": best}, separators=(",", ":")))


def train(spec: Spec, options: TrainOptions | None = None) -> TrainResult:
    """Train `spec` for spec.train.epochs (merge command-line overrides into the spec first: models.spec.overrides)."""
    s = _setup(spec, options or TrainOptions())
    try:
        for epoch in range(s.start_epoch, s.epochs + 1):
            if _end_epoch(s, epoch, *_train_epoch(s, epoch)):
                break
    finally:
        s.task.close()  # streamed data: stop its reader processes (result.task reopens them if used again)
    if s.d.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    final = s.history[-1]["test"] if s.history else {}
    return TrainResult(s.run, s.history, final, s.net, s.task)


def evaluate_run(run_dir: Path, kind: str = "best", data_root: Path | None = None,
                 device: str | None = None) -> dict[str, Any]:
    """Rebuild a run's network from its spec and checkpoint, and evaluate it on the held-out split."""
    run = Run(run_dir)
    spec = run.load_spec()
    dev = pick_device(device, Dist())
    net = build(spec, device=dev)
    try:
        net.load_state_dict(load_checkpoint(run.checkpoints, kind, with_state=False).weights)
    except RuntimeError as err:
        raise RunError(f"{run.path}: checkpoint does not fit the spec ({str(err).splitlines()[0]})") from None
    task = make_task(spec, open_dataset(spec, data_root, spec.train.seed), dev)
    return task.evaluate(net)
