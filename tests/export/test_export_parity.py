"""Export + parity proof for every kind of net the builder makes, and parity catching broken exports."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from models.artifact.card import CARD_KEY, SPEC_HASH_KEY, TASK_KEY, ImageInput, ModelCard, read_card
from models.export.onnx_graph import ExportError, export_net
from models.export.parity import ParityError, check_parity
from models.artifact.runtime import make_session


def dims(value: onnx.ValueInfoProto) -> list:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_cnn_takes_uint8_pixels_and_proves_parity(digits, digits_cnn, digits_export):
    pixels, labels = digits
    model = onnx.load(str(digits_export.path))
    (inp,), (out,) = model.graph.input, model.graph.output
    assert (inp.name, inp.type.tensor_type.elem_type, dims(inp)) == ("pixels", onnx.TensorProto.UINT8, ["batch", 8, 8, 1])
    assert (out.name, dims(out)) == ("logits", ["batch", 10])
    props = {p.key: p.value for p in model.metadata_props}
    assert props[TASK_KEY] == "classification" and props[SPEC_HASH_KEY] == "d1g175"
    card = ModelCard.from_json(props[CARD_KEY])
    assert card == digits_export.card and card.opset == 18 and card.exporter == "dynamo" == digits_export.exporter
    assert [o.version for o in model.opset_import if o.domain == ""] == [18]

    report = check_parity(digits_export.path, digits_cnn, pixels[1200:1456], labels=labels[1200:1456])
    assert report.passed and report.batch_sizes == [1, 7, 64] and report.samples == 256
    assert {(c.batch_size, c.output) for c in report.checks} == {(1, "logits"), (7, "logits"), (64, "logits")}
    assert all(c.argmax_positions == 256 and c.argmax_mismatches == 0 for c in report.checks)
    assert report.scores["onnx"] == report.scores["torch"] and report.scores["onnx"]["value"] > 0.8
    assert json.loads(report.to_json())["passed"] is True  # JSON-serialisable, stored with the model


def test_float_input_variant(digits, digits_cnn, digits_card, tmp_path):
    pixels, _ = digits
    result = export_net(digits_cnn, digits_card, tmp_path, example_inputs=pixels[:4], pixel_input=False)
    (inp,) = onnx.load(str(result.path)).graph.input
    assert (inp.name, inp.type.tensor_type.elem_type, dims(inp)) == ("input", onnx.TensorProto.FLOAT, ["batch", 1, 8, 8])
    assert check_parity(result.path, digits_cnn, pixels[:256]).passed  # pixels normalized by the same code


def test_fcn_with_bilinear_conv_transpose(standins, tmp_path):
    torch.manual_seed(0)
    net = standins.tiny_fcn(classes=3)
    card = ModelCard(name="fcn", spec_hash="fc4", task="segmentation", labels=["sky", "road", "car"],
                     input=ImageInput(channels=3, size=(64, 64), mean=[0.4, 0.4, 0.4], std=[0.2, 0.2, 0.2]))
    # Smooth "photos": random blobs, so neighbouring pixels correlate as in real images.
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (256, 8, 8, 3), dtype=np.uint8)
    pixels = coarse.repeat(8, axis=1).repeat(8, axis=2)  # (256,64,64,3)
    result = export_net(net, card, tmp_path, example_inputs=pixels[:2])
    assert dims(onnx.load(str(result.path)).graph.output[0]) == ["batch", 3, 64, 64]
    report = check_parity(result.path, net, pixels)
    assert report.passed and all(c.argmax_positions == 256 * 64 * 64 for c in report.checks)


@pytest.mark.parametrize("cell", ["RNN", "GRU", "LSTM"])
def test_char_step_form_carries_state(cell, standins, text_tokens, tmp_path):
    vocab, windows, targets = text_tokens
    torch.manual_seed(0)
    net = standins.CharNet(cell, len(vocab))
    result = export_net(net, standins.token_card(vocab), tmp_path, example_inputs=windows[:3])
    assert result.exporter == "torchscript"  # recurrent nets: native ONNX RNN ops, dynamic steps
    model = onnx.load(str(result.path))
    assert [dims(i) for i in model.graph.input][0] == ["batch", "steps"]
    assert dims(model.graph.output[0]) == ["batch", "steps", len(vocab)]
    assert len(model.graph.input) == 1 + net.state_size

    report = check_parity(result.path, net, windows, labels=targets)
    assert report.passed
    assert {c.output for c in report.checks} == {"logits", *(f"state_out_{i}" for i in range(net.state_size))}

    # Two calls carrying the state == one call over the concatenated sequence.
    session, io = make_session(result.path, threads=1), result.card.io
    zeros = [np.zeros((4, 2, 16), np.float32)] * net.state_size
    run = lambda toks, state: session.run(None, dict(zip(io.graph_inputs, [toks, *state])))
    whole = run(windows[:4], zeros)
    first = run(windows[:4, :5], zeros)
    second = run(windows[:4, 5:], first[1:])
    np.testing.assert_allclose(np.concatenate([first[0], second[0]], axis=1), whole[0], atol=1e-5)
    for a, b in zip(second[1:], whole[1:]):
        np.testing.assert_allclose(a, b, atol=1e-5)
    one_token = run(windows[:4, :1], zeros)  # generation feeds one token per call
    assert one_token[0].shape == (4, 1, len(vocab))


def test_dynamo_is_rejected_for_rnn_with_a_reason(standins, text_tokens, tmp_path):
    vocab, windows, _ = text_tokens
    with pytest.raises(ExportError, match=r"dynamo: .*'tokens': axis 1 \(steps\) must be dynamic"):
        export_net(standins.CharNet("RNN", len(vocab), hidden=4, layers=1), standins.token_card(vocab), tmp_path,
                   example_inputs=windows[:2, :2], exporter="dynamo")
    assert not (tmp_path / "model.onnx").exists()


def test_mlp_forecaster(standins, series, forecaster, tmp_path):
    windows, targets = series
    result = export_net(forecaster, standins.series_card(), tmp_path, example_inputs=windows[:4])
    model = onnx.load(str(result.path))
    assert (model.graph.input[0].name, dims(model.graph.input[0])) == ("input", ["batch", 16])
    assert (model.graph.output[0].name, dims(model.graph.output[0])) == ("prediction", ["batch", 1])
    report = check_parity(result.path, forecaster, windows, labels=targets)
    assert report.passed and report.scores["onnx"]["metric"] == "rmse"
    assert all(c.argmax_positions == 0 for c in report.checks)  # no argmax for numeric outputs


def test_export_does_not_touch_callers_net(digits, digits_card, standins, tmp_path):
    net = standins.tiny_cnn().train()
    export_net(net, digits_card, tmp_path, example_inputs=digits[0][:2], exporter="torchscript")
    assert net.training


def test_tampered_graph_is_caught_with_a_readable_report(digits, digits_cnn, digits_export, tmp_path):
    model = onnx.load(str(digits_export.path))
    bias = next(i for i in model.graph.initializer if numpy_helper.to_array(i).shape == (10,))
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + np.linspace(0, 3, 10, dtype=np.float32),
                                          bias.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    with pytest.raises(ParityError) as caught:
        check_parity(broken, digits_cnn, digits[0][:256])
    message = str(caught.value)
    assert message.startswith("parity FAILED for broken.onnx (dynamo, 256 samples): batch 1 output 'logits'")
    assert "max |onnx - torch|" in message and "> 0.0001" in message and "argmax disagreements" in message
    assert "\n" not in message
    failures = caught.value.report.failures()
    assert {f.batch_size for f in failures} == {1, 7, 64} and all(f.argmax_mismatches > 0 for f in failures)


def test_net_that_differs_from_the_export_is_caught(digits, digits_cnn, digits_export):
    import copy

    other = copy.deepcopy(digits_cnn)
    with torch.no_grad():
        other[0].weight.mul_(1.01)  # a 1% different first layer
    with pytest.raises(ParityError, match=r"batch 7 output 'logits': max \|onnx - torch\| .* > 0.0001"):
        check_parity(digits_export.path, other, digits[0][:256])


def test_parity_needs_enough_real_samples(digits, digits_cnn, digits_export):
    with pytest.raises(ExportError, match="at least 256 real samples, got 100"):
        check_parity(digits_export.path, digits_cnn, digits[0][:100])


def test_card_that_disagrees_with_the_net_is_refused_at_export(digits, digits_cnn, digits_card, tmp_path):
    wrong = digits_card.model_copy(update={"labels": ["a", "b", "c"]})
    with pytest.raises(ExportError, match="torchscript: card has 3 labels but output 'logits' .* has 10 classes"):
        export_net(digits_cnn, wrong, tmp_path, example_inputs=digits[0][:2], exporter="torchscript")


def test_card_survives_in_the_file(digits_export):
    card = read_card(onnx.load(str(digits_export.path)))
    assert card.io.inputs == ["pixels"] and card.io.pixel_input and card.labels == [str(i) for i in range(10)]
