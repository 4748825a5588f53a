"""The lean classify route (service/lean.py): which forms it takes, that it answers exactly what BentoML's route
answers, and that everything else still reaches BentoML's route (and its documented errors)."""
from __future__ import annotations

import asyncio
import io
import json
import threading
from pathlib import Path
from typing import Any, Iterator

import httpx
import numpy as np
import pytest
from PIL import Image
from pydantic import BaseModel

from live_server import Server, serve
from service import lean
from service.errors import NOT_FOUND, RequestError
from service.uploads import FORM_KEY, FormPart


def image_part(data: bytes = b"png") -> FormPart:
    return FormPart("images", True, data)


def value(name: str, text: str) -> FormPart:
    return FormPart(name, False, text.encode())


@pytest.mark.parametrize("parts, expected", [
    ([image_part()], lean.ClassifyRequest([b"png"], 5, None)),
    ([image_part(), value("k", "3"), value("model", "digits-cnn:abc123")],
     lean.ClassifyRequest([b"png"], 3, "digits-cnn:abc123")),
    ([image_part(b"a"), image_part(b"b"), value("k", "1000")], lean.ClassifyRequest([b"a", b"b"], 1000, None)),
])
def test_well_formed_forms_take_the_lean_path(parts: list[FormPart], expected: lean.ClassifyRequest) -> None:
    assert lean.classify_request(parts, max_images=32) == expected


@pytest.mark.parametrize("parts", [
    [],  # no image: BentoML's "Field required"
    [image_part()] * 33,  # more than max_images
    [image_part(), value("k", "true")],  # JSON true: the strict integer is refused there
    [image_part(), value("k", "0")],
    [image_part(), value("k", "1001")],
    [image_part(), value("k", "05")],
    [image_part(), value("k", " 5")],
    [image_part(), value("k", "3"), value("k", "4")],
    [image_part(), value("model", "null")],  # JSON null: the default model there
    [image_part(), value("model", "123")],  # JSON number: not a string there
    [image_part(), value("model", '"digits-cnn"')],
    [image_part(), value("model", "a b")],
    [image_part(), value("overlay", "true")],  # not a classify field
], ids=lambda parts: ",".join(f"{p.name}={p.data[:8]!r}" for p in parts) or "empty")
def test_anything_else_is_left_to_bentoml(parts: list[FormPart]) -> None:
    assert lean.classify_request(parts, max_images=32) is None


