"""The models being served: each stored model loaded once, verified, opened in onnxruntime and warmed up.

Loading goes through bentoml.models.get (the bento's own store inside a built bento) and models.artifact.store.verify_stored,
which re-checks digests, the card against the graph and the parity proof, so a tampered store entry stops the
server at start-up instead of answering wrongly. Warm-up runs every session once on an input of its real shape: onnxruntime allocates and picks kernels on the first call,
which would otherwise land on the first user's request.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence, TypeVar

import bentoml
import numpy as np
import onnxruntime as ort
import yaml

from models.artifact.isa import isa_warning
from models.task_table import for_endpoint
from models.artifact.card import ImageInput, ModelCard, SeriesInput, TokenInput
from models.artifact.runtime import make_session
from models.artifact.store import StoredModel, model_store, verify_stored
from service.config import EndpointConfig, ModelRef, ServingConfig
from service.errors import NOT_FOUND, RequestError
from service.schemas import EndpointInfo, ModelInfo
from models.errors import SpecserveError

logger = logging.getLogger("specserve")
T = TypeVar("T")
SPECS = Path(__file__).resolve().parents[1] / "specs"  # the project's specs (absent inside a built bento)



class ServingError(SpecserveError, RuntimeError):
    """A configured model cannot be served (missing, damaged, or of the wrong task for its endpoint)."""


@dataclass(frozen=True)
class ServedModel:
    name: str
    stored: StoredModel
    session: ort.InferenceSession
    int8: bool = False
    fp16: bool = False

    @property
    def card(self) -> ModelCard:
        return self.stored.card

    @property
    def tag(self) -> str:
        return self.stored.tag

    def run(self, *feeds: np.ndarray) -> list[np.ndarray]:
        """The graph's outputs in card order for its inputs in card order (data first, then state)."""
        io = self.card.io
        assert io is not None  # stored models are exported models
        return self.session.run(io.graph_outputs, dict(zip(io.graph_inputs, feeds)))

    def zero_state(self, batch: int) -> list[np.ndarray]:
        """Initial recurrent state (zeros), one array per state input, shaped as the graph declares."""
        shapes = {i.name: i.shape for i in self.session.get_inputs()}  # state: ['batch', L*D, H]
        state_in = self.card.io.state_in if self.card.io else []
        return [np.zeros([batch, *shapes[n][1:]], dtype=np.float32) for n in state_in]

    def example(self, batch: int = 1) -> np.ndarray:
        """A valid data input of `batch` samples (for warm-up)."""
        spec = self.card.input
        if isinstance(spec, ImageInput):
            return np.zeros((batch, *spec.size, spec.channels), dtype=np.uint8)  # (B, H, W, C)
        if isinstance(spec, TokenInput):
            return np.zeros((batch, 2), dtype=np.int64)  # (B, T)
        if isinstance(spec, SeriesInput):
            return np.zeros((batch, spec.window), dtype=np.float32)  # (B, τ)
        return np.zeros((batch, spec.count), dtype=np.float32)

    def warm_up(self, batch_sizes: Sequence[int] = (1,)) -> None:
        for batch in batch_sizes:
            self.run(self.example(batch), *self.zero_state(batch))

    def describe(self, disclose_versions: bool = True) -> ModelInfo:
        """What /models reports about this model; without `disclose_versions`, no library versions (the parity
        proof records those of torch, onnx and onnxruntime)."""
        card = self.card
        parity = self.stored.parity if disclose_versions else {
            k: v for k, v in self.stored.parity.items() if k != "versions"}
        return ModelInfo(name=self.name, tag=self.tag, version=self.tag.split(":")[1], task=card.task,
                         input=card.input.model_dump(mode="json"), labels=card.labels,
                         vocab_size=len(card.input.vocab) if isinstance(card.input, TokenInput) else None,
                         metrics=card.metrics, graph="int8" if self.int8 else "fp16" if self.fp16 else "fp32",
                         exported_at=card.exported_at.isoformat() if card.exported_at else None,
                         providers=self.session.get_providers(), parity=parity)


def declare_models(refs: Iterable[ModelRef]) -> Callable[[type[T]], type[T]]:
    """Class decorator: one `bentoml.models.BentoModel(tag)` attribute per configured model, which is how a
    BentoML service names the models `bentoml build` must pack ("name" packs the newest version)."""

    def declare(cls: type[T]) -> type[T]:
        for ref in refs:
            setattr(cls, "model_" + ref.name.replace("-", "_").replace(".", "_"), bentoml.models.BentoModel(ref.tag))
        return cls

    return declare


