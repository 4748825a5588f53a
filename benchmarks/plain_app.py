"""The baseline of benchmarks/serve_load.py: the classify endpoint's exact work in a bare Starlette app.

Same decode (service.vision.decode_for), same onnxruntime session set-up (service.served.load_model with the
serving config's intra-op threads), same answer (service.schemas.ClassifyResult as JSON), same cap on requests
computed at once (the config's `threads`) — only the framework differs. Like each BentoML worker, a process serves a
listening socket it inherits, so N processes share one port:

    SPECSERVE_CONFIG=serving.yaml python -m benchmarks.plain_app --fd 3    # fd 3: a bound, listening TCP socket

(not `uvicorn --workers N` or `uvicorn --fd`: those take the socket for a Unix one, so replies go out without
TCP_NODELAY and every request waits ~40 ms for a delayed ACK.)
"""
from __future__ import annotations

import argparse
import socket

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service import vision
from service.config import load_config
from service.errors import RequestError
from service.schemas import ClassifyResult
from service.served import load_endpoint

CONFIG = load_config()
MODELS = load_endpoint("classify", CONFIG.endpoints.get("classify"), CONFIG.ort_threads())
_limiter: anyio.CapacityLimiter | None = None


def limiter() -> anyio.CapacityLimiter:
    """The cap on requests computed at once, made inside the running event loop (as BentoML makes its own)."""
    global _limiter
    _limiter = _limiter or anyio.CapacityLimiter(CONFIG.threads)
    return _limiter


def work(uploads: list[bytes], k: int, model: str | None) -> bytes:
    served = MODELS.pick(model)
    (results,) = vision.classify_jobs(served, [vision.ClassifyJob(uploads, k)], CONFIG.limits.max_image_pixels,
                                      CONFIG.limits.max_request_pixels)
    if isinstance(results, RequestError):
        raise results
    return ClassifyResult(model=served.tag, results=results).model_dump_json().encode()


async def classify(request: Request) -> Response:
    form = await request.form()
    uploads = [await f.read() for f in form.getlist("images") if isinstance(f, UploadFile)]
    k, model = int(str(form.get("k", 5))), form.get("model")
    try:
        body = await anyio.to_thread.run_sync(work, uploads, k, model if isinstance(model, str) else None,
                                              limiter=limiter())
    except RequestError as e:
        return e.response()
    return Response(body, media_type="application/json")


async def readyz(request: Request) -> Response:
    return JSONResponse({"ready": True})


app = Starlette(routes=[Route("/classify", classify, methods=["POST"]), Route("/readyz", readyz)])


def main() -> None:
    parser = argparse.ArgumentParser(description="serve the plain classify app on an inherited listening socket")
    parser.add_argument("--fd", type=int, required=True)
    config = uvicorn.Config(app, log_config=None, access_log=False, server_header=False)
    uvicorn.Server(config).run(sockets=[socket.socket(fileno=parser.parse_args().fd)])  # family read from the fd


if __name__ == "__main__":
    main()
