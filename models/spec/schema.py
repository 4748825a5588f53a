"""The typed spec: pydantic models of every section.

A Spec is made by models.spec.load (the one door), which validates these models, parses the network against the
layer registry and checks the data section, then binds what it found (source text, parsed network) to the Spec as
read-only properties. Shapes are checked by the builder (models.build.infer), which `specserve validate` also runs.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, create_model, field_validator,
                      model_validator)

from models.errors import Location, SpecserveError
from models.spec.located_yaml import LocatedYaml
from models.task_table import task_kind, refusal

Task = Literal["classification", "segmentation", "sequence", "regression"]  # = models.task_table.TASKS (a test)


class NotLoaded(SpecserveError):
    """A Spec was asked for what only the loader knows (its source text, its parsed network)."""


@dataclass(frozen=True)
class Loaded:
    """What loading found beside the validated fields: where the text came from and the parsed network."""

    source: LocatedYaml
    file: Path | None
    backbone_spec: "Spec | None"
    nodes: tuple  # models.spec.network.Node, top level
    backbone_nodes: tuple


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _one_key(value: Any, what: str) -> Any:
    """Accept `adam` as shorthand for `{adam: {}}` (optimizers, schedules)."""
    if isinstance(value, str):
        return {value: {}}
    if isinstance(value, dict) and len(value) != 1:
        raise ValueError(f"{what} is one of its kinds as a one-key mapping, e.g. {{sgd: {{lr: 0.1}}}}; got keys {sorted(value)}")
    return value


class InputSpec(Section):
    """What one sample looks like. Exactly one family: image (channels+size), tokens (vocab), series (window), features."""

    channels: int | None = Field(default=None, ge=1, le=64)
    size: tuple[int, int] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    vocab: int | None = Field(default=None, ge=2, le=1_000_000, description="token vocabulary size")
    steps: int | None = Field(default=None, ge=1, le=100_000, description="training sequence length for tokens")
    window: int | None = Field(default=None, ge=1, le=100_000, description="past values fed to a forecaster")
    features: int | None = Field(default=None, ge=1, le=10_000_000)

    @field_validator("size")
    @classmethod
    def _size(cls, v):
        if v is not None and not all(1 <= s <= 8192 for s in v):
            raise ValueError(f"size must be two values between 1 and 8192, got {list(v)}")
        return v

    @field_validator("std")
    @classmethod
    def _std(cls, v):
        if v is not None and any(s <= 0 for s in v):
            raise ValueError(f"std values must be > 0, got {v}")
        return v

    @model_validator(mode="after")
    def _one_family(self):
        families = {
            "image": self.channels is not None or self.size is not None,
            "tokens": self.vocab is not None,
            "series": self.window is not None,
            "features": self.features is not None,
        }
        chosen = [k for k, v in families.items() if v]
        if len(chosen) != 1:
            raise ValueError("input describes one kind of sample: images (channels, size), tokens (vocab), "
                             f"a series window (window) or features (features); got {chosen or 'none'}")
        if chosen == ["image"]:
            if self.channels is None or self.size is None:
                raise ValueError("image input needs both channels and size")
            for field in ("mean", "std"):
                values = getattr(self, field)
                if values is not None and len(values) != self.channels:
                    raise ValueError(f"{field} has {len(values)} values but there are {self.channels} channels")
        elif self.mean is not None or self.std is not None:
            raise ValueError("mean and std apply to image input only")
        if self.steps is not None and chosen != ["tokens"]:
            raise ValueError("steps applies to token input only")
        return self

    @property
    def kind(self) -> str:
        if self.channels is not None:
            return "image"
        if self.vocab is not None:
            return "tokens"
        return "series" if self.window is not None else "features"

    def sample_shape(self) -> tuple[int, ...]:
        """Per-sample shape the network receives: (C, H, W), (steps,), (window,) or (features,)."""
        if self.kind == "image":
            return (self.channels, *self.size)
        if self.kind == "tokens":
            return (self.steps or 35,)
        return (self.window,) if self.kind == "series" else (self.features,)


RESERVED_PARAMS = ("in_channels", "in_features", "in_height", "in_width", "in_shape",  # the input's shape
                   "name", "as", "from")  # keys every use may carry


class BlockDef(Section):
    """A parameterized block: `$param`, `"$param[i]"` and expressions (`"$c * 6"`) in its layers take the values
    given at each use; `defaults` are parameters a use may leave out, computed from the others and the shape of
    the block's input (`{squeeze: "max(1, $in_channels // 4)"}`)."""

    params: list[str] = Field(default_factory=list, description="parameters every use gives")
    defaults: dict[str, Any] | None = Field(default=None, description="parameters with a default value or expression")
    layers: list[Any] = Field(min_length=1)

    @field_validator("params")
    @classmethod
    def _params(cls, v):
        for p in v:
            if not p.isidentifier():
                raise ValueError(f"parameter name '{p}' must be an identifier")
            if p in RESERVED_PARAMS:
                raise ValueError(f"parameter name '{p}' is reserved ({', '.join(RESERVED_PARAMS)})")
        if len(set(v)) != len(v):
            raise ValueError(f"parameter names repeat: {v}")
        return v

    @field_validator("defaults")
    @classmethod
    def _defaults(cls, v, info: ValidationInfo):
        for p in v or {}:
            if not p.isidentifier():
                raise ValueError(f"parameter name '{p}' must be an identifier")
            if p in RESERVED_PARAMS:
                raise ValueError(f"parameter name '{p}' is reserved ({', '.join(RESERVED_PARAMS)})")
            if p in (info.data.get("params") or []):
                raise ValueError(f"'{p}' is both in params and in defaults; list it once")
        return v


