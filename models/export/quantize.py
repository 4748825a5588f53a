"""int8 quantization of an exported graph, kept only if it is faster than fp32 and keeps the task metric.

* CNNs (any Conv/ConvTranspose in the graph): static QDQ quantization calibrated on real samples, uint8
  activations and per-channel 7-bit int8 weights (`_STATIC` says why, with the measurements). Dynamic
  quantization of Conv would produce ConvInteger, which the CPU provider may refuse.
* everything else (MLPs, RNN/GRU/LSTM heads): dynamic quantization of MatMul/Gemm weights only; activations
  are quantized on the fly, so no calibration set is needed.

The int8 model is measured against fp32 in the same call (file size, latency at batch 1 and 64 with the two
models timed alternately, the task metric on labelled samples). If the metric drops by more than `max_drop`, or
(unless the spec says `require_int8_speedup: false`) int8 is not faster than fp32 at batch 1 and at batch 64,
the int8 model is refused: QuantRefused (an ExportError) with the measured figures, and nothing is written at
`out_path`.

How much int8 buys depends on the CPU that runs it (models/artifact/isa.py, recorded in the report and in the
int8 graph's metadata): without VNNI (AVX2, AVX-512F) the u8×s8 kernels do about twice the multiply-adds per
cycle of fp32 FMA, so ResNet-18 runs ~2.1× faster; with AVX-512 VNNI / AVX-VNNI / AMX, 3.3–3.75×. The smaller
the convolutions, the more quantizing and requantizing eat the gain (measured on AVX2, 1 thread): a
3-convolution 32/64-channel CNN is 0.97× at batch 1 and 1.24× at batch 64, LeNet (6 and 16 channels) is slower
in int8 (0.3–0.5×) — and is therefore refused.
"""
from __future__ import annotations

import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_dynamic, quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process

from models.artifact.card import ModelCard, read_card
from models.export.onnx_graph import ExportError, graph_feeds, run_onnx
from models.export.parity import Score, task_score
from models.artifact.isa import cpu_isa, full_range_weights
from models.artifact.runtime import make_session

Method = Literal["static", "dynamic"]
Calibration = Literal["minmax", "entropy", "percentile"]
QUANT_KEY = "specserve.quantization"
ISA_KEY = "specserve.quantized_for"  # the CPU level whose kernels the settings were chosen for
_CALIBRATION = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                "percentile": CalibrationMethod.Percentile}

# quantize_static settings, chosen by measurement on this project's CPU (AMD EPYC, AVX2, no VNNI; onnxruntime
# 1.31 CPU provider, graph optimization ALL, 1 thread; thread CPU time, fp32 and every variant interleaved).
# Speed-up vs fp32: ResNet-18 1×96×96 at batch 1 / 64. Accuracy change: trained Fashion-MNIST CNNs on 10,000
# test images (fashion-cnn 0.9149 and lenet 0.8360 in fp32), where ±0.002 is ~20 images, i.e. noise.
#
#   activations / weights (format)               b1      b64         Δ fashion-cnn   Δ lenet
#   uint8 / int8 per-channel, 7-bit (QDQ)  ←     2.10×   2.14–2.21×  −0.0011         +0.0021
#   int8 / int8 per-channel, 7-bit (QDQ)         1.05×   1.03×       −0.0011         +0.0021
#   uint8 / int8 per-tensor, 7-bit (QDQ)         2.09×   2.13×       −0.0005         +0.0004
#   uint8 / int8 per-channel, 8-bit (QDQ)        2.07×   2.03×       −0.0061         −0.0016
#   uint8 / int8 per-channel, 7-bit (QOperator)  2.12×   2.04×       −0.0011         +0.0022
#   uint8 / uint8 per-tensor (QDQ)               1.61×   1.56×       −0.0020         +0.0001
#   uint8 / int8 + ActivationSymmetric (QDQ)     1.91×   1.84×       −0.0022         +0.0016
#
# * uint8 activations: onnxruntime fuses DequantizeLinear → Conv → QuantizeLinear into its QLinearConv kernel
#   (NHWC, MLAS u8×s8) for all 20 convolutions; with int8 activations it left the 11 that feed residual Adds
#   as fp32 Conv between Q/DQ pairs and transposes, which cancelled the gain (tests/export/test_export_quantize.py
#   checks the fusion on a small residual net). uint8 weights use a slower kernel.
# * int8 weights per channel: as fast as per tensor, and safer: batch norm folded into a convolution gives its
#   channels very different ranges, and one scale per tensor is set by the widest. 7-bit (reduce_range): as
#   fast, and needed without VNNI, where u8×s8 pairs are summed in saturating int16 (full 8-bit weights lost
#   0.6 points on fashion-cnn). With VNNI (or AMX, ARM dot product) sums are 32-bit and full 8-bit weights
#   are exact: reduce_range follows the CPU that quantizes (models/artifact/isa.py).
# * QDQ rather than QOperator: onnxruntime runs the very same QLinear* graph for both, and QDQ is the format
#   other providers (CUDA, TensorRT) read. ActivationSymmetric keeps every Relu as a separate op: slower.
# * quant_pre_process (shape inference + optimization) first: the optimized graph is identical with or without
#   it, but it is the input the quantizer documents, and shapes help it place per-channel axes.
# QLinearConv is ~88% of the int8 ResNet-18's time, so no setting here gets past the kernel's ~2.2×.
_STATIC = dict(quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
               per_channel=True)
