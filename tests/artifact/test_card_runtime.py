"""ModelCard parsing/validation and the onnxruntime session factory."""
from __future__ import annotations

import json

import onnx
import onnxruntime as ort
import pytest

from models.artifact import runtime
from models.artifact.card import CardError, ImageInput, ModelCard, SeriesInput, TokenInput, validate_card
from models.artifact.scaling import fit_scaling, scale, unscale


def test_card_json_round_trip(digits_export):
    card = digits_export.card
    again = ModelCard.from_json(card.to_json())
    assert again == card and again.io.graph_inputs == ["pixels"] and again.exported_at is not None
    assert set(json.loads(card.to_json())["versions"]) == {"torch", "onnx", "onnxruntime", "specserve"}


@pytest.mark.parametrize("text, message", [
    ("{not json", "card is not valid JSON"),
    ('{"name": "x"}', r"^card field spec_hash: Field required \(\+2 more\)$"),
    ('{"name": "x", "spec_hash": "h", "task": "segmentation", "input": {"kind": "tokens", "vocab": ["a"]}}',
     "^card: task segmentation takes image input, got tokens$"),
    ('{"name": "x", "spec_hash": "h", "task": "classification", "input": {"kind": "tokens", "vocab": ["a"]}}',
     r"^card: a text classifier's card says how texts become ids \(input.text\); only a text classifier's does$"),
    ('{"name": "x", "spec_hash": "h", "task": "classification", "input": {"kind": "tokens", "vocab": ["a"], '
     '"text": {"split": "words", "lowercase": true, "length": 8}}}',
     "^card field input.tokens: a text tokenizer needs <pad> and <unk> in the vocabulary$"),
])
def test_untrusted_card_json_is_refused_with_one_line(text, message):
    with pytest.raises(CardError, match=message) as caught:
        ModelCard.from_json(text)
    assert "\n" not in str(caught.value)


SERIES_CARD = '{"name": "x", "spec_hash": "h", "task": "sequence", "input": {"kind": "series", "window": 4%s}}'


@pytest.mark.parametrize("scaling, message", [
    ("", r"^card field input\.series\.scaling: Field required$"),
    (', "scaling": {"kind": "log"}', r"^card field input\.series\.scaling: Input tag 'log' .* expected tags: "
                                     r"'standard', 'minmax', 'none'$"),
    (', "scaling": {"mean": 0, "std": 1}', r"^card field input\.series\.scaling: Unable to extract tag .*'kind'$"),
    (', "scaling": {"kind": "standard", "mean": 0}', r"^card field input\.series\.scaling\.standard\.std: Field "
                                                     r"required$"),
    (', "scaling": {"kind": "standard", "mean": 0, "std": 0}', r"scaling\.standard\.std: Input should be greater"),
    (', "scaling": {"kind": "standard", "mean": NaN, "std": 1}', r"scaling\.standard\.mean: .*finite"),
    (', "scaling": {"kind": "minmax", "min": 2, "max": 1}', r"scaling\.minmax: max must be > min"),
    (', "scaling": {"kind": "none", "mean": 0}', r"scaling\.none\.mean: Extra inputs are not permitted"),
], ids=["absent", "unknown-kind", "no-kind", "missing-std", "zero-std", "nan-mean", "min-above-max", "extra-number"])
def test_series_scaling_is_explicit_and_checked_when_read(scaling, message):
    with pytest.raises(CardError, match=message) as caught:
        ModelCard.from_json(SERIES_CARD % scaling)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("kind", ["standard", "minmax", "none"])
def test_series_scaling_round_trips_to_what_training_used(kind):
    """The card holds the dict models.artifact.scaling fitted, kind included, and gives it back unchanged."""
    fitted = fit_scaling([3.0, 5.0, 11.0], kind)
    card = ModelCard.from_json(SERIES_CARD % f', "scaling": {json.dumps(fitted)}')
    assert isinstance(card.input, SeriesInput) and card.input.scaling.kind == kind
    assert card.input.scaling.model_dump() == fitted
    assert unscale(scale(7.0, card.input.scaling.model_dump()), fitted) == pytest.approx(7.0)


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
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"  # shared cores
    assert "Failed to create" not in capfd.readouterr().err
    with pytest.raises(ValueError, match="threads must be >= 1"):
        runtime.make_session(digits_export.path, threads=0)
