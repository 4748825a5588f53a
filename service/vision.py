"""Image endpoints' work once the uploads are decoded: scores → top-k labels, scores → mask, overlay and shares."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from models.artifact.card import ImageInput
from service.batching import Batcher
from service.config import Batching
from service.errors import RequestError
from service.images import Decoded, PixelBudget, decode_image, open_image
from service.masks import class_mask, mask_png, overlay, png_base64, shares
from service.schemas import ClassifyResult, ImageLabels, Label, SegmentResult
from service.served import EndpointModels, ServedModel


def decode_for(model: ServedModel, opened: Image.Image, name: str) -> Decoded:
    """An image from `service.images.open_image` decoded to `model`'s input channels and size."""
    spec = model.card.input
    assert isinstance(spec, ImageInput)  # image endpoints only load image models
    return decode_image(opened, name, spec.channels, spec.size)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (B, K) scores, in float64 so tiny probabilities do not round to 0 early."""
    z = logits.astype(np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def labels_of(model: ServedModel, classes: int) -> list[str]:
    """The card's class names, or the class indices as text for a card without them."""
    return model.card.labels or [str(i) for i in range(classes)]


def top_labels(logits: np.ndarray, labels: list[str], k: int) -> list[list[Label]]:
    """Per row of (B, K) scores, the min(k, K) most probable labels, most probable first."""
    probs = softmax(logits)  # (B, K)
    best = np.argsort(-probs, axis=1, kind="stable")[:, :k]  # (B, k)
    return [[Label(label=labels[j], probability=float(p[j])) for j in row] for p, row in zip(probs, best)]


@dataclass(frozen=True)
class ClassifyJob:
    """One classify request: its uploads (files BentoML wrote, or bytes) and how many labels it wants per image.
    Files are read by `classify_jobs`, in the worker thread rather than the event loop."""

    uploads: Sequence[Path | bytes]
    k: int


def classify_jobs(model: ServedModel, jobs: Sequence[ClassifyJob], max_pixels: int,
                  max_request_pixels: int | None = None) -> list[list[ImageLabels] | RequestError]:
    """Answer several requests with one model call over all their images; a request with a bad image gets its
    RequestError without failing the others. `max_request_pixels`: the pixels all images of one request may have."""
    decoded: list[list[Decoded] | RequestError] = []
    for job in jobs:
        budget = PixelBudget(max_request_pixels) if max_request_pixels is not None else None
        names = [f"images[{i}]" for i in range(len(job.uploads))]
        try:
            opened = [open_image(upload if isinstance(upload, bytes) else upload.read_bytes(), name, max_pixels, budget)
                      for name, upload in zip(names, job.uploads)]  # every header checked before any pixel decoded
            decoded.append([decode_for(model, img, name) for name, img in zip(names, opened)])
        except RequestError as e:
            decoded.append(e)
    images = [d for ds in decoded if not isinstance(ds, RequestError) for d in ds]
    if not images:
        return decoded  # type: ignore[return-value]  (all of them are errors)
    logits = model.run(np.stack([d.pixels for d in images]))[0]  # (N, K) for all requests' images
    labels = labels_of(model, logits.shape[1])
    answers: list[list[ImageLabels] | RequestError] = []
    start = 0
    for job, ds in zip(jobs, decoded):
        if isinstance(ds, RequestError):
            answers.append(ds)
            continue
        tops = top_labels(logits[start: start + len(ds)], labels, job.k)
        answers.append([ImageLabels(width=d.size[0], height=d.size[1], converted=d.converted, top=top)
                        for d, top in zip(ds, tops)])
        start += len(ds)
    return answers


def classifiers(models: EndpointModels, batching: Batching | None, max_pixels: int,
                max_request_pixels: int | None = None) -> dict[str, Batcher[ClassifyJob, list[ImageLabels]]]:
    """A batcher per classify model; without a batching config each call carries one request."""
    size, wait = (batching.max_batch_size, batching.max_wait_ms) if batching else (1, 0.0)
    return {name: Batcher(functools.partial(classify_jobs, served, max_pixels=max_pixels,
                                            max_request_pixels=max_request_pixels),
                          lambda job: len(job.uploads), size, wait) for name, served in models.by_name.items()}


async def classify_answer(models: EndpointModels, batchers: dict[str, Batcher[ClassifyJob, list[ImageLabels]]],
                          uploads: Sequence[Path | bytes], k: int, model: str | None) -> ClassifyResult:
    """One classify request's answer, through its model's batcher (the API method and service/lean.py both ask
    here)."""
    served = models.pick(model)
    return ClassifyResult(model=served.tag, results=await batchers[served.name](ClassifyJob(uploads, k)))


def segment(model: ServedModel, image: Decoded, with_overlay: bool) -> SegmentResult:
    logits = model.run(image.pixels[None])[0][0]  # (K, h, w)
    labels = labels_of(model, logits.shape[0])
    mask = class_mask(logits, image.size)  # (H, W) at the upload's size
    return SegmentResult(model=model.tag, width=image.size[0], height=image.size[1], converted=image.converted,
                         labels=labels, shares=shares(mask, labels), mask_png=png_base64(mask_png(mask, len(labels))),
                         overlay_png=png_base64(overlay(image.image, mask, len(labels))) if with_overlay else None)
