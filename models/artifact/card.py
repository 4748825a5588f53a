"""The model card: what a served model is, written once at export and read back by every consumer.

The card travels inside the ONNX file (metadata_props key ``specserve.card``) and beside it in the model
store, so serving reads labels, input size, normalization and vocabulary from the artifact it runs instead
of from configuration that could drift. When a card is read back it is untrusted input: ``ModelCard.from_json``
parses it strictly and ``validate_card`` proves it agrees with the graph (input names, dtypes and shapes,
number of classes, vocabulary size) before anything uses it.
"""
from __future__ import annotations

import importlib.metadata
import json
from datetime import datetime, timezone
from typing import Annotated, Literal, Union

import onnx
from pydantic import (BaseModel, ConfigDict, Field, FiniteFloat, ValidationError, field_validator,
                      model_validator)
from models.artifact.text import PAD, UNK
from models.errors import SpecserveError
from models.task_table import inputs_of, task_kind

CARD_KEY = "specserve.card"  # metadata_props key holding the card JSON
TASK_KEY = "specserve.task"  # flat copies so `onnx` tooling shows them without parsing JSON
SPEC_HASH_KEY = "specserve.spec_hash"

Task = Literal["classification", "segmentation", "sequence", "regression"]


class CardError(SpecserveError, ValueError):
    """A card that cannot be parsed or that disagrees with its ONNX graph; the message says which field."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ImageInput(_Frozen):
    """Images: clients send uint8 pixels; the graph itself scales by 1/255 and normalizes with mean/std."""

    kind: Literal["image"] = "image"
    channels: int = Field(gt=0)
    size: tuple[int, int]  # (H, W)
    mean: list[float]
    std: list[float]

    @model_validator(mode="after")
    def _per_channel(self) -> "ImageInput":
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean and std need {self.channels} values (one per channel), "
                             f"got {len(self.mean)} and {len(self.std)}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std values must be > 0, got {self.std}")
        if min(self.size) <= 0:
            raise ValueError(f"size must be positive, got {list(self.size)}")
        return self


class TextTokenizer(_Frozen):
    """How a text classifier turns a text into ids (models/artifact/text.py): split into words or characters,
    optionally lower-cased, looked up in the vocabulary (<unk> for a token it lacks), cut or padded with <pad> to
    `length` ids — as its training texts were."""

    split: Literal["words", "chars"]
    lowercase: bool
    length: int = Field(gt=0, description="ids per text: longer texts are cut, shorter ones padded")


class TokenInput(_Frozen):
    """Token models: id i in the graph means vocab[i]. A text classifier's card also says how texts become ids
    (`text`); a character model's prompt is its characters."""

    kind: Literal["tokens"] = "tokens"
    vocab: list[str] = Field(min_length=1)
    text: TextTokenizer | None = Field(default=None, exclude_if=lambda v: v is None)  # char cards stay as they were

    @field_validator("vocab")
    @classmethod
    def _unique(cls, vocab: list[str]) -> list[str]:
        if len(set(vocab)) != len(vocab):
            raise ValueError("vocab tokens must be unique")
        return vocab

    @model_validator(mode="after")
    def _special_tokens(self) -> "TokenInput":
        missing = [t for t in (PAD, UNK) if t not in self.vocab]
        if self.text is not None and missing:
            raise ValueError(f"a text tokenizer needs {' and '.join(missing)} in the vocabulary")
        return self


class StandardScaling(_Frozen):
    """model units = (raw − mean) / std."""

    kind: Literal["standard"] = "standard"
    mean: FiniteFloat
    std: FiniteFloat = Field(gt=0)


class MinMaxScaling(_Frozen):
    """model units = (raw − min) / (max − min): [min, max] → [0, 1]."""

    kind: Literal["minmax"] = "minmax"
    min: FiniteFloat
    max: FiniteFloat

    @model_validator(mode="after")
    def _ordered(self) -> "MinMaxScaling":
        if not self.max > self.min:
            raise ValueError(f"max must be > min, got min {self.min} and max {self.max}")
        return self


class NoScaling(_Frozen):
    """The graph takes raw values."""

    kind: Literal["none"] = "none"


# The kind is written out, never inferred from which numbers are present: `model_dump()` is exactly the dict
# models.artifact.scaling.scale/unscale take, so serving scales with the code and numbers training used.
Scaling = Annotated[Union[StandardScaling, MinMaxScaling, NoScaling], Field(discriminator="kind")]


class SeriesInput(_Frozen):
    """Forecasters: a window of past values, scaled as in training (`scaling`)."""

    kind: Literal["series"] = "series"
    window: int = Field(gt=0)
    scaling: Scaling


class FeatureInput(_Frozen):
    """Regression over a fixed-length feature vector."""

    kind: Literal["features"] = "features"
    count: int = Field(gt=0)


