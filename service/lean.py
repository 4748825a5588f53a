"""Lean routes: a well-formed classify request answered inside the ASGI stack `bentoml serve` builds, without the
per-request IO work of BentoML's route.

A py-spy profile of a worker under load (BENCHMARKS.md, serve_load) put more of a classify request's time in
BentoML's IO path than in the model: each upload spooled to a temporary file and read back, the form parsed a second
time and validated by pydantic, its request context and router, the answer validated again on the way out. Here
the form that service/uploads.py already parsed and checked (size, framing, field kinds) is read from the scope,
and the request goes to the same batcher and the same answer as the API method's (service.vision.classify_answer).
`bentoml serve` keeps the rest: its process management, /readyz, /metrics and tracing (their middleware stands
outside this one, so these requests are counted), its timeout and concurrency limits, `bentoml build`.

Only a request whose form is exactly what the API documents takes this path: 1..max_images files in `images`, at
most one `k` written as a plain decimal integer in 1..1000, at most one `model` written as a plain name[:version].
Anything else (a missing field, k=true, k out of range, an unknown field, a JSON body) falls through to BentoML's
route unchanged, so every validation error keeps its one documented shape; errors found later (a bad image, an
unknown model, the pixel budget) are the same RequestErrors the API method answers.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Awaitable, Callable, Sequence

from service.errors import RequestError
from service.schemas import MAX_K
from service.uploads import FORM_KEY, ASGIApp, FormPart, Receive, Scope, Send

MODEL_NAME = re.compile(rb"[A-Za-z0-9][A-Za-z0-9_.\-]*(:[A-Za-z0-9_.\-]+)?")
PLAIN_K = re.compile(rb"[1-9][0-9]{0,3}")


@dataclass(frozen=True)
class ClassifyRequest:
    images: list[bytes]
    k: int
    model: str | None


def _single_value(parts: Sequence[FormPart], name: str) -> tuple[bool, bytes | None]:
    """(usable, value) of a plain field that may appear at most once."""
    values = [p.data for p in parts if p.name == name]
    if len(values) > 1:
        return False, None
    return True, values[0] if values else None


def _plain_text(value: bytes) -> bool:
    """BentoML runs json.loads on every form value and keeps the text only where that fails: "null" or "123" would
    become None or a number there, so such names are left to its route."""
    try:
        json.loads(value)
    except ValueError:
        return True
    return False


def classify_request(parts: Sequence[FormPart], max_images: int) -> ClassifyRequest | None:
    """The request a parsed form stands for, or None when BentoML's route should judge it."""
    images = [p.data for p in parts if p.name == "images"]
    if not 1 <= len(images) <= max_images or any(p.name not in ("images", "k", "model") for p in parts):
        return None
    k_ok, k = _single_value(parts, "k")
    model_ok, model = _single_value(parts, "model")
    if not (k_ok and model_ok):
        return None
    if k is not None and (not PLAIN_K.fullmatch(k) or int(k) > MAX_K):
        return None
    if model is not None and not (MODEL_NAME.fullmatch(model) and _plain_text(model)):
        return None
    return ClassifyRequest(images, int(k) if k is not None else 5, model.decode() if model is not None else None)


Answer = Callable[[ClassifyRequest], Awaitable[bytes]]
_answers: dict[str, Answer] = {}  # route → the answer of this process's service instance


def serve(route: str, answer: Answer) -> None:
    """Called by the service instance once its models are loaded: from then on `route` takes the lean path."""
    _answers[route] = answer


class LeanRoutes:
    def __init__(self, app: ASGIApp, max_images: int):
        self.app, self.max_images = app, max_images

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        form = scope.get(FORM_KEY)  # set by service.uploads.UploadGuard on the API routes' POSTs
        answer = _answers.get(scope.get("path", "")) if form is not None else None
        request = classify_request(form, self.max_images) if answer is not None else None
        if request is None:
            return await self.app(scope, receive, send)
        try:
            body = await answer(request)
        except RequestError as e:
            return await e.response()(scope, receive, send)
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
