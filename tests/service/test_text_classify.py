"""classify_text on a real `bentoml serve`: texts tokenized from the model card (as the training texts were), top-k
labels with probabilities, the request limits, and the same model under the Open Inference Protocol at /v2 with
int64 token ids."""
from __future__ import annotations

import json
from typing import Iterator

import httpx
import numpy as np
import pytest

from live_server import LIMITS, Server
from models.artifact.runtime import make_session
from models.artifact.store import load_from_store
from models.artifact.text import encode

MAX_TEXTS, MAX_TEXT_LENGTH = 8, 300
SERVER_CONFIG = {"endpoints": {"classify_text": {"models": ["test-text"]}},  # read by conftest's `server` fixture
                 "limits": {**LIMITS, "max_texts": MAX_TEXTS, "max_text_length": MAX_TEXT_LENGTH}}
TEXTS = ["the phone is great, would buy again", "the kettle is terrible, returned it", "ordinary lamp, nothing special"]


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def card_input(http: httpx.Client) -> dict:
    (model,) = http.post("/models", json={}).json()["endpoints"]["classify_text"]["models"]
    return model["input"]


def local_scores(server: Server, ids: np.ndarray) -> np.ndarray:
    """The stored graph's scores for token ids, run here without the service."""
    session = make_session(load_from_store(server.tags["test-text"]).onnx_path, 1)
    return session.run(["logits"], {"tokens": ids})[0]


def test_texts_get_their_labels_as_the_stored_graph_scores_them(http: httpx.Client, server: Server,
                                                                 card_input: dict) -> None:
    answer = http.post("/classify_text", json={"texts": TEXTS, "k": 2})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"] == server.tags["test-text"] and len(body["results"]) == 3
    assert [r["top"][0]["label"] for r in body["results"]] == ["positive", "negative", "neutral"]
    text = card_input["text"]
    ids = encode(TEXTS, card_input["vocab"], text["split"], text["lowercase"], text["length"])
    scores = local_scores(server, ids)
    probabilities = np.exp(scores - scores.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    for result, p in zip(body["results"], probabilities):
        assert len(result["top"]) == 2 and result["top"][0]["probability"] >= result["top"][1]["probability"]
        assert result["top"][0]["probability"] == pytest.approx(float(p.max()), abs=1e-5)
        assert result["unknown"] == 0 and result["truncated"] is False
    assert body["results"][0]["tokens"] == 8  # the phone is great , would buy again


def test_k_is_capped_long_texts_are_cut_and_unknown_words_counted(http: httpx.Client, card_input: dict) -> None:
    long = "the phone is great " * 12  # 48 tokens (228 characters), the model reads the first 16
    body = http.post("/classify_text", json={"texts": [long, "zebra quokka"], "k": 10}).json()
    first, second = body["results"]
    assert len(first["top"]) == 3 and sum(t["probability"] for t in first["top"]) == pytest.approx(1.0)
    assert first["tokens"] == 48 and first["truncated"] is True and card_input["text"]["length"] == 16
    assert second["unknown"] == 2 and second["truncated"] is False


def test_models_shows_the_vocabulary_and_the_tokenizer(card_input: dict) -> None:
    assert card_input["kind"] == "tokens" and card_input["vocab"][:2] == ["<pad>", "<unk>"]
    assert card_input["text"] == {"split": "words", "lowercase": True, "length": 16}


@pytest.mark.parametrize("body, status, fragment", [
    ({"texts": []}, 400, "texts"),
    ({"texts": ["a"] * (MAX_TEXTS + 1)}, 400, "texts"),
    ({"texts": ["a" * (MAX_TEXT_LENGTH + 1)]}, 400, "texts"),
    ({"texts": [""]}, 400, "texts"),
    ({"texts": "one text"}, 400, "texts"),
    ({"texts": ["a"], "k": 0}, 400, "k"),
    ({"texts": ["a"], "model": "nope"}, 404, "unknown model 'nope' for classify_text"),
])
def test_bad_requests_are_refused(http: httpx.Client, body: dict, status: int, fragment: str) -> None:
    answer = http.post("/classify_text", json=body)
    assert answer.status_code == status, answer.text
    assert fragment in answer.text


def test_open_inference_takes_the_token_ids(http: httpx.Client, server: Server, card_input: dict) -> None:
    text = card_input["text"]
    ids = encode(TEXTS, card_input["vocab"], text["split"], text["lowercase"], text["length"])  # (3, 16) int64
    metadata = http.get("/v2/models/test-text").json()
    assert metadata["inputs"] == [{"name": "tokens", "datatype": "INT64", "shape": [-1, -1]}]
    assert metadata["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 3]}]
    request = {"inputs": [{"name": "tokens", "datatype": "INT64", "shape": list(ids.shape), "data": ids.tolist()}],
               "outputs": [{"name": "logits", "parameters": {"classification": 1}}]}
    answer = http.post("/v2/models/test-text/infer", content=json.dumps(request))
    assert answer.status_code == 200, answer.text
    (output,) = answer.json()["outputs"]
    assert [entry.split(":")[2] for entry in output["data"]] == ["positive", "negative", "neutral"]
    del request["outputs"]
    scores = np.array(http.post("/v2/models/test-text/infer", content=json.dumps(request)).json()["outputs"][0]["data"])
    np.testing.assert_allclose(scores.reshape(3, 3), local_scores(server, ids), rtol=1e-5, atol=1e-5)
    request["inputs"][0]["data"] = [[len(card_input["vocab"])] * 16]
    request["inputs"][0]["shape"] = [1, 16]
    refused = http.post("/v2/models/test-text/infer", content=json.dumps(request))
    assert refused.status_code == 400 and "token ids must lie in" in refused.text
