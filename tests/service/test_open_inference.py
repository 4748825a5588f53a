"""The Open Inference Protocol (KServe v2) at /v2 of a real server, driven by tritonclient (the field's own client)
on a model of every task, and by raw HTTP for what a hostile or careless client sends.

Every answer is checked against the stored ONNX graph run locally on the same tensors: /v2 serves the very graphs
the task endpoints use, with the tensors they take (uint8 NHWC pixels, int64 token ids with the recurrent state,
float32 windows and feature rows). Every malformed request gets a 4xx naming what was wrong, never a 5xx.
"""
from __future__ import annotations

import json
from typing import Iterator

import httpx
import numpy as np
import pytest

from live_server import LIMITS, Server
from models.artifact.runtime import make_session
from models.artifact.store import load_from_store
from models.data import load_dataset

http_client = pytest.importorskip("tritonclient.http", reason="needs tritonclient[http] (pip install 'tritonclient[http]')")
from tritonclient.utils import InferenceServerException  # noqa: E402

MAX_BODY = 300_000
SHAPES_PIXELS = 64 * 64
SERVER_CONFIG = {  # read by conftest's `server` fixture: every task, and a pixel budget of 3 shapes images
    "endpoints": {"classify": {"models": ["test-digits", {"tag": "test-digits-mlp", "int8": True}]},
                  "segment": {"models": ["test-shapes"]}, "generate": {"models": ["test-chars"]},
                  "forecast": {"models": ["sine-forecaster"]}, "predict": {"models": ["linear-regression"]},
                  "classify_text": {"models": ["test-text"]}},
    "limits": {**LIMITS, "max_upload_bytes": MAX_BODY, "max_request_pixels": 3 * SHAPES_PIXELS}}


@pytest.fixture(scope="module")
def triton(server: Server) -> Iterator["http_client.InferenceServerClient"]:
    client = http_client.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=120)
    yield client
    client.close()


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def local(tag: str, feeds: dict[str, np.ndarray], int8: bool = False) -> dict[str, np.ndarray]:
    """The stored graph's outputs on `feeds`, run here without the service."""
    stored = load_from_store(tag)
    session = make_session(stored.int8_path if int8 else stored.onnx_path, 1)
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def tensor(name: str, array: np.ndarray, datatype: str, binary: bool = True) -> "http_client.InferInput":
    given = http_client.InferInput(name, list(array.shape), datatype)
    given.set_data_from_numpy(array, binary_data=binary)
    return given


def digits(count: int) -> tuple[np.ndarray, list[int]]:
    data = load_dataset("digits", {}, seed=0)
    return data.test_x[:count].permute(0, 2, 3, 1).numpy().astype(np.uint8), [int(y) for y in data.test_y[:count]]


# ------------------------------------------------------------------------------------------------ health, metadata

def test_health_and_server_metadata(triton: "http_client.InferenceServerClient") -> None:
    assert triton.is_server_live() and triton.is_server_ready()
    metadata = triton.get_server_metadata()
    assert metadata["name"] == "specserve" and metadata["version"] == ""  # versions undisclosed by default
    assert {"binary_tensor_data", "classification"} <= set(metadata["extensions"])


def test_every_served_model_is_described_as_its_graph(triton: "http_client.InferenceServerClient",
                                                      http: httpx.Client, server: Server) -> None:
    endpoints = http.post("/models", json={}).json()["endpoints"]
    served = {m["name"]: m["tag"] for e in endpoints.values() for m in e["models"]}
    assert set(served) == set(server.tags)  # every stored test model is served in this module
    for name, tag in served.items():
        version = tag.split(":")[1]
        assert triton.is_model_ready(name) and triton.is_model_ready(name, version)
        metadata = triton.get_model_metadata(name, version)
        session = make_session(load_from_store(tag).onnx_path, 1)
        dims = lambda args: [[d if isinstance(d, int) else -1 for d in a.shape] for a in args]  # noqa: E731
        assert metadata["name"] == name and metadata["versions"] == [version]
        assert [i["name"] for i in metadata["inputs"]] == [i.name for i in session.get_inputs()]
        assert [i["shape"] for i in metadata["inputs"]] == dims(session.get_inputs())
        assert [o["name"] for o in metadata["outputs"]] == [o.name for o in session.get_outputs()]
        assert [o["shape"] for o in metadata["outputs"]] == dims(session.get_outputs())
    assert triton.get_model_metadata("test-chars")["inputs"] == [
        {"name": "tokens", "datatype": "INT64", "shape": [-1, -1]},
        {"name": "state_in_0", "datatype": "FP32", "shape": [-1, 1, 48]}]
    for missing in (lambda: triton.get_model_metadata("nope"), lambda: triton.get_model_metadata("test-digits", "0")):
        with pytest.raises(InferenceServerException) as refused:
            missing()
        assert "404" in str(refused.value.status()) or "unknown model" in str(refused.value)
    assert not triton.is_model_ready("test-digits", "0")