InputSpec = Annotated[Union[ImageInput, TokenInput, SeriesInput, FeatureInput], Field(discriminator="kind")]



class TensorIO(_Frozen):
    """Graph tensor names, in graph order. State tensors follow the data input / first output."""

    inputs: list[str] = Field(min_length=1)
    outputs: list[str] = Field(min_length=1)
    state_in: list[str] = Field(default_factory=list)
    state_out: list[str] = Field(default_factory=list)
    pixel_input: bool = False  # images only: True = uint8 NHWC `pixels`, False = normalized float NCHW

    @model_validator(mode="after")
    def _paired_state(self) -> "TensorIO":
        if len(self.state_in) != len(self.state_out):
            raise ValueError(f"{len(self.state_in)} state inputs but {len(self.state_out)} state outputs")
        return self

    @property
    def graph_inputs(self) -> list[str]:
        return [*self.inputs, *self.state_in]

    @property
    def graph_outputs(self) -> list[str]:
        return [*self.outputs, *self.state_out]


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


class Versions(_Frozen):
    torch: str
    onnx: str
    onnxruntime: str
    specserve: str

    @classmethod
    def current(cls) -> "Versions":
        """Versions of this process; onnxruntime may be the -gpu wheel, so ask both distributions."""
        ort = _version("onnxruntime")
        ort = ort if ort != "not installed" else _version("onnxruntime-gpu")
        return cls(torch=_version("torch"), onnx=_version("onnx"), onnxruntime=ort, specserve=_version("specserve"))


class ModelCard(_Frozen):
    """Everything a consumer needs to feed the model and read its answers. `io`, `opset`, `exporter`,
    `exported_at` are filled by the exporter (`with_export`)."""

    name: str = Field(min_length=1)
    spec_hash: str = Field(min_length=1)
    task: Task
    input: InputSpec
    labels: list[str] | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    versions: Versions = Field(default_factory=Versions.current)
    io: TensorIO | None = None
    opset: int | None = None
    exporter: str | None = None
    exported_at: datetime | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "ModelCard":
        if task_kind(self.task, self.input.kind) is None:  # the one table of pairs: models/task_table.py
            raise ValueError(f"task {self.task} takes {' or '.join(inputs_of(self.task))} input, got {self.input.kind}")
        if self.labels is not None:
            if self.task not in ("classification", "segmentation"):
                raise ValueError(f"labels only apply to classification/segmentation, not {self.task}")
            if len(self.labels) == 0 or len(set(self.labels)) != len(self.labels):
                raise ValueError("labels must be a non-empty list of unique names")
        if isinstance(self.input, TokenInput) and (self.input.text is not None) != (self.task == "classification"):
            raise ValueError("a text classifier's card says how texts become ids (input.text); only a text "
                             "classifier's does")
        return self

    def with_export(self, io: TensorIO, *, opset: int, exporter: str) -> "ModelCard":
        """The card as written into an exported graph: names, opset, exporter, time and library versions."""
        return self.model_copy(update=dict(io=io, opset=opset, exporter=exporter,
                                           exported_at=datetime.now(timezone.utc), versions=Versions.current()))

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str | bytes) -> "ModelCard":
        """Strict parse of untrusted card JSON; any problem is one CardError line naming the field."""
        try:
            json.loads(text)
        except json.JSONDecodeError as e:
            raise CardError(f"card is not valid JSON ({e})") from None
        try:
            return cls.model_validate_json(text)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            msg = first["msg"].removeprefix("Value error, ")
            more = f" (+{e.error_count() - 1} more)" if e.error_count() > 1 else ""
            raise CardError(f"card field {where}: {msg}{more}" if where else f"card: {msg}{more}") from None


# ----------------------------------------------------------------------------------------------------------
# Card ⇄ graph consistency
# ----------------------------------------------------------------------------------------------------------

Dim = Union[int, str, None]  # static size, symbolic name, or unknown

_FLOAT, _UINT8, _INT64 = onnx.TensorProto.FLOAT, onnx.TensorProto.UINT8, onnx.TensorProto.INT64


def _signature(values: list[onnx.ValueInfoProto]) -> dict[str, tuple[int, list[Dim]]]:
    """name -> (elem_type, dims) with symbolic dims as their names."""
    sig = {}
    for v in values:
        t = v.type.tensor_type
        dims: list[Dim] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
        sig[v.name] = (t.elem_type, dims)
    return sig


