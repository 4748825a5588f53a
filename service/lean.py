"""Lean routes: well-formed API requests answered inside the ASGI stack `bentoml serve` builds, without the
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

The JSON endpoints (forecast, generate, predict, classify_text) take the same shortcut: the body UploadGuard read
is validated by the API's own input model (BentoML's `input_spec`, the very validation its route runs), the API
method runs (on the event loop when the call is known to be short, else in a worker thread: JsonRoute), and its
answer is serialized as BentoML serializes it. A body that input model refuses, a Content-Type other than JSON,
and an event stream (`Accept: text/event-stream`) go to BentoML's route.
"""
from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Sequence

import anyio
from pydantic import BaseModel, ValidationError
from starlette.responses import Response

from service.admission import charge, cpu_timed
from service.errors import RequestError
from service.schemas import MAX_K
from service.streaming import wants_stream
from service.uploads import BODY_KEY, FORM_KEY, ASGIApp, FormPart, Receive, Scope, Send, bentoml_media_type

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


@dataclass
class JsonRoute:
    """A JSON API: its input model (BentoML's input_spec) and its method, called with the validated fields.

    A thread hand-off costs a short call more than the call itself once the process is busy: the event loop and the
    thread wait for each other's turn at the GIL. So a call expected to take at most `inline_s` runs on the event
    loop, and any other in a worker thread, `threads` at once (as BentoML runs sync APIs). The expectation is
    learned on the running machine: `units(params)` says how much work a call asks for (steps, rows, texts), and
    the CPU seconds per unit that the model asked for took on its previous calls (a moving average) times that
    gives the call's time. A model's first call runs in the thread, to be measured."""

    params: type[BaseModel]
    method: Callable[..., Any]
    threads: int
    units: Callable[[dict[str, Any]], float]
    inline_s: float
    per_unit: dict[Any, float] = field(default_factory=dict)  # model asked for → seconds per unit of work
    _limiter: anyio.CapacityLimiter | None = field(default=None, repr=False)

    def limiter(self) -> anyio.CapacityLimiter:
        self._limiter = self._limiter or anyio.CapacityLimiter(self.threads)  # made inside the server's loop
        return self._limiter

    async def answer(self, body: bytes) -> Response | bytes | None:
        """The method's answer (JSON bytes, or the Response it returned for a RequestError), or None when the
        input model refuses the body (BentoML's route then answers its documented 400)."""
        try:
            params = self.params.model_validate_json(body or b"{}")
        except ValidationError:
            return None
        kwargs = {name: getattr(params, name) for name in type(params).model_fields}
        model, units = kwargs.get("model"), max(self.units(kwargs), 1.0)
        call = functools.partial(cpu_timed, functools.partial(self.method, **kwargs))
        per_unit = self.per_unit.get(model)
        if per_unit is not None and per_unit * units <= self.inline_s:
            output, seconds = call()
        else:
            output, seconds = await anyio.to_thread.run_sync(call, limiter=self.limiter())
        charge(seconds)
        self.per_unit[model] = seconds / units if per_unit is None else 0.8 * per_unit + 0.2 * seconds / units
        return output if isinstance(output, Response) else output.model_dump_json().encode()


_json_routes: dict[str, JsonRoute] = {}


def serve(route: str, answer: Answer) -> None:
    """Called by the service instance once its models are loaded: from then on `route` takes the lean path."""
    _answers[route] = answer


def serve_json(route: str, json_route: JsonRoute) -> None:
    """The same for a JSON API."""
    _json_routes[route] = json_route


def _is_json(scope: Scope) -> bool:
    """A call BentoML would parse as JSON (by its own reading of the media type), that does not ask for an event
    stream."""
    headers = {name.decode("latin-1"): value for name, value in scope["headers"]}  # ASGI names are lower-case
    return (bentoml_media_type(headers) == "application/json"
            and not wants_stream(headers.get("accept", b"").decode("latin-1")))


async def send_json(send: Send, body: bytes) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class LeanRoutes:
    def __init__(self, app: ASGIApp, max_images: int):
        self.app, self.max_images = app, max_images

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        form = scope.get(FORM_KEY)  # set by service.uploads.UploadGuard on the API routes' POSTs
        if form is not None:
            return await self._form(form, path, scope, receive, send)
        json_route = _json_routes.get(path)
        if json_route is None or BODY_KEY not in scope or not _is_json(scope):
            return await self.app(scope, receive, send)
        answer = await json_route.answer(scope[BODY_KEY])
        if answer is None:
            return await self.app(scope, receive, send)
        if isinstance(answer, Response):
            return await answer(scope, receive, send)
        await send_json(send, answer)

    async def _form(self, form: Sequence[FormPart], path: str, scope: Scope, receive: Receive, send: Send) -> None:
        answer = _answers.get(path)
        request = classify_request(form, self.max_images) if answer is not None else None
        if request is None:
            return await self.app(scope, receive, send)
        try:
            body = await answer(request)
        except RequestError as e:
            return await e.response()(scope, receive, send)
        await send_json(send, body)