def test_every_served_model_has_a_triton_model_config(triton: "http_client.InferenceServerClient",
                                                      server: Server) -> None:
    """What perf_analyzer and get_model_config read: the graph's tensors without their batch axis, and the batch
    bound the server enforces."""
    for name in server.tags:
        metadata, config = triton.get_model_metadata(name), triton.get_model_config(name)
        assert config["name"] == name and config["platform"] == "onnxruntime_onnx"
        assert config["max_batch_size"] >= 1
        for described, entries in ((metadata["inputs"], config["input"]), (metadata["outputs"], config["output"])):
            assert [(e["name"], e["data_type"], e["dims"]) for e in entries] == [
                (t["name"], f"TYPE_{t['datatype']}", t["shape"][1:]) for t in described]
    assert triton.get_model_config("test-digits")["input"] == [
        {"name": "pixels", "data_type": "TYPE_UINT8", "dims": [8, 8, 1]}]  # sklearn digits
    with pytest.raises(InferenceServerException):
        triton.get_model_config("nope")


# ------------------------------------------------------------------------------------------------ every task

def test_classification_pixels(triton: "http_client.InferenceServerClient", http: httpx.Client, server: Server) -> None:
    batch = LIMITS["max_images"]  # the most images one request may carry, here as there
    pixels, labels = digits(4 * batch)  # uint8 (16, 8, 8, 1) NHWC, as the graph takes them
    answers = [triton.infer("test-digits", [tensor("pixels", pixels[i: i + batch], "UINT8")])
               for i in range(0, len(pixels), batch)]
    logits = np.concatenate([answer.as_numpy("logits") for answer in answers])
    assert answers[0].get_response()["model_version"] == server.tags["test-digits"].split(":")[1]
    np.testing.assert_allclose(logits, local(server.tags["test-digits"], {"pixels": pixels})["logits"], rtol=1e-5,
                               atol=1e-5)
    assert sum(int(p) == y for p, y in zip(logits.argmax(1), labels)) >= 14  # the model is right
    pixels = pixels[:batch]
    logits = logits[:batch]
    as_json = triton.infer("test-digits", [tensor("pixels", pixels, "UINT8", binary=False)],
                           outputs=[http_client.InferRequestedOutput("logits", binary_data=False)])
    np.testing.assert_array_equal(as_json.as_numpy("logits"), logits)  # JSON carries float32 values exactly
    # the classification extension: "score:index:label", best first, agreeing with /classify's labels
    top = triton.infer("test-digits", [tensor("pixels", pixels[:2], "UINT8")],
                       outputs=[http_client.InferRequestedOutput("logits", class_count=3)]).as_numpy("logits")
    assert top.shape == (2, 3)
    for row, scores in zip(top, logits[:2]):
        fields = [(e.decode() if isinstance(e, bytes) else e).split(":") for e in row]
        assert [int(f[1]) for f in fields] == list(np.argsort(-scores)[:3])
        assert [f[2] for f in fields] == [str(i) for i in np.argsort(-scores)[:3]]  # labels "0".."9"
    # the int8 model serves its int8 graph here too
    int8 = triton.infer("test-digits-mlp", [tensor("pixels", pixels, "UINT8")]).as_numpy("logits")
    np.testing.assert_allclose(int8, local(server.tags["test-digits-mlp"], {"pixels": pixels}, int8=True)["logits"],
                               rtol=1e-5, atol=1e-5)


def test_segmentation_pixels(triton: "http_client.InferenceServerClient", server: Server) -> None:
    shapes = load_dataset("shapes", {"train_count": 1, "test_count": 2}, seed=0)
    pixels = shapes.test_x.permute(0, 2, 3, 1).numpy().astype(np.uint8)  # (2, 64, 64, 3)
    logits = triton.infer("test-shapes", [tensor("pixels", pixels, "UINT8")]).as_numpy("logits")
    assert logits.shape == (2, 4, 64, 64)
    np.testing.assert_allclose(logits, local(server.tags["test-shapes"], {"pixels": pixels})["logits"], rtol=1e-4,
                               atol=1e-4)