def run_asgi(app: Any, scope: dict) -> list[dict]:
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def test_the_middleware_answers_a_lean_request_and_passes_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    reached: list[str] = []

    async def inner(scope: dict, receive: Any, send: Any) -> None:
        reached.append(scope["path"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def answer(request: lean.ClassifyRequest) -> bytes:
        if request.model == "missing":
            raise RequestError(NOT_FOUND, "unknown model 'missing'")
        return json.dumps({"k": request.k, "images": len(request.images)}).encode()

    monkeypatch.setattr(lean, "_answers", {"/classify": answer})
    app = lean.LeanRoutes(inner, max_images=32)
    base = {"type": "http", "method": "POST", "path": "/classify", "headers": []}

    sent = run_asgi(app, {**base, FORM_KEY: [image_part(), value("k", "2")]})
    assert sent[0]["status"] == 200 and json.loads(sent[1]["body"]) == {"k": 2, "images": 1}
    assert dict(sent[0]["headers"])[b"content-type"] == b"application/json"
    sent = run_asgi(app, {**base, FORM_KEY: [image_part(), value("model", "missing")]})
    assert sent[0]["status"] == 404 and "unknown model" in json.loads(sent[1]["body"])["error"]
    assert reached == []
    run_asgi(app, {**base, FORM_KEY: [image_part(), value("k", "true")]})  # BentoML's to judge
    run_asgi(app, base)  # no parsed form (e.g. a JSON body)
    run_asgi(app, {**base, "path": "/segment", FORM_KEY: [image_part()]})  # no lean answer for that route
    assert reached == ["/classify", "/classify", "/segment"]


# ------------------------------------------------------------------------------------------------ a real server

@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def digit_png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (28, 28), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_lean_and_bentoml_routes_give_the_same_answer(http: httpx.Client, server: Server) -> None:
    """`model` sent as a JSON string goes through BentoML's route (service/lean.py leaves JSON-looking names to it);
    as a plain name through the lean one: same bytes."""
    tag = server.tags["test-digits"]
    files = [("images", (f"{i}.png", digit_png(i), "image/png")) for i in range(3)]
    lean_answer = http.post("/classify", files=files, data={"k": "3", "model": tag})
    bentoml_answer = http.post("/classify", files=files, data={"k": "3", "model": json.dumps(tag)})
    assert lean_answer.status_code == bentoml_answer.status_code == 200
    assert lean_answer.json() == bentoml_answer.json()
    assert [len(r["top"]) for r in lean_answer.json()["results"]] == [3, 3, 3]
    raw = http.post("/classify", content=digit_png(1), headers={"content-type": "image/png"}, params={"k": 3})
    assert raw.json()["results"][0] == lean_answer.json()["results"][1]


def test_lean_route_errors_are_the_documented_ones(http: httpx.Client) -> None:
    not_an_image = http.post("/classify", files=[("images", ("x.png", b"not a png", "image/png"))])
    assert not_an_image.status_code == 415 and "images[0]" in not_an_image.json()["error"]
    unknown = http.post("/classify", files=[("images", ("x.png", digit_png(0), "image/png"))],
                        data={"model": "no-such-model"})
    assert unknown.status_code == 404 and "unknown model" in unknown.json()["error"]
    boolean_k = http.post("/classify", files=[("images", ("x.png", digit_png(0), "image/png"))], data={"k": "true"})
    assert boolean_k.status_code == 400 and boolean_k.json()["detail"][0]["loc"] == ["k"]


JSON_CALLS = [
    ("/forecast", {"values": [0.1 * i for i in range(30)], "k": 4}),
    ("/forecast", {"values": [0.5] * 30, "k": 2, "model": "sine-forecaster"}),
    ("/forecast", {"values": [0.5], "k": 2}),  # shorter than the window: the method's 422
    ("/forecast", {"values": [0.5] * 30, "k": True}),  # strict integer: BentoML's 400
    ("/forecast", {"values": [0.5] * 30, "k": 1, "extra": 1}),
    ("/forecast", {}),
    ("/generate", {"prefix": "the time", "length": 20, "temperature": 0, "seed": 3}),
    ("/generate", {"prefix": "the time", "length": 20, "temperature": 0.8, "top_k": 3, "seed": 7}),
    ("/generate", {"prefix": "\u2603", "length": 5, "seed": 1}),  # a character outside the vocabulary
    ("/generate", {"prefix": "the", "length": 100_000}),  # over the configured limit
    ("/predict", {"features": [[1.0, 2.0]]}),  # no model serves predict here: 404
    ("/classify_text", {"texts": ["a fine film"]}),
]


def test_lean_json_routes_answer_what_bentoml_answers(stored: tuple[Path, dict[str, str]], http: httpx.Client,
                                                      tmp_path_factory: pytest.TempPathFactory) -> None:
    """The JSON endpoints' lean answers, byte for byte and status for status, against a server with
    `lean_routes: false` (every request through BentoML's route); a malformed body falls through to the same
    documented 400."""
    home, tags = stored
    with serve(home, tags, tmp_path_factory.mktemp("bentoml-route"), overrides={"lean_routes": False}) as plain:
        with httpx.Client(base_url=plain.url, timeout=60) as bentoml_route:
            for path, body in JSON_CALLS:
                lean_answer, bentoml_answer = http.post(path, json=body), bentoml_route.post(path, json=body)
                assert (lean_answer.status_code, lean_answer.content) == (
                    bentoml_answer.status_code, bentoml_answer.content), (path, body)
            for raw in (b"{", b"[1, 2]", b'{"values": "abc"}'):
                lean_answer = http.post("/forecast", content=raw, headers={"content-type": "application/json"})
                bentoml_answer = bentoml_route.post("/forecast", content=raw,
                                                    headers={"content-type": "application/json"})
                assert lean_answer.status_code == bentoml_answer.status_code == 400
                assert lean_answer.json() == bentoml_answer.json()


class Steps(BaseModel):
    steps: int


class Ran(BaseModel):
    thread: int


def test_a_json_call_runs_on_the_event_loop_once_it_is_known_to_be_short() -> None:
    """The first call runs in a thread and is measured; calls expected within inline_s then run on the loop, and a
    call asking for much more work goes to a thread again."""

    def method(steps: int) -> Ran:
        return Ran(thread=threading.get_ident())

    route = lean.JsonRoute(Steps, method, threads=1, units=lambda call: call["steps"], inline_s=0.01)

    async def run() -> tuple[int, list[bool]]:
        loop_thread = threading.get_ident()
        where = []
        for steps in (1, 1, 1, 10**9):
            answer = await route.answer(json.dumps({"steps": steps}).encode())
            where.append(Ran.model_validate_json(answer).thread == loop_thread)
        return loop_thread, where

    _, on_loop = asyncio.run(run())
    assert on_loop == [False, True, True, False]
    assert asyncio.run(route.answer(b'{"steps": "many"}')) is None  # refused by the input model: BentoML's to judge
