"""benchmarks/serve_load.py's Ray Serve peer: POST /classify (multipart `images` + `k`) → specserve's answer JSON.

    <peers python> benchmarks/peers/rayserve_app.py --card card.json --port 8002 --workers 2 --max-batch 32

A local Ray cluster (no dashboard) with `--workers` replicas of one deployment behind Ray Serve's HTTP proxy;
requests are batched with @serve.batch when --max-batch > 1. Ready: GET /classify answers 200 once the replicas
are up.
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import ray
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Classifier, peer_args  # noqa: E402

ARGS = peer_args(__doc__.splitlines()[0])


@serve.deployment(num_replicas=ARGS.workers, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256)
class Classify:
    def __init__(self, card: str) -> None:
        self.classifier = Classifier(Path(card))

    @serve.batch(max_batch_size=max(1, ARGS.max_batch), batch_wait_timeout_s=ARGS.max_wait_ms / 1000)
    async def batched(self, items: list[tuple[bytes, int]]) -> list[dict]:
        return self.classifier.classify_many(items)

    async def __call__(self, request: Request):  # type: ignore[no-untyped-def]
        if request.method == "GET":
            return PlainTextResponse("ready")
        form = await request.form()
        item = (await form["images"].read(), int(form.get("k", 5)))
        if ARGS.max_batch > 1:
            return JSONResponse(await self.batched(item))
        return JSONResponse(self.classifier.classify(*item))


def main() -> None:
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level="warning")
    serve.start(http_options={"host": "127.0.0.1", "port": ARGS.port})
    serve.run(Classify.bind(str(ARGS.card)), route_prefix="/classify")
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