def test_tokens_with_the_recurrent_state(triton: "http_client.InferenceServerClient", http: httpx.Client,
                                         server: Server) -> None:
    vocab = http.post("/models", json={}).json()["endpoints"]["generate"]["models"][0]["input"]["vocab"]
    ids = np.array([[vocab.index(c) for c in "the time"]], dtype=np.int64)  # (1, 8)
    whole = triton.infer("test-chars", [tensor("tokens", ids, "INT64")])  # no state given: zeros
    reference = local(server.tags["test-chars"], {"tokens": ids, "state_in_0": np.zeros((1, 1, 48), np.float32)})
    np.testing.assert_allclose(whole.as_numpy("logits"), reference["logits"], rtol=1e-4, atol=1e-5)
    # stepping: the prefix, then one token with the state returned, is the whole sequence at its last step
    first = triton.infer("test-chars", [tensor("tokens", ids[:, :-1], "INT64")])
    state = first.as_numpy("state_out_0")
    step = triton.infer("test-chars", [tensor("tokens", ids[:, -1:], "INT64"), tensor("state_in_0", state, "FP32")])
    np.testing.assert_allclose(step.as_numpy("logits")[0, -1], whole.as_numpy("logits")[0, -1], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(step.as_numpy("state_out_0"), whole.as_numpy("state_out_0"), rtol=1e-4, atol=1e-5)


def test_forecast_windows_and_regression_features(triton: "http_client.InferenceServerClient",
                                                  server: Server) -> None:
    windows = np.sin(0.1 * (np.arange(4)[None, :] + np.arange(3)[:, None])).astype(np.float32)  # (3, 4) model units
    ahead = triton.infer("sine-forecaster", [tensor("input", windows, "FP32")]).as_numpy("prediction")  # (3, 1)
    np.testing.assert_allclose(ahead, local(server.tags["sine-forecaster"], {"input": windows})["prediction"],
                               rtol=1e-5, atol=1e-6)
    features = np.array([[1.0, 1.0], [0.0, 0.0], [2.0, -1.0]], dtype=np.float32)
    y = triton.infer("linear-regression", [tensor("input", features, "FP32", binary=False)]).as_numpy("prediction")
    np.testing.assert_allclose(y.reshape(-1), 2 * features[:, 0] - 3.4 * features[:, 1] + 4.2, atol=0.1)  # D2L 3.3


# ------------------------------------------------------------------------------------------------ refusals

def infer(http: httpx.Client, model: str, body: dict | bytes, headers: dict | None = None) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http.post(f"/v2/models/{model}/infer", content=content,
                     headers={"content-type": "application/json", **(headers or {})})


def pixels_input(shape: list[int], data: object = None, datatype: str = "UINT8") -> dict:
    return {"name": "pixels", "datatype": datatype, "shape": shape,
            "data": data if data is not None else [0] * int(np.prod(shape))}


@pytest.mark.parametrize("model, body, status, fragment", [
    ("test-digits", {"inputs": [pixels_input([1, 8, 8, 1], datatype="FP32")]}, 400, "is UINT8, got FP32"),
    ("test-digits", {"inputs": [pixels_input([1, 8, 8, 3])]}, 400, "does not fit the graph's [-1, 8, 8, 1]"),
    ("test-digits", {"inputs": [pixels_input([1, 8, 8])]}, 400, "does not fit"),
    ("test-digits", {"inputs": [pixels_input([1, 8, 8, 1], [0] * 63)]}, 400, "64 elements, data has 63"),
    ("test-digits", {"inputs": [pixels_input([1, 8, 8, 1], [256] * 64)]}, 400, "[0, 255]"),
    ("test-digits", {"inputs": [pixels_input([1, 8, 8, 1], [0.5] * 64)]}, 400, "must be integers"),
    ("test-digits", {"inputs": [pixels_input([1, 8, 8, 1], [True] * 64)]}, 400, "must be integers"),
    ("test-digits", {"inputs": [pixels_input([1, 8, 8, 1], ["1"] * 64)]}, 400, "must be integers"),
    ("test-digits", {"inputs": [pixels_input([1, 8, 8, 1], [[0] * 8] * 7 + [[0] * 7])]}, 400, "ragged"),
    ("test-digits", {"inputs": [pixels_input([0, 8, 8, 1], [])]}, 400, "empty"),
    ("test-digits", {"inputs": [pixels_input([5, 8, 8, 1])]}, 413, "5 images in one request; the limit is 4"),
    ("test-shapes", {"inputs": [{**pixels_input([4, 64, 64, 3])}]}, 413, "16,384 pixels in one request"),
    ("test-digits", {"inputs": [{**pixels_input([1, 8, 8, 1]), "name": "image"}]}, 400, "takes ['pixels']"),
    ("test-digits", {"inputs": [pixels_input([1, 8, 8, 1])] * 2}, 400, "given twice"),
    ("test-digits", {"inputs": []}, 400, "inputs"),
    ("test-digits", {"inputs": [pixels_input([1, 8, 8, 1])], "outputs": [{"name": "probs"}]}, 400, "has ['logits']"),
    ("test-shapes", {"inputs": [pixels_input([1, 64, 64, 3])],
                     "outputs": [{"name": "logits", "parameters": {"classification": 2}}]}, 400, "(batch, classes)"),
    ("test-chars", {"inputs": [{"name": "tokens", "datatype": "INT64", "shape": [1, 2], "data": [1, 28]}]}, 400,
     "[0, 27] (the vocabulary)"),
    ("test-chars", {"inputs": [{"name": "tokens", "datatype": "INT64", "shape": [1, 201], "data": [1] * 201}]}, 413,
     "201 steps"),
    ("test-chars", {"inputs": [{"name": "tokens", "datatype": "INT64", "shape": [2, 1], "data": [1, 2]},
                               {"name": "state_in_0", "datatype": "FP32", "shape": [1, 1, 48], "data": [0] * 48}]},
     400, "disagree on the batch size"),
    ("test-chars", {"inputs": [{"name": "state_in_0", "datatype": "FP32", "shape": [1, 1, 48], "data": [0] * 48}]},
     400, "missing input 'tokens'"),
    ("test-chars", {"inputs": [{"name": "tokens", "datatype": "INT64", "shape": [1, 1], "data": [2**63]}]}, 400,
     "tokens"),
    ("linear-regression", {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 2], "data": [1, 1e39]}]},
     400, "finite and within its range"),
    ("linear-regression", {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]},
     400, "does not fit"),
    ("nope", {"inputs": [pixels_input([1, 8, 8, 1])]}, 404, "not found"),
])
def test_malformed_tensors_are_refused_with_reasons(http: httpx.Client, model: str, body: dict, status: int,
                                                     fragment: str) -> None:
    answer = infer(http, model, body)
    assert answer.status_code == status, answer.text
    assert fragment in answer.json()["error"], answer.json()


