"""The line after training: a run → ONNX (proven) → int8 (if the spec asks and it keeps accuracy) → the store.

`export_run` reads only the run directory (spec, task.json, checkpoint, metrics) and the dataset for real samples;
`export_spec` exports a spec without a run (its initialisation or a weights file, proven on generated inputs);
`store_export` saves what export wrote; `run_line` is `specserve run`: validate → train → export → verify → store.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.build import build, infer
from models.artifact.card import FeatureInput, ImageInput, ModelCard, SeriesInput, TokenInput
from models.train.checkpoint import atomic_write_text, load_checkpoint
from models.train.data_source import open_dataset
from models.export.onnx_graph import ExportError, ExportResult, export_net, to_fp16
from models.export.parity import ParityReport, check_parity
from models.export.tolerance import FP16_TOLERANCE, Tolerance
from models.export.quantize import QuantRefused, QuantReport, quantize
from models.train.runs import Run
from models.spec.schema import Spec
from models.spec.load import load_spec
from models.spec.overrides import with_train_overrides
from models.artifact.store import FP16_FILE, FP16_PARITY_FILE, INT8_FILE, ONNX_FILE, save_to_store
from models.train.tasks import make_task
from models.train.loop import TrainOptions, TrainResult, train
from models.train.weights_import import import_weights


@dataclass
class Exported:
    directory: Path
    card: ModelCard
    export: ExportResult
    parity: ParityReport
    quant: QuantReport | None  # the int8 measurement, accepted or refused (model.int8.onnx exists when accepted)
    quant_note: str | None  # why there is no int8 model, when the spec asked for one
    fp16_parity: ParityReport | None = None  # the proof of model.fp16.onnx, when the spec asks for one


def _numeric(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def make_card(spec: Spec, info: dict[str, Any], metrics: dict[str, Any]) -> ModelCard:
    """The model card from the spec and what the data told the run (labels, vocabulary, scaling)."""
    i = spec.input
    if i.kind == "image":
        channels = i.channels
        card_input: Any = ImageInput(channels=channels, size=tuple(i.size), mean=i.mean or [0.0] * channels,
                                     std=i.std or [1.0] * channels)
    elif i.kind == "tokens":
        # a text classifier's run also records how texts become ids (models/artifact/text.py)
        card_input = TokenInput(vocab=info["vocab"]["tokens"], text=info.get("text"))
    elif i.kind == "series":
        # a trained run always records its fitted scaling (kind and numbers); random-weight exports (zoo parity,
        # tests) saw no data, so their graph takes raw values
        card_input = SeriesInput(window=i.window, scaling=info.get("scaling", {"kind": "none"}))
    else:
        card_input = FeatureInput(count=i.features)
    return ModelCard(name=spec.name, spec_hash=spec.spec_hash(), task=spec.task, input=card_input,
                     labels=info.get("labels"), metrics=_numeric(metrics))


def export_run(run_dir: Path, *, data_root: Path | None = None, checkpoint: str = "best",
               quantize_method: str | None = None, samples: int = 256, quiet: bool = False) -> Exported:
    """Export a run's checkpoint to run_dir/export: model.onnx (+ model.int8.onnx), parity.json, quant.json."""
    run = Run(run_dir)
    spec = run.load_spec()
    info = run.read_json("task.json")
    chosen = load_checkpoint(run.checkpoints, checkpoint, with_state=False)
    history = run.read_json("metrics.json")["history"]
    # the card carries the held-out metrics of the epoch whose weights are exported, not of the last epoch
    metrics = next((h["test"] for h in history if h["epoch"] == chosen.pointer["epoch"]), history[-1]["test"])
    net = build(spec)
    net.load_state_dict(chosen.weights)
    task = make_task(spec, open_dataset(spec, data_root, spec.train.seed), torch.device("cpu"))
    real = task.parity_inputs(samples)
    return _export_and_prove(spec, net, make_card(spec, info, metrics), run.path / "export", real["inputs"],
                             real.get("labels"), quantize_method, quiet)


def generated_inputs(spec: Spec, n: int, seed: int = 0) -> np.ndarray:
    """n client-side samples of the spec's input kind, for proving a graph that has no data: uint8 pixels
    (N, H, W, C), windows (N, τ) or feature vectors (N, F) from a seeded generator."""
    rng = np.random.default_rng(seed)
    i = spec.input
    if i.kind == "image":
        return rng.integers(0, 256, (n, *i.size, i.channels), dtype=np.uint8)
    return rng.standard_normal((n, *i.sample_shape())).astype(np.float32)


