"""benchmarks/serve_load.py's LitServe peer: POST /classify (multipart `images` + `k`) → specserve's answer JSON.

    <peers python> benchmarks/peers/litserve_app.py --card card.json --port 8001 --workers 2 --max-batch 32

One API server process (uvicorn) hands requests to `--workers` inference processes (LitServe's design), which
batch up to --max-batch requests (waiting at most --max-wait-ms). Ready: GET /health.
"""
# (no `from __future__ import annotations`: LitServe reads decode_request's annotation as a class)

import sys
from pathlib import Path

import litserve as ls
from fastapi import Request

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Classifier, peer_args  # noqa: E402


class ClassifyAPI(ls.LitAPI):
    def __init__(self, card: Path, **options) -> None:  # type: ignore[no-untyped-def]
        super().__init__(**options)
        self.card = card

    def setup(self, device: str) -> None:
        self.classifier = Classifier(self.card)

    def decode_request(self, request: Request) -> tuple[bytes, int]:
        return request["images"].file.read(), int(request.get("k", 5))

    def predict(self, x):  # type: ignore[no-untyped-def]
        if isinstance(x, list):  # a batch (max_batch_size > 1)
            return self.classifier.classify_many(x)
        return self.classifier.classify(*x)

    def batch(self, inputs):  # type: ignore[no-untyped-def]
        return list(inputs)

    def unbatch(self, output):  # type: ignore[no-untyped-def]
        return list(output)

    def encode_response(self, output):  # type: ignore[no-untyped-def]
        return output


def main() -> None:
    args = peer_args(__doc__.splitlines()[0])
    api = ClassifyAPI(args.card, api_path="/classify", max_batch_size=args.max_batch,
                      batch_timeout=args.max_wait_ms / 1000)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=args.workers, timeout=60)
    server.run(host="127.0.0.1", port=args.port, num_api_servers=1, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
