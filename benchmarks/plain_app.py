"""The baseline of benchmarks/serve_load.py: the classify, forecast and generate endpoints' exact work in a bare
Starlette app.

Same models (service.served.load_endpoint: the serving config's models of each endpoint, the same onnxruntime
session set-up with its intra-op threads; an endpoint the config leaves out serves nothing and answers 404, as
specserve does), same work (classify: service.vision.classify_jobs; forecast: service.series.forecast; generate:
service.generation.generate), same answers (service.schemas' ClassifyResult, ForecastResult, GenerateResult as
JSON), same cap on requests computed at once (the config's `threads`, a capacity limiter the work runs under in a
thread) — only the framework differs: no request validation beyond what those functions check. Like each BentoML
worker, a process serves a listening socket it inherits, so N processes share one port:

    SPECSERVE_CONFIG=serving.yaml python -m benchmarks.plain_app --fd 3    # fd 3: a bound, listening TCP socket

(not `uvicorn --workers N` or `uvicorn --fd`: those take the socket for a Unix one, so replies go out without
TCP_NODELAY and every request waits ~40 ms for a delayed ACK.)
"""
from __future__ import annotations

import argparse
import socket
from typing import Any, Callable

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service import generation, series, vision
from service.config import load_config
from service.errors import RequestError
from service.schemas import ClassifyResult, ForecastResult, GenerateResult
from service.served import load_endpoint

CONFIG = load_config()
ENDPOINTS = {name: load_endpoint(name, CONFIG.endpoints.get(name), CONFIG.ort_threads())
             for name in ("classify", "forecast", "generate")}  # those the config leaves out serve none (404)
_limiter: anyio.CapacityLimiter | None = None


def limiter() -> anyio.CapacityLimiter:
    """The cap on requests computed at once, made inside the running event loop (as BentoML makes its own)."""
    global _limiter
    _limiter = _limiter or anyio.CapacityLimiter(CONFIG.threads)
    return _limiter


def classify_work(uploads: list[bytes], k: int, model: str | None) -> bytes:
    served = ENDPOINTS["classify"].pick(model)
    (results,) = vision.classify_jobs(served, [vision.ClassifyJob(uploads, k)], CONFIG.limits.max_image_pixels,
                                      CONFIG.limits.max_request_pixels)
    if isinstance(results, RequestError):
        raise results
    return ClassifyResult(model=served.tag, results=results).model_dump_json().encode()


def forecast_work(values: list[float], k: int, model: str | None) -> bytes:
    served = ENDPOINTS["forecast"].pick(model)
    return ForecastResult(model=served.tag, window=series.window_of(served).window,
                          forecast=series.forecast(served, values, k)).model_dump_json().encode()


def generate_work(prefix: str, length: int, temperature: float, top_k: int, seed: int | None,
                  model: str | None) -> bytes:
    served = ENDPOINTS["generate"].pick(model)
    seed = generation.new_seed() if seed is None else seed
    text = generation.generate(served, prefix, length, temperature, top_k, seed)
    return GenerateResult(model=served.tag, prefix=prefix, text=text, seed=seed).model_dump_json().encode()


async def computed(work: Callable[..., bytes], *args: Any) -> Response:
    """`work(*args)`'s JSON, computed in a thread under the cap; a RequestError as specserve answers it."""
    try:
        body = await anyio.to_thread.run_sync(work, *args, limiter=limiter())
    except RequestError as e:
        return e.response()
    return Response(body, media_type="application/json")


async def classify(request: Request) -> Response:
    form = await request.form()
    uploads = [await f.read() for f in form.getlist("images") if isinstance(f, UploadFile)]
    k, model = int(str(form.get("k", 5))), form.get("model")
    return await computed(classify_work, uploads, k, model if isinstance(model, str) else None)


async def forecast(request: Request) -> Response:
    """JSON {values, k (default 1), model}, as specserve's forecast takes it."""
    data = await request.json()
    return await computed(forecast_work, data["values"], data.get("k", 1), data.get("model"))


async def generate(request: Request) -> Response:
    """JSON {prefix, length (default 100), temperature (1.0), top_k (0), seed (fresh), model}, as specserve's
    generate takes it (no event stream)."""
    data = await request.json()
    return await computed(generate_work, data["prefix"], data.get("length", 100), data.get("temperature", 1.0),
                          data.get("top_k", 0), data.get("seed"), data.get("model"))


async def readyz(request: Request) -> Response:
    return JSONResponse({"ready": True})


app = Starlette(routes=[Route("/classify", classify, methods=["POST"]), Route("/forecast", forecast, methods=["POST"]),
                        Route("/generate", generate, methods=["POST"]), Route("/readyz", readyz)])


def main() -> None:
    parser = argparse.ArgumentParser(description="serve the plain app on an inherited listening socket")
    parser.add_argument("--fd", type=int, required=True)
    config = uvicorn.Config(app, log_config=None, access_log=False, server_header=False)
    uvicorn.Server(config).run(sockets=[socket.socket(fileno=parser.parse_args().fd)])  # family read from the fd


if __name__ == "__main__":
    main()