def _find(tag: str) -> bentoml.Model:
    """The stored model in $BENTOML_HOME (read now: bentoml caches the home it first saw), else in BentoML's own
    configured store — inside a built bento the models live in the bento, not in $BENTOML_HOME."""
    try:
        return model_store().get(tag)
    except bentoml.exceptions.NotFound:
        return bentoml.models.get(tag)


def spec_for(name: str, specs: Path = SPECS) -> Path | None:
    """The spec file in `specs` whose `name:` is `name` (read as YAML only, never as a spec), if there is one."""
    for path in sorted(specs.glob("*.yaml")) if specs.is_dir() else []:
        try:
            if (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("name") == name:
                return path
        except (OSError, yaml.YAMLError, AttributeError):
            continue
    return None


def check_stored(config: ServingConfig, source: Path) -> None:
    """ServingError, one line, for the first configured model that is in neither store `_find` reads: which model,
    which store, and the command that would make it. (BentoML would otherwise try to download it and fail with
    "No cloud context default found".)"""
    for endpoint, endpoint_config in config.endpoints.items():
        for ref in endpoint_config.models:
            try:
                _find(ref.tag)
            except bentoml.exceptions.NotFound:
                pass
            except Exception:  # a damaged entry is reported, with its own message, when it is loaded
                continue
            else:
                continue
            spec = spec_for(ref.name)
            make = (f"specserve run {spec.relative_to(SPECS.parent) if spec else f'<the spec named {ref.name}>'}"
                    if ":" not in ref.tag else f"specserve run <its spec> (version {ref.tag.split(':')[1]} "
                                                f"cannot be made again; name another)")
            raise ServingError(f"{endpoint}: model {ref.tag} (serving config {source}) is not in the model store "
                               f"{model_store()._path}; make it with `{make}`, or serve stored models "
                               f"with `specserve serve`")


def load_model(ref: ModelRef, endpoint: str, threads: int) -> ServedModel:
    """Load, verify and open `ref` for `endpoint`; ServingError if it cannot serve there."""
    try:
        stored = verify_stored(_find(ref.tag))
    except Exception as e:  # StoreError, or bentoml's own errors on a damaged store
        raise ServingError(f"{endpoint}: cannot load model {ref.tag}: {e}") from None
    wanted = for_endpoint(endpoint)
    task, kind = wanted.task, wanted.input
    if (stored.card.task, stored.card.input.kind) != (task, kind):
        raise ServingError(f"{endpoint} serves {task} models with {kind} input; {stored.tag} is a "
                           f"{stored.card.task} model with {stored.card.input.kind} input")
    path = stored.onnx_path
    if ref.int8:
        if stored.int8_path is None:
            raise ServingError(f"{endpoint}: {stored.tag} has no int8 graph (int8: true in the serving config)")
        path = stored.int8_path
        warning = isa_warning(stored.tag, stored.quantized_for)
        if warning:
            logger.warning(warning)
    elif ref.fp16:
        if stored.fp16_path is None:
            raise ServingError(f"{endpoint}: {stored.tag} has no fp16 graph (fp16: true in the serving config; "
                               f"export it with `export: {{fp16: true}}`)")
        path = stored.fp16_path
    return ServedModel(ref.name, stored, make_session(path, threads), ref.int8, fp16=ref.fp16)


@dataclass
class EndpointModels:
    """The models of one endpoint, by name; `pick` resolves a request's `model` parameter."""

    endpoint: str
    default: str
    by_name: dict[str, ServedModel] = field(default_factory=dict)

    def pick(self, model: str | None) -> ServedModel:
        """The default for None; "name" or "name:version" of a served model; otherwise a 404."""
        if not self.by_name:
            raise RequestError(NOT_FOUND, f"no model serves {self.endpoint} (see the serving config)")
        name = model or self.default
        served = self.by_name.get(name.split(":")[0])
        if served is None or (":" in name and served.tag != name):
            known = ", ".join(f"{m.name} ({m.tag})" for m in self.by_name.values())
            raise RequestError(NOT_FOUND, f"unknown model {name!r} for {self.endpoint}; served: {known}")
        return served

    def describe(self, disclose_versions: bool = True) -> EndpointInfo:
        return EndpointInfo(default=self.default or None,
                            models=[m.describe(disclose_versions) for m in self.by_name.values()])


def load_endpoint(endpoint: str, config: EndpointConfig | None, threads: int) -> EndpointModels:
    """The endpoint's models, loaded and warmed up (an endpoint absent from the config serves none)."""
    if config is None:
        return EndpointModels(endpoint, default="")
    models = {ref.name: load_model(ref, endpoint, threads) for ref in config.models}
    for served in models.values():
        served.warm_up()
    return EndpointModels(endpoint, config.default_name, models)
