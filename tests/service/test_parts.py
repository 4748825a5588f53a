"""The service's helpers on their own (no server): config, batching, masks, multipart checks, forecast scaling,
model loading."""
from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from models.artifact.card import ImageInput, ModelCard, SeriesInput
from service.batching import Batcher
from service.config import ConfigError, ModelRef, load_config
from service.masks import palette
from service.series import forecast
from service.served import ServingError, load_model
from service.uploads import misplaced_parts, multipart_parts


# --------------------------------------------------------------------------------------------------- config

def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "serving.yaml"
    path.write_text(text)
    return path


def test_the_shipped_config_is_valid() -> None:
    config = load_config(Path(__file__).parents[2] / "service" / "serving.yaml")
    assert {ref.name for ref in config.refs()} == {"digits-cnn", "shapes-fcn", "sine-forecaster", "char-gru-demo",
                                                  "text-demo"}


def test_config_reads_models_defaults_and_limits(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, """
endpoints:
  classify: {models: [lenet, {tag: "digits-cnn:abc123", int8: true}], default: digits-cnn}
  generate: {models: [char-gru]}
workers: 2
threads: 3
limits: {max_images: 3}
"""))
    classify = config.endpoints["classify"]
    assert classify.default_name == "digits-cnn" and config.endpoints["generate"].default_name == "char-gru"
    assert classify.models[1] == ModelRef(tag="digits-cnn:abc123", int8=True)
    assert config.limits.max_images == 3 and config.limits.max_upload_bytes == 16 * 2**20
    assert config.ort_threads(cores=2) == 1 and config.ort_threads(cores=16) == 2  # 16 // (2 workers × 3 threads)
    assert config.service_options()["workers"] == 2 and config.service_options()["threads"] == 3
    assert config.service_options()["logging"] == {"access": {"enabled": False}}


def test_config_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPECSERVE_CONFIG", str(write(tmp_path, "endpoints: {forecast: {models: [sine]}}")))
    assert load_config().endpoints["forecast"].default_name == "sine"


@pytest.mark.parametrize("text, message", [
    ("endpoints: {classify: {models: [a, b], default: c}}", "endpoints.classify: Value error, default 'c' is not one"),
    ("endpoints: {classify: {models: [a, 'a:v1']}}", "must be unique per endpoint"),
    ("endpoints: {clasify: {models: [a]}}", "endpoints.clasify"),
    ("endpoints: {classify: {models: []}}", "endpoints.classify.models"),
    ("endpoints: {classify: {models: ['Not A Tag']}}", "endpoints.classify.models.0.tag"),
    ("workers: 0", "workers"),
    ("threads: 2\nthreds: 3", "threds: Extra inputs are not permitted"),
    ("limits: {max_images: 0}", "limits.max_images"),
    ("endpoints: [", "not valid YAML"),
], ids=["bad-default", "repeated-name", "unknown-endpoint", "no-models", "bad-tag", "zero-workers", "unknown-field",
        "bad-limit", "bad-yaml"])
def test_config_errors_name_the_file_and_field(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert str(info.value).startswith(str(tmp_path / "serving.yaml")) and message in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the serving config.*SPECSERVE_CONFIG"):
        load_config(tmp_path / "nope.yaml")


# --------------------------------------------------------------------------------------------------- batching

def test_batcher_groups_concurrent_requests_and_isolates_errors() -> None:
    calls: list[list[int]] = []

    def work(items: list[int]) -> list[int | Exception]:
        calls.append(list(items))
        return [ValueError(f"bad {i}") if i == 13 else i * 10 for i in items]

    async def main() -> list[object]:
        batcher = Batcher(work, size=lambda item: 1, max_batch_size=4, max_wait_ms=50)
        return await asyncio.gather(*(batcher(i) for i in [1, 2, 13, 4, 5, 6]), return_exceptions=True)

    results = asyncio.run(main())
    assert results[:2] == [10, 20] and results[3:] == [40, 50, 60]
    assert isinstance(results[2], ValueError) and str(results[2]) == "bad 13"  # only that request failed
    assert calls == [[1, 2, 13, 4], [5, 6]]  # at most max_batch_size per call, in arrival order


def test_batcher_takes_whole_requests_and_never_waits_when_asked_not_to() -> None:
    calls: list[list[str]] = []

    def work(items: list[str]) -> list[str]:
        calls.append(list(items))
        return [s.upper() for s in items]

    async def main() -> tuple[list[str], float]:
        batcher = Batcher(work, size=len, max_batch_size=4, max_wait_ms=0)
        loop = asyncio.get_running_loop()
        start = loop.time()
        single = await batcher("ab")
        elapsed = loop.time() - start
        return [single, *await asyncio.gather(batcher("abc"), batcher("de"), batcher("fghijk"))], elapsed

    results, elapsed = asyncio.run(main())
    assert results == ["AB", "ABC", "DE", "FGHIJK"]
    assert calls == [["ab"], ["abc"], ["de"], ["fghijk"]]  # 3 + 2 > 4 slots; a 6-slot request still goes, alone
    assert elapsed < 0.5


# --------------------------------------------------------------------------------------------------- masks

def test_palette_is_pascal_vocs() -> None:
    colours = palette(21)
    assert colours[:4].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    assert len({tuple(c) for c in colours}) == 21


# --------------------------------------------------------------------------------------------------- multipart check

def test_multipart_parts_and_misplaced_fields() -> None:
    body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"images\"; filename=\"a.png\"\r\n"
            b"Content-Type: image/png\r\n\r\n\x89PNG--Xy\r\n"
            b"--XyZ\r\nContent-Disposition: form-data; name=\"k\"\r\n\r\n3\r\n--XyZ--\r\n")
    parts = multipart_parts(body, b"XyZ")
    assert parts == [("images", True, b"\x89PNG--Xy"), ("k", False, b"3")]  # names, kinds and bytes
    assert misplaced_parts(parts, {"images"}) is None
    assert "images: must be a file upload" in misplaced_parts([("images", False)], {"images"})
    assert "k: a file upload where" in misplaced_parts([("images", True), ("k", True)], {"images"})