class BackboneSpec(Section):
    """Reuse another spec's network up to (and including) its layer named `until`."""

    spec: str = Field(description="path of the other spec, relative to this file")
    until: str = Field(description="name of the last layer of that spec's network to keep")
    weights: str | None = Field(default=None, description="a run directory of that spec, or a weights file (safetensors, or a torch state_dict such as torchvision's: mapped by order and shape)")
    freeze: bool = False
    lr_scale: float = Field(default=1.0, ge=0, le=1, description="learning-rate multiplier for backbone parameters")


def _aux_item(value: Any) -> Any:
    """An auxiliary output is written like an entry's wiring: {from: NAME, weight: W}."""
    if not isinstance(value, dict):
        raise ValueError(f"an auxiliary output is {{from: NAME, weight: W}}, like {{from: aux_logits, weight: 0.3}}; "
                         f"got {value!r:.40}")
    return value


def _aux_weight(value: Any) -> Any:
    # a bool is an int to Python and pydantic would read `weight: true` as 1.0: refuse it, and junk, here
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"weight is a number > 0, the factor of this output's loss in the training loss (e.g. 0.3); "
                         f"got {value!r:.40}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"weight must be a finite number > 0 (the factor of this output's loss), got {value!r}")
    return value


# `from` is a Python keyword: the model is made with create_model so the YAML key, the field, its did-you-mean and
# the dumped spec all say `from`, as an entry's wiring does
AuxOutput = create_model(
    "AuxOutput", __base__=Section, __doc__="An auxiliary output: a named entry trained with the task's loss × weight.",
    __validators__={"_item": model_validator(mode="before")(classmethod(lambda cls, v: _aux_item(v))),
                    "_weight": field_validator("weight", mode="before")(classmethod(lambda cls, v: _aux_weight(v)))},
    **{"from": (str, Field(min_length=1, description="the name (as:) of the entry whose output this is")),
       "weight": (float, Field(description="factor of this output's task loss in the training loss"))})


class OutputsSpec(Section):
    """The network's outputs: `main` is exported and served; each of `aux` is trained only (GoogLeNet's and PSPNet's
    auxiliary heads): training loss = main loss + Σ weight × the task's loss on that output, same targets."""

    main: str | None = Field(default=None, min_length=1, description="the entry (its as: name) whose output is exported "
                                                                     "and served; default: the last entry")
    aux: list[AuxOutput] = Field(default_factory=list, description="auxiliary outputs, [{from: name, weight: 0.3}]")  # type: ignore[valid-type]

    @field_validator("aux", mode="before")
    @classmethod
    def _aux_list(cls, v):
        if not isinstance(v, list):
            raise ValueError(f"aux is a list of auxiliary outputs, like aux: [{{from: aux_logits, weight: 0.3}}]; "
                             f"got {v!r:.40}")
        return v


class SGDArgs(Section):
    lr: float = Field(default=0.1, gt=0, le=100)
    momentum: float = Field(default=0.0, ge=0, lt=1)
    nesterov: bool = False


class AdamArgs(Section):
    lr: float = Field(default=1e-3, gt=0, le=100)
    betas: tuple[float, float] = (0.9, 0.999)


class OptimizerSpec(Section):
    sgd: SGDArgs | None = None
    adam: AdamArgs | None = None
    adamw: AdamArgs | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v):
        return _one_key(v, "optimizer")

    @property
    def kind(self) -> str:
        return next(k for k in ("sgd", "adam", "adamw") if getattr(self, k) is not None)

    @property
    def args(self) -> SGDArgs | AdamArgs:
        return getattr(self, self.kind)