_METHOD_NAMES = {"static": "static QDQ, uint8 activations, per-channel int8 weights ({} calibration)",
                 "dynamic": "dynamic, int8 MatMul/Gemm weights"}
_EVAL_BATCH = 64


@dataclass
class QuantReport:
    """int8 vs fp32 on this machine, measured in one call. `drop` is in the metric's own units for accuracies
    (fp32 − int8) and relative for RMSE ((int8 − fp32) / fp32); positive = worse."""

    method: str
    reduce_range: bool
    fp32_bytes: int
    int8_bytes: int
    latency_ms: dict[str, dict[str, float]]  # {"fp32": {"1": ms, "64": ms}, "int8": {...}} (median)
    metric: str
    fp32_score: float
    int8_score: float
    drop: float
    max_drop: float
    eval_samples: int
    calibration_samples: int
    threads: int | None
    providers: list[str]
    isa: str = "unknown"  # the CPU level it was quantized and timed on (models/artifact/isa.py)
    require_speedup: bool = False  # False in reports written before the speed rule existed

    @property
    def faster(self) -> bool:
        return all(self.speedup(int(b)) > 1 for b in self.latency_ms["int8"])

    @property
    def accepted(self) -> bool:
        return self.drop <= self.max_drop and (self.faster or not self.require_speedup)

    def verdict(self) -> str:
        if self.drop > self.max_drop:
            return f"REFUSED (drop {self.drop:.4f} > max {self.max_drop:.4f})"
        if self.require_speedup and not self.faster:
            return f"REFUSED (slower than fp32 on this {self.isa} CPU)"
        return "accepted"

    def speedup(self, batch: int) -> float:
        return self.latency_ms["fp32"][str(batch)] / self.latency_ms["int8"][str(batch)]

    def summary(self) -> str:
        speed = ", ".join(f"batch {b}: {self.latency_ms['fp32'][b]:.2f} → {self.latency_ms['int8'][b]:.2f} ms "
                          f"({self.speedup(int(b)):.2f}×)" for b in self.latency_ms["fp32"])
        return (f"int8 {self.verdict()}: {self.method}, {'8' if not self.reduce_range else '7'}-bit weights for {self.isa}; "
                f"{self.metric} {self.fp32_score:.4f} → {self.int8_score:.4f} on "
                f"{self.eval_samples} samples; size {self.fp32_bytes / 1024:.0f} → {self.int8_bytes / 1024:.0f} KiB; "
                f"{speed}")

    def to_dict(self) -> dict:
        return {**asdict(self), "accepted": self.accepted}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> "QuantReport":
        return cls(**{k: v for k, v in d.items() if k != "accepted"})


class _Calibration(CalibrationDataReader):
    """Feeds real samples to the calibrator in small batches, in the graph's own input form."""

    def __init__(self, session: ort.InferenceSession, card: ModelCard, samples: np.ndarray, batch: int = 16):
        assert card.io is not None
        names = card.io.graph_inputs
        self._batches: Iterator[dict[str, np.ndarray]] = (
            dict(zip(names, graph_feeds(session, card, samples[i:i + batch]))) for i in range(0, len(samples), batch))

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def choose_method(model: onnx.ModelProto) -> Method:
    """Static QDQ for graphs with convolutions, dynamic MatMul/Gemm quantization otherwise."""
    return "static" if any(n.op_type in ("Conv", "ConvTranspose") for n in model.graph.node) else "dynamic"


def _outputs(session: ort.InferenceSession, card: ModelCard, inputs: np.ndarray) -> np.ndarray:
    """First graph output over all inputs, batch by batch (token graphs start from zero state)."""
    return np.concatenate([run_onnx(session, card, graph_feeds(session, card, inputs[i:i + _EVAL_BATCH]))[0]
                           for i in range(0, len(inputs), _EVAL_BATCH)])


def _latencies_ms(sessions: dict[str, ort.InferenceSession], card: ModelCard, inputs: np.ndarray, batch: int,
                  runs: int) -> dict[str, float]:
    """Median wall time of one run at `batch` (inputs tiled if fewer) for each session, after warm-up. The
    sessions take turns, in reversed order every other run, so a change in the machine's load (it is shared)
    hits all of them alike instead of whichever happened to be timed then."""
    data = np.resize(inputs, (batch, *inputs.shape[1:])).astype(inputs.dtype)  # (batch, ...)
    feeds = graph_feeds(next(iter(sessions.values())), card, data)
    for session in sessions.values():
        for _ in range(3):
            run_onnx(session, card, feeds)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for i in range(runs):
        for name in sessions if i % 2 == 0 else reversed(list(sessions)):
            start = time.perf_counter()
            run_onnx(sessions[name], card, feeds)
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def _drop(fp32: Score, int8: Score) -> float:
    if fp32.higher_is_better:
        return fp32.value - int8.value
    return (int8.value - fp32.value) / max(fp32.value, 1e-12)


