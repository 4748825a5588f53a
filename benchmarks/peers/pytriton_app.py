"""benchmarks/serve_load.py's PyTriton peer: Triton Inference Server (HTTP, KServe v2) in front of the same
Python classify function.

    <peers python> benchmarks/peers/pytriton_app.py --card card.json --port 8003 --workers 2 --max-batch 32

Model `classify`: inputs `image` (BYTES [1], the PNG file) and `k` (INT32 [1]); output `result` (BYTES [1], the
answer JSON specserve would give). `--workers` model instances; Triton's dynamic batcher forms batches of up to
--max-batch requests, waiting at most --max-wait-ms. Ready: GET /v2/models/classify/ready.
"""
from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Classifier, peer_args  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    args = peer_args(__doc__.splitlines()[0])
    classifiers = [Classifier(args.card) for _ in range(args.workers)]

    def infer_for(classifier: Classifier):  # type: ignore[no-untyped-def]
        @batch
        def infer(image: np.ndarray, k: np.ndarray) -> dict[str, np.ndarray]:  # (B, 1) bytes, (B, 1) int32
            answers = classifier.classify_many([(bytes(i[0]), int(n[0])) for i, n in zip(image, k)])
            return {"result": np.array([[json.dumps(a).encode()] for a in answers], dtype=object)}

        return infer

    config = TritonConfig(http_address="127.0.0.1", http_port=args.port, grpc_address="127.0.0.1",
                          grpc_port=free_port(), metrics_port=free_port(), log_verbose=0)
    batcher = DynamicBatcher(max_queue_delay_microseconds=int(args.max_wait_ms * 1000))
    with Triton(config=config) as triton:
        triton.bind(model_name="classify", infer_func=[infer_for(c) for c in classifiers],
                    inputs=[Tensor(name="image", dtype=bytes, shape=(1,)), Tensor(name="k", dtype=np.int32, shape=(1,))],
                    outputs=[Tensor(name="result", dtype=bytes, shape=(1,))],
                    config=ModelConfig(max_batch_size=max(1, args.max_batch), batcher=batcher), strict=False)
        triton.serve()


if __name__ == "__main__":
    main()