class StepSchedule(Section):
    every: int = Field(ge=1, description="epochs between decays")
    gamma: float = Field(default=0.1, gt=0, le=1)


class CosineSchedule(Section):
    min_lr: float = Field(default=0.0, ge=0)


class ScheduleSpec(Section):
    step: StepSchedule | None = None
    cosine: CosineSchedule | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v):
        return _one_key(v, "schedule")

    @property
    def kind(self) -> str:
        return "step" if self.step is not None else "cosine"


class EarlyStopping(Section):
    patience: int = Field(default=3, ge=1)
    min_delta: float = Field(default=0.0, ge=0)


class InitFrom(Section):
    """Start from another run's weights: every parameter whose name and shape match is loaded."""

    weights: str = Field(description="a run directory, or a weights file (safetensors or torch state_dict; a foreign layout is mapped by order and shape)")
    freeze: bool = Field(default=False, description="loaded parameters do not train")
    lr_scale: float = Field(default=1.0, ge=0, le=1, description="learning-rate multiplier for loaded parameters")


class TrainSpec(Section):
    epochs: int = Field(default=10, ge=1, le=100_000)
    optimizer: OptimizerSpec = Field(default_factory=lambda: OptimizerSpec(sgd=SGDArgs()))
    weight_decay: float = Field(default=0.0, ge=0, le=100)  # the course uses λ = 3 (D2L 3.7)
    decay_norm_and_bias: bool = Field(default=True, description="false: no weight decay on biases and norm layers")
    schedule: ScheduleSpec | None = None
    warmup_epochs: float = Field(default=0.0, ge=0)
    clip_grad_norm: float | None = Field(default=None, gt=0)
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    class_weights: Literal["none", "median_frequency"] = Field(
        default="none", description="images and masks: weight each class's loss by median frequency / its frequency "
                                    "in the training labels (SegNet's balancing: rare classes count more)")
    early_stopping: EarlyStopping | None = None
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: Literal["auto", True, False] = "auto"
    init_from: InitFrom | None = None


class ExportSpec(Section):
    opset: int = Field(default=18, ge=17, le=23)
    quantize: Literal["none", "dynamic", "static"] = "none"
    max_accuracy_drop: float = Field(default=0.01, ge=0, le=1, description="refuse an int8 model losing more than this")
    require_int8_speedup: bool = Field(default=True, description="refuse an int8 model that is not faster than fp32 "
                                                                 "at batch 1 and 64 on the exporting CPU")
    calibration: Literal["minmax", "entropy", "percentile"] = Field(
        default="minmax", description="static int8: how activation ranges are chosen from the calibration samples")
    fp16: bool = Field(default=False, description="also export an fp16 graph for GPUs (inputs stay uint8/int64), "
                                                   "proven against PyTorch at an fp16 tolerance")
    parity_atol: float = Field(default=1e-4, gt=0, le=1, description="absolute part of the parity tolerance")
    parity_rtol: float = Field(default=1e-3, ge=0, le=0.1,
                               description="relative part: |onnx - torch| <= atol + rtol·|torch| per element")

    @model_validator(mode="before")
    @classmethod
    def _old_tolerance(cls, value: Any) -> Any:
        """`parity_tolerance` (runs saved before parity_atol/parity_rtol existed) is the absolute part."""
        if isinstance(value, dict) and "parity_tolerance" in value and "parity_atol" not in value:
            value = {**value, "parity_atol": value["parity_tolerance"]}
            del value["parity_tolerance"]
        return value


