"""CPU inference: onnxruntime vs torch eager, specserve's export vs a plain dynamo export, int8 vs fp32.

    .venv/bin/python benchmarks/inference.py                      # all four models, writes BENCHMARKS.md
    .venv/bin/python benchmarks/inference.py lenet char_gru --rounds 3 --no-write
    .venv/bin/python benchmarks/inference.py --run runs/lenet     # int8 accuracy of an existing trained run

Models (random weights from `models.build.build`, seed 0 — speed does not depend on the weights): LeNet
(1×28×28), ResNet-18 (1×96×96), the FCN (specs/fcn.yaml with input.size reduced to 64×96, 3 channels) and the
char GRU (specs/char_gru.yaml, step form: tokens (B, 35) + state in, logits + state out).

For each model, in one process, with the same intra-op thread count for torch and onnxruntime (--threads,
default 1; inter-op 1):
  * torch eager: the module the exported graph computes (`models.export.onnx_graph.graph_module`: uint8 NHWC pixels →
    normalize → net, or the GRU's step form) under torch.inference_mode;
  * product: `models.export.onnx_graph.export_net` (the exporter it picks, the card, BASIC offline optimization) run by
    `models.artifact.runtime.make_session`;
  * hand: the same module through one plain `torch.onnx.export(..., dynamo=True)` with a dynamic batch axis,
    run by the same kind of session;
  * int8: `models.export.quantize.quantize` of the product file (static QDQ for CNNs, dynamic MatMul/Gemm for the GRU).
The candidates are timed interleaved (round-robin, order reversed every other round); each measurement is
the median of ≥ 0.25 s of back-to-back calls on the same input, and the table gives the median over rounds.

int8 accuracy needs trained weights: --run DIR uses a trained run; otherwise LeNet is trained briefly here
on Fashion-MNIST (or, without the files, digits_cnn on the bundled digits), and the fp32 and int8 files are
scored on the held-out images.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.common import (command_line, cpu_flags, fashion_mnist_root, fmt, interleave, load_note, load_spec_variant,  # noqa: E402
                               md_table, median, now, seconds_per_call, publish, set_threads)
from models.build import build  # noqa: E402
from models.artifact.card import ModelCard, TokenInput  # noqa: E402
from models.artifact.isa import cpu_isa, full_range_weights  # noqa: E402
from models.data import Vocab, resize_batch  # noqa: E402
from models.export.onnx_graph import ExportResult, TokenStep, export_net, graph_feeds, graph_module  # noqa: E402
from models.pipeline import make_card  # noqa: E402
from models.export.quantize import QuantReport, quantize  # noqa: E402
from models.artifact.runtime import make_session, runtime_ops  # noqa: E402
from models.spec.schema import Spec  # noqa: E402

SECTION = "inference"
BATCHES = (1, 64)


@dataclass(frozen=True)
class ModelDef:
    key: str
    label: str
    spec_file: str
    overrides: dict[str, Any]
    shape: str  # what one request holds, for the table


MODELS = {
    "lenet": ModelDef("lenet", "LeNet", "lenet.yaml", {}, "1×28×28"),
    "resnet18": ModelDef("resnet18", "ResNet-18", "resnet18.yaml", {}, "1×96×96"),
    "fcn": ModelDef("fcn", "FCN (ResNet-18 backbone)", "fcn.yaml", {"input": {"size": [64, 96]}}, "3×64×96"),
    "char_gru": ModelDef("char_gru", "char GRU (step form)", "char_gru.yaml", {}, "35 tokens + state"),
}


# ----------------------------------------------------------------------------------------------- preparing
def card_for(spec: Spec) -> ModelCard:
    """The card a trained run would get: labels from the spec, the course vocabulary for the char model."""
    info: dict[str, Any] = {"labels": spec.labels}
    if spec.input.kind == "tokens":
        info["vocab"] = Vocab.build("", spec.data.options.get("vocab", "course")).to_dict()
    return make_card(spec, info, {})


def client_data(spec: Spec, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n random client-side samples and labels: uint8 (n,H,W,C) pixels or int64 (n,T) tokens."""
    rng = np.random.default_rng(seed)
    if spec.input.kind == "tokens":
        tokens = rng.integers(0, spec.input.vocab, (n, spec.input.sample_shape()[0] + 1))  # (n, T+1)
        return tokens[:, :-1], tokens[:, 1:]
    h, w = spec.input.size
    pixels = rng.integers(0, 256, (n, h, w, spec.input.channels), dtype=np.uint8)
    k = len(spec.labels or [0] * 10)
    labels = rng.integers(0, k, (n,) if spec.task == "classification" else (n, h, w))
    return pixels, labels


