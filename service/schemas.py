"""Typed answers of the API; BentoML publishes them in /docs.json, so they are the contract clients read."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


MAX_K = 1000  # the most labels classify and classify_text list per input (their `k`)


class Label(BaseModel):
    label: str
    probability: float = Field(description="softmax of the model's scores")


class ImageLabels(BaseModel):
    width: int = Field(description="of the upload, before resizing to the model's input size")
    height: int
    converted: str | None = Field(description='channel conversion made to fit the model, e.g. "RGB→L"; null if none')
    top: list[Label] = Field(description="the k most probable labels, most probable first")


class ClassifyResult(BaseModel):
    model: str = Field(description="tag (name:version) of the model that answered")
    results: list[ImageLabels] = Field(description="one per uploaded image, in upload order")


class TextLabels(BaseModel):
    tokens: int = Field(description="tokens (words or characters, as the model was trained) the text split into")
    truncated: bool = Field(description="true when the text had more tokens than the model reads (only the first "
                                        "are read)")
    unknown: int = Field(description="tokens the model's vocabulary lacks (read as <unk>)")
    top: list[Label] = Field(description="the k most probable labels, most probable first")


class ClassifyTextResult(BaseModel):
    model: str = Field(description="tag (name:version) of the model that answered")
    results: list[TextLabels] = Field(description="one per text, in request order")


class SegmentResult(BaseModel):
    model: str
    width: int = Field(description="of the upload; the mask has this size")
    height: int
    converted: str | None
    labels: list[str] = Field(description="class names; class i is mask value i")
    shares: dict[str, float] = Field(description="fraction of the pixels of each class (every label listed)")
    mask_png: str = Field(description="base64 PNG, mode P: pixel value = class index, palette = class colours")
    overlay_png: str | None = Field(description="base64 RGB PNG of the upload tinted by class (with overlay=true)")


class ForecastResult(BaseModel):
    model: str
    window: int = Field(description="how many of the last values the model looks at")
    forecast: list[float] = Field(description="the next k values, each predicted from the previous predictions")


class PredictResult(BaseModel):
    model: str
    outputs: list[list[float]] = Field(description="one row of the model's outputs per feature vector, in order")


class GenerateResult(BaseModel):
    model: str
    prefix: str
    text: str = Field(description="the continuation only (not including the prefix)")
    seed: int = Field(description="the seed used: send it back to get the same text")


class ModelInfo(BaseModel):
    name: str
    tag: str
    version: str
    task: str
    input: dict[str, Any] = Field(description="the card's input: image size/channels/normalization, vocab, window")
    labels: list[str] | None
    vocab_size: int | None
    metrics: dict[str, float]
    graph: str = Field(description="fp32 or int8")
    exported_at: str | None
    providers: list[str] = Field(description="onnxruntime execution providers in use")
    parity: dict[str, Any] = Field(description="the stored parity proof of the served ONNX graph vs PyTorch")


class EndpointInfo(BaseModel):
    default: str | None
    models: list[ModelInfo]


class ModelsResult(BaseModel):
    endpoints: dict[str, EndpointInfo]
