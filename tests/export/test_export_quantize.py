"""int8 quantization: static QDQ for CNNs, dynamic MatMul/Gemm for Linear/RNN models, refusal on metric drop."""
from __future__ import annotations

import copy
from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from models.artifact.card import read_card, validate_card
from models.export.onnx_graph import ExportError, export_net
from models.artifact.isa import cpu_isa, full_range_weights
from models.export.quantize import ISA_KEY, QUANT_KEY, QuantRefused, quantize
from models.artifact.runtime import make_session, runtime_ops


def op_counts(path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def test_static_qdq_for_a_trained_cnn(digits, digits_export, tmp_path):
    pixels, labels = digits
    out = tmp_path / "model.int8.onnx"
    report = quantize(digits_export.path, out, calibration=pixels[:200], eval_inputs=pixels[1200:],
                      eval_labels=labels[1200:], max_drop=0.03, require_speedup=False, threads=1, latency_runs=5)
    assert report.accepted and out.is_file()
    assert report.method.startswith("static QDQ, uint8 activations, per-channel int8 weights")
    assert report.metric == "accuracy" and report.fp32_score > 0.8 and report.drop <= 0.03
    assert report.int8_bytes < report.fp32_bytes and report.calibration_samples == 200
    assert report.reduce_range == (not full_range_weights(cpu_isa()))  # 7-bit weights without VNNI
    assert set(report.latency_ms) == {"fp32", "int8"} and set(report.latency_ms["int8"]) == {"1", "64"}
    ops = op_counts(out)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0 and "ConvInteger" not in ops
    model = onnx.load(str(out))
    assert read_card(model) == digits_export.card  # the card travels with the int8 file
    validate_card(read_card(model), model)
    assert {p.key: p.value for p in model.metadata_props}[QUANT_KEY] == "static"
    assert {p.key: p.value for p in model.metadata_props}[ISA_KEY] == cpu_isa() == report.isa
    session = make_session(out, threads=1)
    assert session.run(None, {"pixels": pixels[:3]})[0].shape == (3, 10)


class Residual(nn.Module):
    """ResNet's basic block in miniature: relu(x + conv(relu(conv(x))))."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


def test_every_convolution_of_a_residual_net_runs_as_an_integer_kernel(digits, digits_card, tmp_path):
    """What the static settings are chosen for (models.export.quantize._STATIC): onnxruntime must turn every Conv into
    QLinearConv, including the ones feeding a residual Add, which int8 activations would leave in fp32."""
    pixels, labels = digits
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), Residual(16), Residual(16),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()
    fp32 = export_net(net, digits_card, tmp_path, example_inputs=pixels[:4])
    out = tmp_path / "model.int8.onnx"
    # random weights: the accuracy is not the point here, so nothing is refused
    quantize(fp32.path, out, calibration=pixels[:64], eval_inputs=pixels[:64], eval_labels=labels[:64],
             max_drop=1.0, require_speedup=False, threads=1, latency_runs=1)
    ops = Counter(runtime_ops(out, threads=1))
    assert "Conv" not in ops and ops["QLinearConv"] == op_counts(fp32.path)["Conv"] == 5


def test_bad_calibration_is_refused_and_nothing_is_written(digits, digits_export, tmp_path):
    pixels, labels = digits
    out = tmp_path / "model.int8.onnx"
    blank = np.zeros_like(pixels[:32])  # calibrating on blank images collapses the activation ranges
    with pytest.raises(QuantRefused, match=r"int8 REFUSED \(drop 0\.\d+ > max 0\.0200\)") as refused:
        quantize(digits_export.path, out, calibration=blank, eval_inputs=pixels[1200:], eval_labels=labels[1200:],
                 max_drop=0.02, require_speedup=False, threads=1, latency_runs=2)
    assert not refused.value.report.accepted
    assert list(tmp_path.iterdir()) == []  # no int8 file, no temp leftovers


def test_static_needs_calibration(digits, digits_export, tmp_path):
    with pytest.raises(ExportError, match="static quantization needs calibration samples"):
        quantize(digits_export.path, tmp_path / "q.onnx", eval_inputs=digits[0][:64], eval_labels=digits[1][:64],
                 max_drop=0.1, require_speedup=False)


def test_dynamic_for_a_linear_forecaster_and_refusal_on_outlier_weights(standins, series, forecaster, tmp_path):
    windows, targets = series
    fp32 = export_net(forecaster, standins.series_card(), tmp_path / "ok", example_inputs=windows[:4])
    report = quantize(fp32.path, tmp_path / "ok" / "model.int8.onnx", eval_inputs=windows, eval_labels=targets,
                      max_drop=0.25, require_speedup=False, threads=1, latency_runs=5)
    assert report.accepted and report.method.startswith("dynamic, int8 MatMul/Gemm") and report.metric == "rmse"
    ops = op_counts(tmp_path / "ok" / "model.int8.onnx")
    assert ops["MatMulInteger"] + ops["DynamicQuantizeLinear"] > 0 and "ConvInteger" not in ops

    # A dead hidden unit with huge weights: fp32 outputs are unchanged, but the per-tensor int8 scales
    # stretch so far that every other weight rounds to zero.
    spiky = copy.deepcopy(forecaster)
    with torch.no_grad():
        spiky[0].weight[0] = 60.0
        spiky[0].bias[0] = -1e4  # unit 0 never fires
        spiky[2].weight[0, 0] = 60.0
    bad = export_net(spiky, standins.series_card(), tmp_path / "bad", example_inputs=windows[:4])
    with pytest.raises(QuantRefused, match=r"REFUSED .* rmse"):
        quantize(bad.path, tmp_path / "bad" / "model.int8.onnx", eval_inputs=windows, eval_labels=targets,
                 max_drop=0.25, require_speedup=False, threads=1, latency_runs=2)
    assert not (tmp_path / "bad" / "model.int8.onnx").exists()


def test_dynamic_for_a_gru_char_model(standins, text_tokens, tmp_path):
    vocab, windows, targets = text_tokens
    torch.manual_seed(0)
    fp32 = export_net(standins.CharNet("GRU", len(vocab)), standins.token_card(vocab), tmp_path,
                      example_inputs=windows[:3])
    out = tmp_path / "model.int8.onnx"
    report = quantize(fp32.path, out, eval_inputs=windows, eval_labels=targets, max_drop=0.05, require_speedup=False, threads=1,
                      latency_runs=2)
    assert report.accepted and report.metric == "next_token_accuracy"
    ops = op_counts(out)
    assert ops["GRU"] == 2 and ops["MatMulInteger"] > 0  # recurrent op stays fp32, the head is int8