def hand_export(module: nn.Module, args: tuple[torch.Tensor, ...], names: list[str], outputs: list[str],
                path: Path, opset: int) -> None:
    """What one would write by hand: a single dynamo export with only the batch axis dynamic."""
    batch = torch.export.Dim("batch")
    if isinstance(module, TokenStep):  # forward(tokens, *state): the varargs' shapes go in one nested tuple
        shapes: tuple = ({0: batch}, tuple({0: batch} for _ in args[1:]))
    else:
        shapes = tuple({0: batch} for _ in args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        program = torch.onnx.export(module, args, dynamo=True, input_names=names, output_names=outputs,
                                    dynamic_shapes=shapes, opset_version=opset, verbose=False)
    program.save(str(path))


@dataclass
class Prepared:
    model: ModelDef
    spec: Spec
    card: ModelCard
    module: nn.Module
    export: ExportResult
    hand: Path
    int8: Path
    quant: QuantReport
    inputs: np.ndarray
    kib: dict[str, float] = field(default_factory=dict)  # file sizes (the files live in a temporary folder)
    same_ops: bool = False  # product and hand run the same operators once onnxruntime has optimized them
    sessions: dict[str, Any] = field(default_factory=dict)
    max_diff: dict[str, float] = field(default_factory=dict)


def prepare(model: ModelDef, work: Path, threads: int) -> Prepared:
    spec = load_spec_variant(model.spec_file, model.overrides)
    net = build(spec, seed=0).eval()
    data, labels = client_data(spec, 192)
    folder = work / model.key
    exported = export_net(net, card_for(spec), folder, example_inputs=data[:4], opset=spec.export.opset)
    card = exported.card
    module = graph_module(net, card)
    # the hand export gets the same module, example and tensor names (so one feed dict serves both files)
    session = make_session(exported.path, threads)
    example = tuple(torch.from_numpy(a) for a in graph_feeds(session, card, data[:4]))
    hand = folder / "hand.onnx"
    hand_export(module, example, card.io.graph_inputs, card.io.graph_outputs, hand, spec.export.opset)
    int8 = folder / "int8.onnx"
    method = "dynamic" if isinstance(card.input, TokenInput) else "static"
    # max_drop=1: never refuse here, the table reports what int8 does; latency_runs=1: timed below, interleaved
    quant = quantize(exported.path, int8, eval_inputs=data[:128], eval_labels=labels[:128], max_drop=1.0,
                     calibration=data[128:192], method=method, threads=threads, latency_runs=1,
                     require_speedup=False)
    kib = {name: path.stat().st_size / 1024 for name, path in (("product", exported.path), ("hand", hand), ("int8", int8))}
    # two files whose optimized graphs run the same operators differ in speed only by noise
    same = sorted(runtime_ops(exported.path, threads)) == sorted(runtime_ops(hand, threads))
    return Prepared(model, spec, card, module, exported, hand, int8, quant, data, kib, same)


# ----------------------------------------------------------------------------------------------- timing
def runners(p: Prepared, batch: int, threads: int) -> dict[str, Callable[[], float]]:
    """One timing function per candidate (median seconds per call at `batch`), and the outputs' max |Δ| vs torch."""
    data = np.resize(p.inputs, (batch, *p.inputs.shape[1:])).astype(p.inputs.dtype)  # (batch, ...)
    if not p.sessions:
        p.sessions = {name: make_session(path, threads) for name, path in
                      (("product", p.export.path), ("hand", p.hand), ("int8", p.int8))}
    feeds = graph_feeds(p.sessions["product"], p.card, data)
    named = dict(zip(p.card.io.graph_inputs, feeds))
    tensors = [torch.from_numpy(np.ascontiguousarray(f)) for f in feeds]

    def torch_call() -> Any:
        with torch.inference_mode():
            return p.module(*tensors)

    want = torch_call()
    want = (want if isinstance(want, tuple) else (want,))[0].numpy()
    calls: dict[str, Callable[[], Any]] = {"torch eager": torch_call}
    for name, session in p.sessions.items():
        got = session.run(None, named)[0]
        p.max_diff[f"{name}@{batch}"] = float(np.max(np.abs(got - want)))
        calls[f"ort {name}"] = lambda s=session: s.run(None, named)
    return {name: (lambda f=fn: seconds_per_call(f, min_seconds=0.25, min_calls=2)) for name, fn in calls.items()}


@dataclass
class Timing:
    model: Prepared
    batch: int
    seconds: dict[str, list[float]]

    def ms(self, name: str) -> float:
        return 1e3 * median(self.seconds[name])

    def speed_ratio(self, fast: str, slow: str) -> float:
        """How many times faster `fast` ran than `slow`: median over rounds of the paired ratio."""
        return median([b / a for a, b in zip(self.seconds[fast], self.seconds[slow])])


def time_all(prepared: list[Prepared], rounds: int, threads: int) -> list[Timing]:
    timings = []
    for p in prepared:
        for batch in BATCHES:
            seconds = interleave(runners(p, batch, threads), rounds)
            t = Timing(p, batch, seconds)
            print(f"  {p.model.label:<26} batch {batch:>2}: " + "  ".join(f"{n} {t.ms(n):8.2f} ms" for n in seconds),
                  flush=True)
            timings.append(t)
    return timings


# ----------------------------------------------------------------------------------------------- int8 accuracy
@dataclass
class Accuracy:
    source: str
    report: QuantReport
    max_drop: float  # what the spec would accept


def trained_accuracy(run_dir: Path | None, threads: int, eval_samples: int) -> Accuracy:
    """fp32 vs int8 on held-out images of a trained CNN: `run_dir`, or a LeNet/digits model trained here."""
    from models.train.checkpoint import load_checkpoint
    from models.train.data_source import open_dataset
    from models.train.runs import Run
    from models.train.tasks import make_task
    from models.train.loop import TrainOptions, train

    with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
        if run_dir is not None:
            run = Run(run_dir)
            spec = run.load_spec()
            net = build(spec)
            net.load_state_dict(load_checkpoint(run.checkpoints, "best", with_state=False).weights)
            task = make_task(spec, open_dataset(spec, fashion_mnist_root(), spec.train.seed), torch.device("cpu"))
            final = run.read_json("metrics.json").get("final", {})
            source = f"trained run `{run_dir}` ({spec.name}, test accuracy {final.get('accuracy', float('nan')):.4f})"
        else:
            root = fashion_mnist_root()
            spec, epochs = ((load_spec_variant("lenet.yaml"), 2) if root is not None
                            else (load_spec_variant("digits_cnn.yaml"), 15))
            result = train(spec.with_train(epochs=epochs), TrainOptions(out=Path(tmp) / "run", device="cpu", quiet=True,
                                              data_root=root))
            net, task = result.net, result.task
            source = (f"{spec.name} trained here for {epochs} epochs on "
                      f"{'Fashion-MNIST' if root else 'scikit-learn digits'} (test accuracy "
                      f"{result.final['accuracy']:.4f})")
        net = net.cpu().eval()
        splits = task.splits
        n = min(eval_samples, len(splits.test_x))
        real = task.parity_inputs(n)  # the first n held-out images as client pixels, with labels
        calibration = resize_batch(splits.train_x[:256], tuple(spec.input.size)).permute(0, 2, 3, 1).numpy()
        exported = export_net(net, card_for(spec), Path(tmp) / "export", example_inputs=real["inputs"][:4],
                              opset=spec.export.opset)
        report = quantize(exported.path, Path(tmp) / "int8.onnx", eval_inputs=real["inputs"],
                          eval_labels=real["labels"], max_drop=1.0, calibration=calibration, method="static",
                          threads=threads, latency_runs=20, require_speedup=False)
    return Accuracy(source, report, spec.export.max_accuracy_drop)


# ----------------------------------------------------------------------------------------------- report
def report(timings: list[Timing], accuracy: Accuracy | None, args: argparse.Namespace) -> str:
    rows = []
    for t in timings:
        p = t.model
        rows.append([p.model.label, p.model.shape, t.batch, fmt(t.ms("torch eager")), fmt(t.ms("ort product")),
                     fmt(t.ms("ort hand")), fmt(t.ms("ort int8")),
                     f"{t.speed_ratio('ort product', 'torch eager'):.2f}×",
                     f"**{t.speed_ratio('ort product', 'ort hand'):.2f}**",
                     f"{t.speed_ratio('ort int8', 'ort product'):.2f}×"])
    exports = []
    for p in {id(t.model): t.model for t in timings}.values():
        rejected = "; ".join(f"{k}: {v[:60]}" for k, v in p.export.rejected.items()) or "–"
        diffs = " / ".join(f"{p.max_diff.get(f'{name}@64', float('nan')):.1e}" for name in ("product", "hand", "int8"))
        exports.append([p.model.label, p.export.exporter, rejected, *(f"{p.kib[n]:,.0f}" for n in ("product", "hand", "int8")),
                        "yes" if p.same_ops else "**no**", p.quant.method.split(",")[0], diffs])
    parts = [
        "## Inference on CPU: onnxruntime vs torch eager, product export vs plain dynamo export, int8 vs fp32", "",
        f"`{command_line('inference.py')}` — {now()}, {load_note()}. torch and onnxruntime both with {args.threads} "
        f"intra-op thread(s), inter-op 1, CPU provider; random weights (seed 0); {args.rounds} interleaved rounds, "
        f"each the median of ≥ 0.25 s of back-to-back calls; table = median over rounds. Inputs are what a client "
        f"sends: uint8 pixels (the graph normalizes) or int64 tokens with zero state. int8 was quantized and timed on "
        f"this CPU: level **{cpu_isa()}** ({cpu_flags()}), hence "
        f"{'full 8-bit' if full_range_weights(cpu_isa()) else '7-bit (reduce_range)'} weights; the export keeps an "
        f"int8 graph only where it is faster than fp32 at batch 1 and 64 (the speed-up column says which would be "
        f"kept).", "",
        md_table(["model", "input", "batch", "torch eager ms", "ort product ms", "ort hand ms", "ort int8 ms",
                  "ort vs torch", "product/hand speed (goal ≥ 0.95)", "int8 speed-up"], rows, align="llrrrrrrrr"), "",
        "Speed ratios are medians of per-round ratios (>1 = the first named is faster). product = "
        "`models.export.onnx_graph.export_net` (exporter chosen by it, card metadata, BASIC offline optimization); hand = one "
        "`torch.onnx.export(graph_module, dynamo=True)` with a dynamic batch axis; int8 = `models.export.quantize.quantize` "
        "of the product file.", "",
        md_table(["model", "product exporter", "rejected exporters", "product KiB", "hand KiB", "int8 KiB",
                  "product and hand run the same ops", "int8 method",
                  "max abs diff vs torch at batch 64 (product / hand / int8)"], exports, align="lllrrrlll"), "",
        "\"Same ops\": the operator lists of the graphs onnxruntime actually runs (after all its optimizations on this "
        "CPU) match, so a product/hand speed ratio away from 1.00 there is measurement noise.",
    ]
    if accuracy is not None:
        r = accuracy.report
        verdict = "accepted" if r.drop <= accuracy.max_drop and r.faster else (
            "would be refused (slower)" if r.drop <= accuracy.max_drop else "would be refused (accuracy)")
        parts += ["", f"int8 accuracy on held-out Fashion-MNIST images: {accuracy.source}; {r.method}; calibrated on "
                      f"{r.calibration_samples} training images; scored on {r.eval_samples} test images. Latency here "
                      f"is quantize's own (median of 20 calls each, fp32 and int8 taking turns).", "",
                  md_table(["fp32 accuracy", "int8 accuracy", "change", f"spec max drop {accuracy.max_drop:g}",
                            "fp32 ms b1", "int8 ms b1", "fp32 ms b64", "int8 ms b64", "size KiB fp32 → int8"],
                           [[f"{r.fp32_score:.4f}", f"{r.int8_score:.4f}", f"{r.int8_score - r.fp32_score:+.4f}",
                             verdict, fmt(r.latency_ms['fp32']['1']), fmt(r.latency_ms['int8']['1']),
                             fmt(r.latency_ms['fp32']['64']), fmt(r.latency_ms['int8']['64']),
                             f"{r.fp32_bytes / 1024:,.0f} → {r.int8_bytes / 1024:,.0f}"]], align="r" * 9)]
    return "\n".join(parts)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="*", metavar="MODEL", help=f"any of {', '.join(MODELS)} (default: all)")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads for torch and onnxruntime")
    p.add_argument("--run", type=Path, help="a trained image-classification run for the int8 accuracy check")
    p.add_argument("--eval-samples", type=int, default=10_000, help="held-out images scored for int8 accuracy")
    p.add_argument("--no-accuracy", action="store_true", help="skip the trained-model int8 accuracy check")
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = p.parse_args(argv)
    if unknown := set(args.models) - set(MODELS):
        p.error(f"unknown model(s) {sorted(unknown)}; choose from {', '.join(MODELS)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    set_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        prepared = []
        for key in args.models or list(MODELS):
            print(f"exporting and quantizing {MODELS[key].label} ...", flush=True)
            prepared.append(prepare(MODELS[key], Path(tmp), args.threads))
        timings = time_all(prepared, args.rounds, args.threads)
    accuracy = None
    if not args.no_accuracy:
        print("int8 accuracy on a trained model ...", flush=True)
        accuracy = trained_accuracy(args.run, args.threads, args.eval_samples)
    text = report(timings, accuracy, args)
    publish(SECTION, text, write=not args.no_write)


if __name__ == "__main__":
    main()