def _expect(what: str, got: tuple[int, list[Dim]], dtype: int, dims: list[Dim]) -> None:
    """dims: int = that static size, "batch"/"steps" = must be symbolic (dynamic), None = any."""
    gtype, gdims = got
    name = onnx.TensorProto.DataType.Name
    if gtype != dtype:
        raise CardError(f"{what}: dtype {name(gtype)} in the graph, card implies {name(dtype)}")
    if len(gdims) != len(dims):
        raise CardError(f"{what}: rank {len(gdims)} in the graph {gdims}, card implies rank {len(dims)} {dims}")
    for axis, (g, want) in enumerate(zip(gdims, dims)):
        if isinstance(want, str) and not isinstance(g, str):
            raise CardError(f"{what}: axis {axis} ({want}) must be dynamic, the graph has {g} ({gdims})")
        if isinstance(want, int) and g != want:
            raise CardError(f"{what}: axis {axis} is {g} in the graph {gdims}, card says {want}")


def _input_dims(card: ModelCard, io: TensorIO) -> tuple[int, list[Dim]]:
    spec = card.input
    if isinstance(spec, ImageInput):
        (h, w), c = spec.size, spec.channels
        return (_UINT8, ["batch", h, w, c]) if io.pixel_input else (_FLOAT, ["batch", c, h, w])
    if isinstance(spec, TokenInput):
        return _INT64, ["batch", "steps"]
    if isinstance(spec, SeriesInput):
        return _FLOAT, ["batch", spec.window]
    return _FLOAT, ["batch", spec.count]


def _output_dims(card: ModelCard) -> list[Dim]:
    classes: Dim = len(card.labels) if card.labels is not None else None
    if card.task == "classification":
        return ["batch", classes]
    if card.task == "segmentation":
        h, w = card.input.size  # type: ignore[union-attr]  (segmentation input is always an image)
        return ["batch", classes, h, w]
    if isinstance(card.input, TokenInput):
        return ["batch", "steps", len(card.input.vocab)]
    return ["batch", 1]


def read_card(model: onnx.ModelProto) -> ModelCard:
    """The card stored in a graph's metadata_props, strictly parsed (not yet checked against the graph)."""
    props = {p.key: p.value for p in model.metadata_props}
    if CARD_KEY not in props:
        raise CardError(f"graph has no '{CARD_KEY}' metadata (not exported by specserve?)")
    return ModelCard.from_json(props[CARD_KEY])


def validate_card(card: ModelCard, model: onnx.ModelProto) -> None:
    """Raise CardError unless the card describes this graph exactly.

    Checks graph input/output names and order, dtypes, which axes are dynamic (batch, and steps for token
    models; everything else static), the image/window/feature sizes, that the number of labels equals the
    number of output classes and that a character model's vocabulary size equals the logits size, that state
    inputs and outputs agree, and that the flat metadata keys agree with the card.
    """
    if card.io is None:
        raise CardError("card has no io section (it was never exported)")
    io = card.io
    props = {p.key: p.value for p in model.metadata_props}
    for key, value in ((TASK_KEY, card.task), (SPEC_HASH_KEY, card.spec_hash)):
        if key in props and props[key] != value:
            raise CardError(f"metadata {key}={props[key]!r} but the card says {value!r}")
    if io.pixel_input and not isinstance(card.input, ImageInput):
        raise CardError(f"io.pixel_input is set but the input kind is {card.input.kind}")

    ins, outs = _signature(list(model.graph.input)), _signature(list(model.graph.output))
    # Initializers may be listed as graph inputs by old exporters; only real inputs count.
    inits = {i.name for i in model.graph.initializer}
    in_names = [n for n in ins if n not in inits]
    if in_names != io.graph_inputs:
        raise CardError(f"graph inputs {in_names} but the card lists {io.graph_inputs}")
    if list(outs) != io.graph_outputs:
        raise CardError(f"graph outputs {list(outs)} but the card lists {io.graph_outputs}")

    data = io.inputs[0]
    _expect(f"input '{data}'", ins[data], *_input_dims(card, io))
    head = io.outputs[0]
    head_dims = outs[head][1]
    if card.labels is not None and len(head_dims) >= 2 and head_dims[1] != len(card.labels):
        raise CardError(f"card has {len(card.labels)} labels but output '{head}' {head_dims} has "
                        f"{head_dims[1]} classes")
    next_token = card.task == "sequence" and isinstance(card.input, TokenInput)  # a text classifier scores classes
    if next_token and head_dims and head_dims[-1] != len(card.input.vocab):
        raise CardError(f"card vocab has {len(card.input.vocab)} tokens but output '{head}' {head_dims} "
                        f"scores {head_dims[-1]}")
    _expect(f"output '{head}'", outs[head], _FLOAT, _output_dims(card))
    for s_in, s_out in zip(io.state_in, io.state_out):
        _expect(f"state input '{s_in}'", ins[s_in], _FLOAT, ["batch", None, None])
        if outs[s_out] != ins[s_in]:
            raise CardError(f"state output '{s_out}' {outs[s_out][1]} differs from state input '{s_in}' "
                            f"{ins[s_in][1]}")