def test_malformed_bodies_and_binary_framing(http: httpx.Client) -> None:
    header = json.dumps({"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 8, 8, 1],
                                     "parameters": {"binary_data_size": 64}}]}).encode()
    length = {"inference-header-content-length": str(len(header))}
    ok = infer(http, "test-digits", header + bytes(64), length)
    assert ok.status_code == 200 and ok.json()["outputs"][0]["shape"] == [1, 10]
    for body, headers, fragment in [
        (header + bytes(63), length, "ends before its 64 binary bytes"),
        (header + bytes(65), length, "1 bytes of binary data belong to no input"),
        (header + bytes(64), {"inference-header-content-length": "x"}, "Inference-Header-Content-Length"),
        (header + bytes(64), {"inference-header-content-length": "99999"}, "Inference-Header-Content-Length"),
        (header.replace(b"64}", b"60}") + bytes(60), {"inference-header-content-length": str(len(header))},
         "binary_data_size 60 is not 64 × 1 bytes"),
        (header + bytes(64), {"inference-header-content-length": str(len(header) - 5)}, "not valid JSON"),
        (b'{"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 8, 8, 1], "data": [NaN]}]}', {},
         "not valid JSON"),
        (b"[" * 100_000, {}, "nested too deeply"),
        (b'{"inputs": "x"}', {}, "inputs"),
        (b"\xff\xfe", {}, "not valid JSON"),
    ]:
        answer = infer(http, "test-digits", body, headers)
        assert answer.status_code == 400 and fragment in answer.json()["error"], (fragment, answer.text)
    nan = json.dumps({"inputs": [{"name": "state_in_0", "datatype": "FP32", "shape": [1, 1, 48],
                                  "parameters": {"binary_data_size": 192}},
                                 {"name": "tokens", "datatype": "INT64", "shape": [1, 1], "data": [1]}]}).encode()
    answer = infer(http, "test-chars", nan + np.full(48, np.nan, np.float32).tobytes(),
                   {"inference-header-content-length": str(len(nan))})
    assert answer.status_code == 400 and "must be finite" in answer.json()["error"]
    too_big = infer(http, "test-digits", b" " * (MAX_BODY + 1))
    assert too_big.status_code == 413 and f"{MAX_BODY:,} bytes" in too_big.json()["error"]
    chunked = http.post("/v2/models/test-digits/infer", content=iter([b" " * 100_000] * 4),
                        headers={"content-type": "application/json"})
    assert chunked.status_code == 413
    gzipped = infer(http, "test-digits", b"\x1f\x8b", {"content-encoding": "gzip"})
    assert gzipped.status_code == 415
    assert http.get("/v2/models/test-digits/infer").status_code == 405
    assert http.get("/v2/models/test-digits/versions/0/ready").status_code == 404
    assert http.get("/readyz").status_code == 200