class DataSpec(BaseModel):
    """`dataset` names a registered dataset; other keys are that dataset's options (validated by it)."""

    model_config = ConfigDict(extra="allow")
    dataset: str
    batch_size: int = Field(default=64, ge=1, le=65_536)
    augment: list[Any] = Field(default_factory=list)
    partition: Literal["random", "sequential"] = Field(
        default="sequential", description="text only: random subsequences, or consecutive ones carrying the state")

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Spec(Section):
    name: str = Field(pattern=r"^[a-z][a-z0-9_.-]{0,62}$", description="model name in the store")
    task: Task
    description: str | None = None
    input: InputSpec
    labels: list[str] | None = Field(default=None, min_length=1)
    blocks: dict[str, BlockDef] = Field(default_factory=dict)
    backbone: BackboneSpec | None = None
    network: list[Any] = Field(default_factory=list)
    outputs: OutputsSpec | None = None
    init: str | dict[str, Any] = "default"
    data: DataSpec | None = None
    train: TrainSpec = Field(default_factory=TrainSpec)
    export: ExportSpec = Field(default_factory=ExportSpec)

    _loaded: Loaded | None = PrivateAttr(default=None)  # set once, by models.spec.load

    @field_validator("labels")
    @classmethod
    def _labels(cls, v):
        if v is not None and len(set(v)) != len(v):
            raise ValueError("labels repeat")
        return v

    @field_validator("init")
    @classmethod
    def _init(cls, v):
        from models.layers.init import parse_init

        parse_init(v)
        return v

    @field_validator("input")
    @classmethod
    def _task_input(cls, v: InputSpec, info: ValidationInfo):
        task = info.data.get("task")  # declared before input: validated first (absent when it was invalid)
        if task is not None and task_kind(task, v.kind) is None:
            raise ValueError(refusal(task, v.kind))  # the one table of pairs: models/task_table.py
        return v

    @model_validator(mode="after")
    def _sections(self):
        if not self.network and self.backbone is None:
            raise ValueError("network is empty: list at least one layer")
        if self.train.class_weights != "none" and self.task not in ("classification", "segmentation"):
            raise ValueError(f"train.class_weights weighs classes: it applies to classification and segmentation, "
                             f"not {self.task}")
        return self

    # ---------------------------------------------------------------- what the loader found
    def bind(self, loaded: Loaded) -> None:
        """Attach what models.spec.load found (called once, by the loader: a bound spec never changes)."""
        if self._loaded is not None:
            raise RuntimeError(f"spec {self.name} is already bound to its source")
        self._loaded = loaded

    @property
    def loaded(self) -> Loaded:
        if self._loaded is None:
            raise NotLoaded(f"spec {self.name} was built directly (Spec(...) or model_validate), not by "
                            "models.spec.load.load_spec / load_spec_text: it has no source and no parsed network")
        return self._loaded

    @property
    def file(self) -> Path | None:
        return self.loaded.file

    @property
    def source(self) -> LocatedYaml:
        return self.loaded.source

    @property
    def backbone_spec(self) -> "Spec | None":
        return self.loaded.backbone_spec

    @property
    def nodes(self) -> tuple:
        """The parsed network (models.spec.network nodes), validated against the layer registry."""
        return self.loaded.nodes

    @property
    def backbone_nodes(self) -> tuple:
        """The backbone spec's nodes up to `backbone.until` (empty without a backbone)."""
        return self.loaded.backbone_nodes

    def with_train(self, **changes: Any) -> "Spec":
        """This spec with `train` fields replaced (validated as the YAML would be): the command line's overrides
        become part of the spec, so the loop, the schedule and the run's saved spec.yaml agree."""
        train = TrainSpec.model_validate({**self.train.model_dump(exclude_none=True), **changes})
        return self.model_copy(update={"train": train})  # keeps the binding: same source, same network

    def locate(self, path: tuple[str | int, ...]) -> Location:
        return self.source.locate(path)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def spec_hash(self) -> str:
        """Content hash of the spec (and its backbone's): equal specs hash equal whatever their formatting."""
        payload = self.to_dict()
        if self.backbone_spec is not None:  # the backbone's content counts, not where its file happens to be
            payload["backbone"]["spec"] = self.backbone_spec.spec_hash()
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        return digest[:16]
