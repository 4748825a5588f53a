"""benchmarks/serve_load.py's PyTriton peer: Triton Inference Server (HTTP, KServe v2) in front of the same
Python classify function.

    <peers python> benchmarks/peers/pytriton_app.py --card card.json --port 8003 --workers 2 --max-batch 32

Model `classify`: inputs `image` (BYTES [1], the PNG file) and `k` (INT32 [1]); output `result` (BYTES [1], the
answer JSON specserve would give). `--workers` model instances; Triton's dynamic batcher forms batches of up to
--max-batch requests, waiting at most --max-wait-ms. Ready: GET /v2/models/classify/ready.

`--mode pixels` (benchmarks/perf_analyzer.py) serves instead the card's ONNX graph itself, as specserve's /v2 does:
model NAME (the card tag's name, e.g. `digits-cnn`), the graph's input (`pixels`, UINT8 (B, H, W, C)) and output
(`logits`, FP32 (B, K)), one session.run per call with the same session settings; --max-batch is the model's
max_batch_size (the largest batch one request may carry), and requests are merged by Triton's dynamic batcher only
with --dynamic-batching (waiting at most --max-wait-ms). Ready: GET /v2/models/NAME/ready.
"""
from __future__ import annotations

import argparse
import json
import socket
import sys
from pathlib import Path

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Classifier, onnx_session, peer_args  # noqa: E402

NUMPY_OF_ORT = {"tensor(uint8)": np.uint8, "tensor(float)": np.float32, "tensor(int64)": np.int64}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pixels_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", choices=["classify", "pixels"], default="classify")
    p.add_argument("--dynamic-batching", action="store_true", help="pixels mode: merge requests (classify always does)")


def serve_pixels(args: argparse.Namespace) -> None:
    """The card's graph as a Triton model: its own input and output tensors, no decode, no softmax."""
    card = json.loads(Path(args.card).read_text())
    sessions = [onnx_session(card) for _ in range(args.workers)]
    graph_in, graph_out = sessions[0].get_inputs()[0], sessions[0].get_outputs()[0]
    dims = lambda arg: tuple(d if isinstance(d, int) else -1 for d in arg.shape[1:])  # noqa: E731  (no batch axis)
    for session in sessions:  # warm-up: first-call allocations
        session.run(None, {graph_in.name: np.zeros((1, *(max(1, d) for d in dims(graph_in))),
                                                    NUMPY_OF_ORT[graph_in.type])})

    def infer_for(session):  # type: ignore[no-untyped-def]
        @batch
        def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
            return {graph_out.name: session.run([graph_out.name], {graph_in.name: inputs[graph_in.name]})[0]}

        return infer

    tensor = lambda arg: Tensor(name=arg.name, dtype=NUMPY_OF_ORT[arg.type], shape=dims(arg))  # noqa: E731
    batcher = DynamicBatcher(max_queue_delay_microseconds=int(args.max_wait_ms * 1000)) if args.dynamic_batching \
        else None
    with Triton(config=triton_config(args.port), **open_statistics()) as triton:
        triton.bind(model_name=card["tag"].split(":", 1)[0], infer_func=[infer_for(s) for s in sessions],
                    inputs=[tensor(graph_in)], outputs=[tensor(graph_out)], strict=False,
                    config=ModelConfig(max_batch_size=max(1, args.max_batch), batcher=batcher))
        triton.serve()


def open_statistics() -> dict:
    """Triton's options with its statistics API open: perf_analyzer reads it around each measurement window (the
    server-side queue and compute times it reports), and PyTriton 0.7 restricts it to an access token by default."""
    try:
        from pytriton.triton import DEFAULT_PROTECTED_ENDPOINTS, TritonSecurityConfig
    except ImportError:  # PyTriton before 0.7 restricts nothing
        return {}
    return {"security_config": TritonSecurityConfig(
        restricted_endpoints=[e for e in DEFAULT_PROTECTED_ENDPOINTS if e != "statistics"])}


def triton_config(port: int) -> TritonConfig:
    return TritonConfig(http_address="127.0.0.1", http_port=port, grpc_address="127.0.0.1", grpc_port=free_port(),
                        metrics_port=free_port(), log_verbose=0)


def main() -> None:
    args = peer_args(__doc__.splitlines()[0], pixels_options)
    if args.mode == "pixels":
        return serve_pixels(args)
    classifiers = [Classifier(args.card) for _ in range(args.workers)]

    def infer_for(classifier: Classifier):  # type: ignore[no-untyped-def]
        @batch
        def infer(image: np.ndarray, k: np.ndarray) -> dict[str, np.ndarray]:  # (B, 1) bytes, (B, 1) int32
            answers = classifier.classify_many([(bytes(i[0]), int(n[0])) for i, n in zip(image, k)])
            return {"result": np.array([[json.dumps(a).encode()] for a in answers], dtype=object)}

        return infer

    batcher = DynamicBatcher(max_queue_delay_microseconds=int(args.max_wait_ms * 1000))
    with Triton(config=triton_config(args.port)) as triton:
        triton.bind(model_name="classify", infer_func=[infer_for(c) for c in classifiers],
                    inputs=[Tensor(name="image", dtype=bytes, shape=(1,)), Tensor(name="k", dtype=np.int32, shape=(1,))],
                    outputs=[Tensor(name="result", dtype=bytes, shape=(1,))],
                    config=ModelConfig(max_batch_size=max(1, args.max_batch), batcher=batcher), strict=False)
        triton.serve()


if __name__ == "__main__":
    main()