def _quantize_file(src: Path, dst: Path, method: Method, session: ort.InferenceSession, card: ModelCard,
                   calibration: np.ndarray | None, reduce_range: bool, calibrate: Calibration) -> None:
    pre = dst.with_name("pre.onnx")
    quant_pre_process(str(src), str(pre))  # shape inference + BASIC optimization, as the quantizer expects
    if method == "static":
        assert calibration is not None
        quantize_static(str(pre), str(dst), _Calibration(session, card, calibration), reduce_range=reduce_range,
                        calibrate_method=_CALIBRATION[calibrate], **_STATIC)
    else:
        quantize_dynamic(str(pre), str(dst), op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8,
                         reduce_range=reduce_range)


def _copy_metadata(src: onnx.ModelProto, dst: Path, method: Method, isa: str) -> None:
    """The quantizer drops metadata_props; the int8 file must carry the same card as its fp32 source, plus how
    and for which CPU level it was quantized."""
    model = onnx.load(str(dst))
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in src.metadata_props}, QUANT_KEY: method,
                                        ISA_KEY: isa})
    onnx.save(model, str(dst))


class QuantRefused(ExportError):
    """The int8 model lost too much, or is not faster; `report` holds the measurements."""

    def __init__(self, report: QuantReport):
        super().__init__(report.summary())
        self.report = report


def quantize(onnx_path: str | Path, out_path: str | Path, *, eval_inputs: np.ndarray, eval_labels: np.ndarray,
             max_drop: float, calibration: np.ndarray | None = None, method: Method | Literal["auto"] = "auto",
             threads: int | None = None, latency_runs: int = 20, reduce_range: bool | None = None,
             calibrate: Calibration = "minmax", require_speedup: bool = True) -> QuantReport:
    """Quantize `onnx_path` to `out_path` and return the comparison; refuse when the metric drops too much.

    eval_inputs/eval_labels: labelled client-side samples (as for check_parity) for the metric and latency.
    calibration: real client-side samples for static quantization (a few hundred are plenty).
    max_drop: the largest acceptable drop (see QuantReport), from the spec.
    reduce_range: 7-bit weights; None = chosen by this CPU (models/artifact/isa.py): x86 CPUs without VNNI (AVX2,
    AVX-512F) multiply u8×s8 pairs into saturating 16-bit sums, which wrecks full-range int8 weights (measured
    on AVX2: a dynamic-int8 MLP's RMSE doubled; with 7-bit weights it matched fp32); VNNI/AMX/ARM dot-product
    CPUs sum exactly, and full 8-bit weights are more accurate there. The graph is then for CPUs of that kind:
    serving on another kind logs a warning.
    calibrate: how static quantization picks activation ranges (MinMax, Entropy or Percentile).
    require_speedup: refuse an int8 graph that is not faster than fp32 at batch 1 and at batch 64.
    Raises ExportError when refused or when static quantization has no calibration data.
    """
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    fp32_model = onnx.load(str(onnx_path))
    card = read_card(fp32_model)
    chosen: Method = choose_method(fp32_model) if method == "auto" else method
    if chosen == "static" and (calibration is None or len(calibration) == 0):
        raise ExportError(f"{onnx_path.name}: static quantization needs calibration samples")
    eval_inputs, eval_labels = np.asarray(eval_inputs), np.asarray(eval_labels)
    isa = cpu_isa()
    if reduce_range is None:
        reduce_range = not full_range_weights(isa)
    fp32 = make_session(onnx_path, threads)
    out_path.parent.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="specserve-quant-", dir=out_path.parent) as tmp:
        candidate = Path(tmp) / out_path.name
        _quantize_file(onnx_path, candidate, chosen, fp32, card, calibration, reduce_range, calibrate)
        _copy_metadata(fp32_model, candidate, chosen, isa)
        int8 = make_session(candidate, threads)
        scores = {name: task_score(card, _outputs(s, card, eval_inputs), eval_labels)
                  for name, s in (("fp32", fp32), ("int8", int8))}
        per_batch = {b: _latencies_ms({"fp32": fp32, "int8": int8}, card, eval_inputs, b, latency_runs)
                     for b in (1, 64)}
        latency = {name: {str(b): ms[name] for b, ms in per_batch.items()} for name in ("fp32", "int8")}
        report = QuantReport(method=_METHOD_NAMES[chosen].format(calibrate), reduce_range=reduce_range,
                             fp32_bytes=onnx_path.stat().st_size, int8_bytes=candidate.stat().st_size,
                             latency_ms=latency, metric=scores["fp32"].metric, fp32_score=scores["fp32"].value,
                             int8_score=scores["int8"].value, drop=_drop(scores["fp32"], scores["int8"]),
                             max_drop=max_drop, eval_samples=len(eval_inputs),
                             calibration_samples=len(calibration) if chosen == "static" and calibration is not None else 0,
                             threads=threads, providers=list(int8.get_providers()), isa=isa,
                             require_speedup=require_speedup)
        if not report.accepted:
            raise QuantRefused(report)
        candidate.replace(out_path)
    return report