def export_spec(spec: Spec, weights: str | Path, *, out: Path, seed: int = 0, quantize_method: str | None = None,
                samples: int = 256, quiet: bool = False) -> Exported:
    """Export a spec without a run: its initialisation (weights="init", seeded) or a weights file (safetensors or
    torch state_dict, mapped by order and shape, every tensor required). Parity runs on generated inputs."""
    if spec.input.kind == "tokens":
        raise ExportError(f"{spec.name}: a token model's vocabulary comes from its training text; train it "
                          f"(specserve train) and export the run")
    net = build(spec, seed=seed)
    info: dict[str, Any] = {"source": "init" if str(weights) == "init" else str(weights)}
    if str(weights) != "init":
        report = import_weights(net, weights, strict=True)
        info["weights_import"] = report.to_dict()
        if not quiet:
            print(report.summary(), flush=True)
    if spec.task in ("classification", "segmentation"):
        classes = infer(spec).output[0 if spec.task == "segmentation" else -1]
        info["labels"] = spec.labels or [str(c) for c in range(classes)]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "source.json", json.dumps(info, indent=2))
    return _export_and_prove(spec, net, make_card(spec, info, {}), out, generated_inputs(spec, samples, seed), None,
                             quantize_method, quiet)


def _export_and_prove(spec: Spec, net: nn.Module, card: ModelCard, out: Path, inputs: np.ndarray,
                      labels: np.ndarray | None, quantize_method: str | None, quiet: bool) -> Exported:
    """ONNX → parity proof (the spec's tolerance for the exporter's check and the proof) → int8 if asked."""
    net.eval()
    tolerance = Tolerance(spec.export.parity_atol, spec.export.parity_rtol)
    exported = export_net(net, card, out, example_inputs=inputs[:4], opset=spec.export.opset, tolerance=tolerance)
    parity = check_parity(exported.path, net, inputs, labels=labels, tolerance=tolerance)
    atomic_write_text(out / "parity.json", parity.to_json())
    if not quiet:
        print(parity.summary(), flush=True)
    fp16_parity = None
    (out / FP16_FILE).unlink(missing_ok=True)  # never keep a graph from an earlier export of other weights
    if spec.export.fp16:
        to_fp16(exported.path, out / FP16_FILE)
        fp16_parity = check_parity(out / FP16_FILE, net, inputs, labels=labels, tolerance=FP16_TOLERANCE)
        atomic_write_text(out / FP16_PARITY_FILE, fp16_parity.to_json())
        if not quiet:
            print(fp16_parity.summary(), flush=True)
    method = quantize_method or spec.export.quantize
    quant, note = None, None
    (out / INT8_FILE).unlink(missing_ok=True)
    if method != "none":
        if labels is None:
            note = "int8 skipped: no labelled samples to measure its accuracy"
        else:
            try:
                quant = quantize(exported.path, out / INT8_FILE, eval_inputs=inputs, eval_labels=labels,
                                 max_drop=spec.export.max_accuracy_drop, calibration=inputs, method=method,
                                 calibrate=spec.export.calibration,
                                 require_speedup=spec.export.require_int8_speedup)
                atomic_write_text(out / "quant.json", quant.to_json())
            except QuantRefused as refused:
                quant, note = refused.report, str(refused)
                atomic_write_text(out / "quant.json", refused.report.to_json())
        if not quiet:
            print(note or quant.summary(), flush=True)
    return Exported(out, exported.card, exported, parity, quant, note, fp16_parity)


def store_export(exported: Exported) -> str:
    files = {ONNX_FILE: exported.directory / ONNX_FILE}
    int8 = exported.quant if exported.quant is not None and exported.quant.accepted else None
    if int8 is not None:
        files[INT8_FILE] = exported.directory / INT8_FILE
    if exported.fp16_parity is not None:
        files[FP16_FILE] = exported.directory / FP16_FILE
    return save_to_store(exported.card.name, files, exported.card, exported.parity, int8,
                         exported.fp16_parity)


@dataclass
class LineResult:
    trained: TrainResult
    exported: Exported
    tag: str

    def summary(self) -> str:
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in self.exported.card.metrics.items())
        lines = [f"{self.tag}", f"  held-out metrics of the exported (best) checkpoint: {metrics}",
                 f"  {self.exported.parity.summary()}"]
        if self.exported.quant is not None:
            lines.append(f"  {self.exported.quant.summary()}")
        elif self.exported.quant_note:
            lines.append(f"  {self.exported.quant_note}")
        return "\n".join(lines)


def run_line(spec_path: Path | str, options: TrainOptions, *, train_overrides: dict[str, Any] | None = None,
             quiet: bool = False) -> LineResult:
    """validate → train → export → verify → store; `train_overrides` replace fields of the spec's train section."""
    spec = with_train_overrides(load_spec(spec_path), train_overrides or {})
    infer(spec)
    trained = train(spec, options)
    exported = export_run(trained.run.path, data_root=options.data_root, quiet=quiet)
    return LineResult(trained, exported, store_export(exported))
