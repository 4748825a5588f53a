"""The service over HTTP, as clients see it: a real `bentoml serve` on real stored models (see conftest.py).

Each endpoint answers real inputs correctly (checked against the model run locally and against the data's truth),
every kind of bad request gets its 4xx and a message saying what was wrong, and /docs.json describes the API.
"""
from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path
from typing import Iterator

import bentoml
import httpx
import numpy as np
import pytest
from PIL import Image

from live_server import LIMITS, Server
from models.data import load_dataset
from models.artifact.runtime import make_session
from models.artifact.store import load_from_store


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def png(pixels: np.ndarray | Image.Image, **save: object) -> bytes:
    img = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    buffer = io.BytesIO()
    img.save(buffer, format="PNG", **save)
    return buffer.getvalue()


def digit_images(count: int) -> tuple[list[np.ndarray], list[int]]:
    """Held-out digits as uint8 (8, 8) images and their labels."""
    digits = load_dataset("digits", {}, seed=0)
    return [x[0].numpy() for x in digits.test_x[:count]], [int(y) for y in digits.test_y[:count]]


def shapes_image() -> tuple[np.ndarray, np.ndarray]:
    """A held-out shapes image uint8 (64, 64, 3) with its mask (64, 64)."""
    shapes = load_dataset("shapes", {"train_count": 1, "test_count": 8}, seed=0)
    index = int(np.argmax([(m > 0).sum() for m in shapes.test_y]))  # the one with the most shape pixels
    return shapes.test_x[index].permute(1, 2, 0).numpy(), shapes.test_y[index].numpy()


def decode_b64_png(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text)))


def assert_error(response: httpx.Response, status: int, *fragments: str) -> dict:
    """The response is `status` with a JSON body whose error (or validation detail) mentions each fragment."""
    assert response.status_code == status, response.text
    body = response.json()
    text = json.dumps(body)
    assert "error" in body, body
    for fragment in fragments:
        assert fragment in text, (fragment, body)
    return body


def local_logits(tag: str, pixels: np.ndarray) -> np.ndarray:
    """What the stored graph computes on uint8 (B, H, W, C) pixels, without the service."""
    stored = load_from_store(tag)
    return make_session(stored.onnx_path, 1).run(None, {"pixels": pixels})[0]


# --------------------------------------------------------------------------------------------------- health, docs

def test_health_and_metrics(http: httpx.Client) -> None:
    assert http.get("/readyz").status_code == 200
    assert http.get("/livez").status_code == 200
    assert http.get("/metrics").status_code == 200