# --------------------------------------------------------------------------------------------------- forecasting

@pytest.mark.parametrize("scaling, model_units, zero_is", [
    ({"kind": "standard", "mean": 10.0, "std": 2.0}, [0.0, 1.0, 2.0], 10.0),
    ({"kind": "minmax", "min": 10.0, "max": 14.0}, [0.0, 0.5, 1.0], 10.0),
    ({"kind": "none"}, [10.0, 12.0, 14.0], 0.0),
])
def test_forecast_scales_with_the_kind_the_card_names(scaling: dict, model_units: list[float], zero_is: float) -> None:
    """A stand-in graph that records its window and always answers 0 in model units: the window it sees is the
    series scaled by the card's scaling, and the answer comes back unscaled by the same one."""
    card = ModelCard(name="sine", spec_hash="h", task="sequence", input=SeriesInput(window=3, scaling=scaling))
    seen: list[np.ndarray] = []

    def run(window: np.ndarray) -> list[np.ndarray]:  # (1, 3) float32 → [(1, 1)]
        seen.append(window.copy())
        return [np.zeros((len(window), 1), dtype=np.float32)]

    ahead = forecast(SimpleNamespace(card=card, name="sine", run=run), [7.0, 10.0, 12.0, 14.0], steps=2)
    assert seen[0].tolist() == [pytest.approx(model_units)] and ahead == [zero_is, zero_is]


# --------------------------------------------------------------------------------------------------- loading

def test_a_model_that_cannot_serve_stops_the_start(stored: tuple[Path, dict[str, str]]) -> None:
    with pytest.raises(ServingError, match="classify: cannot load model nope"):
        load_model(ModelRef(tag="nope"), "classify", threads=1)
    with pytest.raises(ServingError, match="classify serves classification models with image input; test-chars"):
        load_model(ModelRef(tag="test-chars"), "classify", threads=1)
    with pytest.raises(ServingError, match="has no int8 graph"):
        load_model(ModelRef(tag="test-digits", int8=True), "classify", threads=1)
    served = load_model(ModelRef(tag="test-digits-mlp", int8=True), "classify", threads=1)
    assert served.int8 and served.describe().graph == "int8"


# --------------------------------------------------------------------------------------------------- pixel budget

def huge_png(side: int = 6000) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (side, side)).save(buffer, format="PNG")  # all zeros: ~40 KB on the wire, 36 MP decoded
    return buffer.getvalue()


def test_a_request_of_huge_images_is_refused_before_any_is_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    """32 small PNGs of 6000×6000 pixels each: every header is read and the request refused (413) at the third,
    without decoding a single pixel; the request batched with it is answered."""
    from PIL import Image

    from service import vision
    from service.errors import RequestError

    card = SimpleNamespace(input=ImageInput(channels=1, size=(28, 28), mean=[0.5], std=[0.5]), labels=["a", "b"])
    model = SimpleNamespace(card=card, run=lambda pixels: [np.zeros((len(pixels), 2), np.float32)])
    small = vision.ClassifyJob([small_png(28)], k=1)
    huge = vision.ClassifyJob([huge_png()] * 32, k=1)
    decoded: list[tuple[int, int]] = []
    real_load = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda img: decoded.append(img.size) or real_load(img))
    answers = vision.classify_jobs(model, [huge, small], max_pixels=40_000_000, max_request_pixels=80_000_000)
    assert isinstance(answers[0], RequestError) and answers[0].status == 413
    assert answers[0].message.startswith("images[2]: with it the request's images have 108,000,000 pixels")
    assert not isinstance(answers[1], RequestError) and answers[1][0].top[0].label in ("a", "b")
    assert (6000, 6000) not in decoded  # only the small image was decoded


def small_png(side: int) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (side, side), 128).save(buffer, format="PNG")
    return buffer.getvalue()
