"""What every peer server of benchmarks/serve_load.py runs: the classify endpoint's work, without specserve.

The peers (LitServe, Ray Serve, PyTriton) run in their own virtual environment (their dependencies clash with
BentoML's), so this module imports only numpy, Pillow and onnxruntime, and repeats in a few lines exactly what
specserve does per image (service/images.py: decode, convert to the model's channels, bilinear resize; the graph
takes uint8 NHWC pixels and normalizes by itself; service/vision.py: float64 softmax, stable top-k) with the same
onnxruntime session settings (models/artifact/runtime.py: every graph optimization, bounded intra-op threads, no
spinning). benchmarks/serve_load.py writes the model's card facts to a JSON file (`--card`):

    {"onnx": "/path/model.onnx", "tag": "name:version", "channels": 1, "size": [H, W], "labels": [...],
     "intra_op_threads": 1, "max_image_pixels": 40000000}
"""
from __future__ import annotations

import argparse
import io
import json
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnxruntime as ort
from PIL import Image

FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")


def peer_args(description: str, extra: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """The peers' common options; `extra` adds a peer's own."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--card", type=Path, required=True, help="JSON written by serve_load.py (see module docstring)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--workers", type=int, default=1, help="server processes / replicas / model instances")
    p.add_argument("--max-batch", type=int, default=1, help="1 = no batching")
    p.add_argument("--max-wait-ms", type=float, default=0.0)
    if extra is not None:
        extra(p)
    return p.parse_args()


def onnx_session(card: dict[str, Any]) -> ort.InferenceSession:
    """The card's graph in onnxruntime with specserve's session settings (models/artifact/runtime.py)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.intra_op_num_threads, so.inter_op_num_threads = card["intra_op_threads"], 1
    return ort.InferenceSession(card["onnx"], so, providers=["CPUExecutionProvider"])


class Classifier:
    """decode → session → softmax top-k, as specserve's classify does it."""

    def __init__(self, card_path: Path):
        card = json.loads(Path(card_path).read_text())
        self.tag, self.labels = card["tag"], card["labels"]
        self.channels, (self.height, self.width) = card["channels"], card["size"]
        self.max_pixels = card["max_image_pixels"]
        self.session = onnx_session(card)
        self.input = self.session.get_inputs()[0].name
        self.classify_many([(self.example_png(), 1)])  # warm-up: first-call allocations

    def example_png(self) -> bytes:
        buffer = io.BytesIO()
        Image.new("L", (self.width, self.height)).save(buffer, format="PNG")
        return buffer.getvalue()

    def decode(self, data: bytes) -> tuple[np.ndarray, tuple[int, int], str | None]:
        """(uint8 (H, W, C) pixels at the model's size, the upload's (W, H), the conversion made)."""
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=FORMATS)
        if img.size[0] * img.size[1] > self.max_pixels:
            raise ValueError(f"{img.size[0]}×{img.size[1]} pixels, the limit is {self.max_pixels:,}")
        img.load()
        size, target = img.size, {1: "L", 3: "RGB"}[self.channels]
        converted = None if img.mode == target else f"{img.mode}→{target}"
        img = img if img.mode == target else img.convert(target)
        if img.size != (self.width, self.height):
            img = img.resize((self.width, self.height), Image.Resampling.BILINEAR)
        return np.asarray(img, dtype=np.uint8).reshape(self.height, self.width, self.channels), size, converted

    def classify_many(self, requests: Sequence[tuple[bytes, int]]) -> list[dict[str, Any]]:
        """One answer (specserve's ClassifyResult as a dict) per (PNG bytes, k), with one model call for all."""
        decoded = [self.decode(data) for data, _ in requests]
        logits = self.session.run(None, {self.input: np.stack([d[0] for d in decoded])})[0].astype(np.float64)
        z = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = z / z.sum(axis=1, keepdims=True)
        answers = []
        for (_, k), (_, size, converted), p in zip(requests, decoded, probs):
            best = np.argsort(-p, kind="stable")[:k]
            answers.append({"model": self.tag, "results": [{
                "width": size[0], "height": size[1], "converted": converted,
                "top": [{"label": self.labels[j], "probability": float(p[j])} for j in best]}]})
        return answers

    def classify(self, data: bytes, k: int) -> dict[str, Any]:
        return self.classify_many([(data, k)])[0]