def test_docs_describe_every_endpoint_and_parameter(http: httpx.Client) -> None:
    spec = http.get("/docs.json").json()
    expected = {"/classify": {"images", "k", "model"}, "/segment": {"image", "overlay", "model"},
                "/forecast": {"values", "k", "model"}, "/generate": {"prefix", "length", "temperature", "top_k", "seed",
                                                                      "model"},
                "/models": set()}
    for path, params in expected.items():
        operation = spec["paths"][path]["post"]
        assert operation.get("description"), path  # the method's docstring
        (content,) = operation["requestBody"]["content"].values()
        assert set(content["schema"].get("properties", {})) == params, (path, content)
        assert "200" in operation["responses"], path
    classify = spec["paths"]["/classify"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert classify["properties"]["images"]["maxItems"] == LIMITS["max_images"]  # config limits are in the schema
    assert classify["properties"]["images"]["items"]["format"] == "binary"


def test_models_describes_what_is_served(http: httpx.Client, server: Server) -> None:
    endpoints = http.post("/models", json={}).json()["endpoints"]
    assert {name: e["default"] for name, e in endpoints.items()} == {
        "classify": "test-digits", "segment": "test-shapes", "forecast": "sine-forecaster", "generate": "test-chars"}
    classify = {m["name"]: m for m in endpoints["classify"]["models"]}
    assert classify["test-digits"]["tag"] == server.tags["test-digits"]
    assert classify["test-digits"]["labels"] == [str(i) for i in range(10)]
    assert classify["test-digits"]["input"] == {"kind": "image", "channels": 1, "size": [8, 8], "mean": [0.3],
                                                "std": [0.38]}
    assert classify["test-digits"]["metrics"]["accuracy"] > 0.8
    assert (classify["test-digits"]["graph"], classify["test-digits-mlp"]["graph"]) == ("fp32", "int8")
    assert classify["test-digits"]["parity"]["passed"] is True
    assert classify["test-digits"]["providers"] == ["CPUExecutionProvider"]
    (chars,) = endpoints["generate"]["models"]
    assert chars["vocab_size"] == 28 and chars["labels"] is None
    (sine,) = endpoints["forecast"]["models"]
    assert sine["tag"] == server.tags["sine-forecaster"] and sine["input"]["window"] == 4


def test_demo_page_is_served(http: httpx.Client) -> None:
    page = http.get("/demo/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "specserve demo" in page.text and "http://" not in page.text.replace("http://www.w3.org/2000/svg", "")
    assert http.get("/demo").status_code in (200, 307)


# --------------------------------------------------------------------------------------------------- classify

def test_classify_recognises_digits_in_one_request(http: httpx.Client, server: Server) -> None:
    images, labels = digit_images(8)
    files = [("images", (f"{i}.png", png(Image.fromarray(img).resize((32, 32))), "image/png"))
             for i, img in enumerate(images[:4])]
    answer = http.post("/classify", files=files, data={"k": "3"}).json()
    assert answer["model"] == server.tags["test-digits"]
    assert len(answer["results"]) == 4
    for result in answer["results"]:
        assert (result["width"], result["height"], result["converted"]) == (32, 32, None)
        probs = [t["probability"] for t in result["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-9
    # the service's pipeline (decode, resize, graph, softmax) agrees with the graph run locally at 8×8
    logits = local_logits(server.tags["test-digits"], np.stack(images[:4])[..., None])
    assert [r["top"][0]["label"] for r in answer["results"]] == [str(i) for i in logits.argmax(1)]
    # and the model is right: all 8 held-out digits, one per request (batched together by the server)
    predicted = [http.post("/classify", files={"images": ("d.png", png(img), "image/png")}).json()
                 ["results"][0]["top"][0]["label"] for img in images]
    assert sum(p == str(y) for p, y in zip(predicted, labels)) >= 7


def test_classify_k_defaults_to_5_and_is_capped_by_the_labels(http: httpx.Client) -> None:
    image = png(digit_images(1)[0][0])
    assert len(http.post("/classify", files={"images": ("d.png", image)}).json()["results"][0]["top"]) == 5
    top = http.post("/classify", files={"images": ("d.png", image)}, data={"k": "50"}).json()["results"][0]["top"]
    assert sorted(t["label"] for t in top) == [str(i) for i in range(10)]
    assert math.isclose(sum(t["probability"] for t in top), 1.0, rel_tol=1e-6)


@pytest.mark.parametrize("mode, converted", [("RGB", "RGB→L"), ("RGBA", "RGBA→L"), ("P", "P→L"), ("L", None)])
def test_classify_converts_channels(http: httpx.Client, mode: str, converted: str | None) -> None:
    gray = digit_images(1)[0][0]
    img = Image.fromarray(gray).convert(mode)
    answer = http.post("/classify", files={"images": ("d.png", png(img))}).json()
    assert answer["results"][0]["converted"] == converted
    reference = http.post("/classify", files={"images": ("d.png", png(gray))}).json()
    assert answer["results"][0]["top"][0]["label"] == reference["results"][0]["top"][0]["label"]


def test_classify_jpeg(http: httpx.Client) -> None:
    buffer = io.BytesIO()
    Image.fromarray(digit_images(1)[0][0]).resize((64, 64)).save(buffer, format="JPEG", quality=95)
    answer = http.post("/classify", files={"images": ("d.jpg", buffer.getvalue(), "image/jpeg")}).json()
    assert answer["results"][0]["width"] == 64


def test_classify_picks_a_model_by_name_or_tag(http: httpx.Client, server: Server) -> None:
    image = {"images": ("d.png", png(digit_images(1)[0][0]))}
    mlp = server.tags["test-digits-mlp"]
    assert http.post("/classify", files=image, data={"model": "test-digits-mlp"}).json()["model"] == mlp
    assert http.post("/classify", files=image, data={"model": mlp}).json()["model"] == mlp
    assert_error(http.post("/classify", files=image, data={"model": "test-digits-mlp:0000"}), 404, "unknown model",
                 "test-digits-mlp:0000", mlp)
    assert_error(http.post("/classify", files=image, data={"model": "resnet"}), 404, "unknown model 'resnet'",
                 "test-digits")


# --------------------------------------------------------------------------------------------------- segment

def test_segment_mask_overlay_and_shares(http: httpx.Client, server: Server) -> None:
    pixels, truth = shapes_image()
    upload = Image.fromarray(pixels).resize((96, 80), Image.Resampling.NEAREST)  # not the model's 64×64
    answer = http.post("/segment", files={"image": ("s.png", png(upload))}, data={"overlay": "true"}).json()
    assert answer["model"] == server.tags["test-shapes"]
    assert (answer["width"], answer["height"], answer["converted"]) == (96, 80, None)
    assert answer["labels"] == ["background", "circle", "square", "triangle"]
    mask_img = decode_b64_png(answer["mask_png"])
    assert (mask_img.mode, mask_img.size) == ("P", (96, 80))
    mask = np.asarray(mask_img)  # (80, 96) class ids
    assert mask.max() < 4
    counts = np.bincount(mask.ravel(), minlength=4) / mask.size
    assert np.allclose(list(answer["shares"].values()), counts) and math.isclose(sum(answer["shares"].values()), 1)
    overlay = decode_b64_png(answer["overlay_png"])
    assert (overlay.mode, overlay.size) == ("RGB", (96, 80))
    # the mask is the graph's argmax at 64×64, scaled back to the upload with nearest neighbours
    at_64 = np.asarray(upload.resize((64, 64), Image.Resampling.BILINEAR))[None]  # (1, 64, 64, 3)
    ids = local_logits(server.tags["test-shapes"], at_64)[0].argmax(0).astype(np.uint8)  # (64, 64)
    expected = np.asarray(Image.fromarray(ids).resize((96, 80), Image.Resampling.NEAREST))
    assert np.array_equal(mask, expected)
    # and the model finds the shapes: more of its foreground pixels lie on shapes than the shapes' share
    at_model_size = np.asarray(mask_img.resize((64, 64), Image.Resampling.NEAREST))
    on_shapes = (truth[at_model_size > 0] > 0).mean()
    assert (at_model_size > 0).any() and on_shapes > 1.5 * (truth > 0).mean()


def test_segment_without_overlay_and_with_a_grayscale_upload(http: httpx.Client) -> None:
    gray = Image.fromarray(shapes_image()[0]).convert("L")
    answer = http.post("/segment", files={"image": ("s.png", png(gray))}).json()
    assert answer["overlay_png"] is None and answer["converted"] == "L→RGB"


# --------------------------------------------------------------------------------------------------- forecast

def test_forecast_continues_the_sine(http: httpx.Client, server: Server) -> None:
    t = np.arange(1, 401)
    answer = http.post("/forecast", json={"values": np.sin(0.01 * t).tolist(), "k": 10}).json()
    assert answer["model"] == server.tags["sine-forecaster"] and answer["window"] == 4
    truth = np.sin(0.01 * np.arange(401, 411))
    assert len(answer["forecast"]) == 10
    assert np.abs(np.array(answer["forecast"]) - truth).max() < 0.3  # the course's model, trained for seconds
    assert len(http.post("/forecast", json={"values": [0.1, 0.2, 0.3, 0.4]}).json()["forecast"]) == 1  # k = 1


# --------------------------------------------------------------------------------------------------- generate

def test_generate_greedy_is_deterministic_and_sampling_is_seeded(http: httpx.Client, server: Server) -> None:
    greedy = {"prefix": "the time traveller ", "length": 40, "temperature": 0}
    first = http.post("/generate", json=greedy).json()
    assert first["model"] == server.tags["test-chars"] and first["prefix"] == greedy["prefix"]
    assert len(first["text"]) == 40 and set(first["text"]) <= set(" abcdefghijklmnopqrstuvwxyz")
    assert http.post("/generate", json={**greedy, "seed": 123}).json()["text"] == first["text"]
    sampled = {"prefix": "the ", "length": 60, "temperature": 1.0, "top_k": 5, "seed": 7}
    a = http.post("/generate", json=sampled).json()
    assert a["seed"] == 7 and http.post("/generate", json=sampled).json()["text"] == a["text"]
    assert http.post("/generate", json={**sampled, "seed": 8}).json()["text"] != a["text"]
    unseeded = http.post("/generate", json={"prefix": "a", "length": 5}).json()
    assert isinstance(unseeded["seed"], int) and len(unseeded["text"]) == 5


def test_generate_has_learnt_english_letter_statistics(http: httpx.Client) -> None:
    text = http.post("/generate", json={"prefix": "the ", "length": 300, "temperature": 0.7, "seed": 1}).json()["text"]
    vowels = sum(text.count(v) for v in "aeiou") / max(1, len(text.replace(" ", "")))
    words = text.split()
    assert 0.25 < vowels < 0.55 and 2 < np.mean([len(w) for w in words]) < 9  # not uniform noise over 27 chars


def test_sync_http_client(server: Server, tmp_path: Path) -> None:
    image = tmp_path / "digit.png"
    image.write_bytes(png(digit_images(1)[0][0]))
    with bentoml.SyncHTTPClient(server.url) as client:
        assert client.is_ready()
        answer = client.classify(images=[image], k=2)
        assert len(answer["results"][0]["top"]) == 2
        generated = client.generate(prefix="the ", length=12, temperature=0)
        assert len(generated["text"]) == 12
        assert set(client.models()["endpoints"]) == {"classify", "segment", "forecast", "generate"}


# --------------------------------------------------------------------------------------------------- bad requests

def test_bad_images(http: httpx.Client, tmp_path: Path) -> None:
    good = png(digit_images(1)[0][0])
    assert_error(http.post("/classify", files={"images": ("a.txt", b"hello, not an image")}), 415, "images[0]",
                 "not an image")
    assert_error(http.post("/classify", files={"images": ("a.png", good[: len(good) // 2])}), 400, "truncated")
    assert_error(http.post("/segment", files={"image": ("a.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 40)}), 415, "image")
    bomb = png(Image.new("L", (12_000, 12_000)))  # 144 megapixels in ~140 kB
    assert len(bomb) < LIMITS["max_upload_bytes"]
    assert_error(http.post("/classify", files={"images": ("bomb.png", bomb)}), 413, "decompression bomb")
    large = png(Image.new("L", (1_500, 1_000)))  # 1.5 megapixels, over the test limit of 1
    assert_error(http.post("/segment", files={"image": ("big.png", large)}), 413, "1,500,000 pixels", "1,000,000")
    noise = np.random.default_rng(0).integers(0, 256, (600, 600), dtype=np.uint8)  # incompressible: ~360 kB
    body = [("images", ("a.png", png(noise))), ("images", ("b.png", png(noise)))]
    assert_error(http.post("/classify", files=body), 413, "larger than the limit of 400,000 bytes")
    deep = png(np.full((8, 8), 40_000, dtype=np.uint16))  # 16-bit grayscale
    assert_error(http.post("/classify", files={"images": ("16bit.png", deep)}), 422, "not 8-bit")


def test_bad_classify_parameters(http: httpx.Client) -> None:
    image = ("d.png", png(digit_images(1)[0][0]))
    assert_error(http.post("/classify", data={"k": "3"}, files={"k2": (None, "1")}), 400, "images", "Field required")
    assert_error(http.post("/classify", files={"images": image, "k": image}), 400, "k: a file upload where")
    assert_error(http.post("/classify", files={"images": image, "other": image}), 400, "other: a file upload where")
    assert_error(http.post("/classify", files={"images": image}, data={"k": "0"}), 400, "k", "greater than or equal")
    assert_error(http.post("/classify", files={"images": image}, data={"k": "lots"}), 400, "k")
    assert_error(http.post("/classify", files=[("images", image)] * 5), 400, "images", "at most 4")
    # a file field given as a plain value: refused, never fetched as a URL
    assert_error(http.post("/classify", files={"images": (None, "http://127.0.0.1:1/x.png")}), 400, "images",
                 "must be a file upload")


def test_bad_series(http: httpx.Client) -> None:
    assert_error(http.post("/forecast", json={"values": []}), 400, "values", "at least 1 item")
    assert_error(http.post("/forecast", content=b'{"values": [1, 2, NaN, 4, 5]}',
                           headers={"content-type": "application/json"}), 400, "values")
    assert_error(http.post("/forecast", json={"values": [1, 2, "x", 4]}), 400, "values")
    assert_error(http.post("/forecast", json={"values": [0.1, 0.2]}), 422, "2 values", "window of 4")
    assert_error(http.post("/forecast", json={"values": [1e300] * 4}), 422, "too large")
    assert_error(http.post("/forecast", json={"values": [0.0] * 1_001}), 400, "values", "at most 1000")
    assert_error(http.post("/forecast", json={"values": [0.0] * 4, "k": 51}), 400, "k", "less than or equal to 50")
    assert_error(http.post("/forecast", json={"values": [0.0] * 4, "model": "nope"}), 404, "unknown model 'nope'")
    assert_error(http.post("/forecast", content=b"[1, 2", headers={"content-type": "application/json"}), 400,
                 "Invalid JSON")


def test_bad_generation_requests(http: httpx.Client) -> None:
    def post(**body: object) -> httpx.Response:
        return http.post("/generate", json={"prefix": "the ", **body})

    assert_error(post(prefix="The Time!"), 422, "'!'", "'T'", "does not know")
    assert_error(post(prefix=""), 400, "prefix")
    assert_error(post(prefix="a" * 201), 400, "prefix", "at most 200")
    assert_error(post(length=0), 400, "length")
    assert_error(post(length=301), 400, "length", "less than or equal to 300")
    assert_error(post(top_k=29), 422, "top_k 29", "28 tokens")
    assert_error(post(top_k=-1), 400, "top_k")
    assert_error(post(temperature=-0.5), 400, "temperature")
    assert_error(post(temperature=1e9), 400, "temperature")
    assert_error(post(seed=-1), 400, "seed")
    assert_error(post(model="char-lstm"), 404, "unknown model 'char-lstm'", "test-chars")
