"""The typed spec: pydantic models of every section, and `load_spec(path) -> Spec`.

Loading is the one door into the system: whatever the bytes, it returns a Spec or raises SpecError, whose every
problem carries file:line:column and a dotted path. Layer entries under `network` and `blocks` are validated by
models.network (against the layer registry) as part of loading, so a Spec that loads has only known layers with
valid arguments; shapes are checked by the builder (models.builder.infer), which `specserve validate` also runs.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from .errors import Location, Problem, SpecError
from .located_yaml import LocatedYaml, parse_yaml
from .validation import validation_problems

Task = Literal["classification", "segmentation", "sequence", "regression"]


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


class BlockDef(Section):
    """A parameterized block: `$param` / `"$param[i]"` in its layers are replaced by the values at each use."""

    params: list[str] = Field(default_factory=list)
    layers: list[Any] = Field(min_length=1)

    @field_validator("params")
    @classmethod
    def _params(cls, v):
        for p in v:
            if not p.isidentifier():
                raise ValueError(f"parameter name '{p}' must be an identifier")
        if len(set(v)) != len(v):
            raise ValueError(f"parameter names repeat: {v}")
        return v


class BackboneSpec(Section):
    """Reuse another spec's network up to (and including) its layer named `until`."""

    spec: str = Field(description="path of the other spec, relative to this file")
    until: str = Field(description="name of the last layer of that spec's network to keep")
    weights: str | None = Field(default=None, description="a run directory or .safetensors file of that spec")
    freeze: bool = False
    lr_scale: float = Field(default=1.0, ge=0, le=1, description="learning-rate multiplier for backbone parameters")


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

    weights: str = Field(description="a run directory or .safetensors file")
    freeze: bool = Field(default=False, description="loaded parameters do not train")
    lr_scale: float = Field(default=1.0, ge=0, le=1, description="learning-rate multiplier for loaded parameters")


class TrainSpec(Section):
    epochs: int = Field(default=10, ge=1, le=100_000)
    optimizer: OptimizerSpec = Field(default_factory=lambda: OptimizerSpec(sgd=SGDArgs()))
    weight_decay: float = Field(default=0.0, ge=0, le=1)
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
    parity_tolerance: float = Field(default=1e-4, gt=0, le=1)


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
    init: str | dict[str, Any] = "default"
    data: DataSpec | None = None
    train: TrainSpec = Field(default_factory=TrainSpec)
    export: ExportSpec = Field(default_factory=ExportSpec)

    _source: LocatedYaml | None = PrivateAttr(default=None)
    _file: Path | None = PrivateAttr(default=None)
    _backbone_spec: "Spec | None" = PrivateAttr(default=None)
    _nodes: list = PrivateAttr(default_factory=list)  # parsed network (models.network.Node)
    _backbone_nodes: list = PrivateAttr(default_factory=list)

    @field_validator("labels")
    @classmethod
    def _labels(cls, v):
        if v is not None and len(set(v)) != len(v):
            raise ValueError("labels repeat")
        return v

    @field_validator("init")
    @classmethod
    def _init(cls, v):
        from .init import parse_init

        parse_init(v)
        return v

    @model_validator(mode="after")
    def _task_input(self):
        allowed = {"classification": {"image", "features"}, "segmentation": {"image"},
                   "sequence": {"tokens", "series"}, "regression": {"features", "series"}}[self.task]
        if self.input.kind not in allowed:
            raise ValueError(f"task {self.task} takes {' or '.join(sorted(allowed))} input, not {self.input.kind}")
        if not self.network and self.backbone is None:
            raise ValueError("network is empty: list at least one layer")
        if self.train.class_weights != "none" and self.task not in ("classification", "segmentation"):
            raise ValueError(f"train.class_weights weighs classes: it applies to classification and segmentation, "
                             f"not {self.task}")
        return self

    # ---------------------------------------------------------------- provenance
    @property
    def file(self) -> Path | None:
        return self._file

    @property
    def source(self) -> LocatedYaml:
        assert self._source is not None, "spec was not loaded from text"
        return self._source

    @property
    def backbone_spec(self) -> "Spec | None":
        return self._backbone_spec

    def locate(self, path: tuple[str | int, ...]) -> Location:
        return self.source.locate(path)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def spec_hash(self) -> str:
        """Content hash of the spec (and its backbone's): equal specs hash equal whatever their formatting."""
        payload = self.to_dict()
        if self._backbone_spec is not None:  # the backbone's content counts, not where its file happens to be
            payload["backbone"]["spec"] = self._backbone_spec.spec_hash()
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        return digest[:16]


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise SpecError.one(Location(str(path), 1, 1), "", "file not found") from None
    except IsADirectoryError:
        raise SpecError.one(Location(str(path), 1, 1), "", "is a directory, not a spec file") from None
    except OSError as err:
        raise SpecError.one(Location(str(path), 1, 1), "", f"cannot read: {err.strerror or err}") from None


def load_spec_text(raw: bytes | str, file: str = "<spec>", *, base_dir: Path | None = None,
                   _loading: tuple[Path, ...] = ()) -> Spec:
    """Parse and validate spec text; `file` is used in messages, `base_dir` resolves backbone paths."""
    located = parse_yaml(raw, file)
    if not isinstance(located.data, dict):
        kind = type(located.data).__name__ if located.data is not None else "nothing"
        raise SpecError.one(located.locate(()), "", f"a spec is a mapping of sections (name, task, input, network, ...), not a {kind}")
    try:
        spec = Spec.model_validate(located.data)
    except ValidationError as err:
        raise SpecError(validation_problems(err, located, model=Spec)) from None
    spec._source = located
    spec._file = Path(file) if file != "<spec>" else None
    if spec.backbone is not None:
        spec._backbone_spec = _load_backbone(spec, base_dir or Path("."), _loading)
    from .network import parse_network  # late import: network validates against the layer registry

    parse_network(spec)  # raises SpecError for unknown layers, bad arguments, bad block uses
    from .datasource import check_data_section

    check_data_section(spec)  # dataset name, options and augmentation steps (reads no file)
    return spec


def _load_backbone(spec: Spec, base_dir: Path, loading: tuple[Path, ...]) -> Spec:
    assert spec.backbone is not None
    target = (base_dir / spec.backbone.spec).resolve()
    where = spec.locate(("backbone", "spec"))
    if target in loading:
        chain = " → ".join(p.name for p in (*loading, target))
        raise SpecError.one(where, "backbone.spec", f"backbone specs form a cycle: {chain}")
    if len(loading) > 8:
        raise SpecError.one(where, "backbone.spec", "backbone specs nest more than 8 deep")
    try:
        return load_spec(target, _loading=(*loading, target))
    except SpecError as err:
        problems = [Problem(where, "backbone.spec", f"backbone {spec.backbone.spec} does not load:")] + err.problems
        raise SpecError(problems) from None


def load_spec(path: str | Path, *, _loading: tuple[Path, ...] = ()) -> Spec:
    """Load and validate a spec file. Raises SpecError (only) for anything wrong with it."""
    path = Path(path)
    resolved = path.resolve()
    return load_spec_text(_read(path), str(path), base_dir=path.parent, _loading=_loading or (resolved,))
