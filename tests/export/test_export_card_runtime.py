"""ModelCard parsing/validation and the onnxruntime session factory."""
from __future__ import annotations

import json

import onnx
import onnxruntime as ort
import pytest

from models import runtime
from models.card import CardError, ImageInput, ModelCard, TokenInput, validate_card


def test_card_json_round_trip(digits_export):
    card = digits_export.card
    again = ModelCard.from_json(card.to_json())
    assert again == card and again.io.graph_inputs == ["pixels"] and again.exported_at is not None
    assert set(json.loads(card.to_json())["versions"]) == {"torch", "onnx", "onnxruntime", "specserve"}


@pytest.mark.parametrize("text, message", [
    ("{not json", "card is not valid JSON"),
    ('{"name": "x"}', r"^card field spec_hash: Field required \(\+2 more\)$"),
    ('{"name": "x", "spec_hash": "h", "task": "classification", "input": {"kind": "tokens", "vocab": ["a"]}}',
     "^card: task classification takes image input, got tokens$"),
])
def test_untrusted_card_json_is_refused_with_one_line(text, message):
    with pytest.raises(CardError, match=message) as caught:
        ModelCard.from_json(text)
    assert "\n" not in str(caught.value)


def test_card_field_rules():
    with pytest.raises(ValueError, match="mean and std need 3 values"):
        ImageInput(channels=3, size=(8, 8), mean=[0.5], std=[0.5])
    with pytest.raises(ValueError, match="vocab tokens must be unique"):
        TokenInput(vocab=["a", "a"])
    with pytest.raises(ValueError, match="labels only apply to classification/segmentation"):
        ModelCard(name="c", spec_hash="h", task="sequence", input=TokenInput(vocab=["a"]), labels=["x"])


def test_validate_card_names_the_mismatch(digits_export):
    model = onnx.load(str(digits_export.path))
    card = digits_export.card
    validate_card(card, model)
    wrong_size = card.model_copy(update={"input": ImageInput(channels=1, size=(9, 8), mean=[0.5], std=[0.5])})
    with pytest.raises(CardError, match=r"input 'pixels': axis 1 is 8 in the graph \['batch', 8, 8, 1\], card says 9"):
        validate_card(wrong_size, model)
    renamed = card.model_copy(update={"io": card.io.model_copy(update={"inputs": ["image"]})})
    with pytest.raises(CardError, match=r"graph inputs \['pixels'\] but the card lists \['image'\]"):
        validate_card(renamed, model)
    float_io = card.model_copy(update={"io": card.io.model_copy(update={"pixel_input": False, "inputs": ["pixels"]})})
    with pytest.raises(CardError, match="input 'pixels': dtype UINT8 in the graph, card implies FLOAT"):
        validate_card(float_io, model)
    with pytest.raises(CardError, match="card has no io section"):
        validate_card(card.model_copy(update={"io": None}), model)


def test_providers_are_only_what_really_works(monkeypatch):
    runtime._usable_providers.cache_clear()
    try:
        assert runtime.available_providers()[-1] == "CPUExecutionProvider"
        # The -gpu wheel lists CUDA even without a device: that alone must not enable it.
        monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
        monkeypatch.setattr(runtime, "_cuda_device_count", lambda: 0)
        runtime._usable_providers.cache_clear()
        assert runtime.available_providers() == ["CPUExecutionProvider"]
        monkeypatch.setattr(runtime, "_cuda_device_count", lambda: 1)
        monkeypatch.setattr(runtime, "_cuda_provider_loads", lambda: True)
        runtime._usable_providers.cache_clear()
        assert runtime.available_providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    finally:
        runtime._usable_providers.cache_clear()


def test_session_is_quiet_and_bounded(digits_export, capfd):
    session = runtime.make_session(digits_export.path.read_bytes(), threads=1)
    assert session.get_providers() == runtime.available_providers()
    options = session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert "Failed to create" not in capfd.readouterr().err
    with pytest.raises(ValueError, match="threads must be >= 1"):
        runtime.make_session(digits_export.path, threads=0)
