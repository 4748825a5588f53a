"""specserve's HTTP service: stored ONNX models behind one endpoint per row of models/task_table.py (classify,
segment, generate, forecast, predict), /models, /demo, and the same models under the Open Inference Protocol at /v2
(service/kserve.py).

Which models serve which endpoint, the default of each, process/thread counts, request limits, API keys, CORS and
connection timeouts come from the serving config (service/config.py); request limits also appear in the
parameters' schemas in /docs.json. In front of it all stands service/gate.py (unknown paths, keys, CORS, the docs
page); each connection is watched by service/connections.py (slow or idle clients are cut off).
"""
from __future__ import annotations

import gc
import sys
import logging
from pathlib import Path
from typing import Annotated, Any, Callable

import anyio
import bentoml
from bentoml.exceptions import BentoMLException
from pydantic import Field

from models.errors import SpecserveError
from models.task_table import ENDPOINTS
from service import (admission, connections, demo, generation, kserve, lean, openapi, regression, series,
                     streaming, text_classify, vision)
from service.config import config_path, load_config
from service.errors import answers_errors
from service.gate import SWAGGER, Gate, gated
from service.images import PixelBudget, open_image
from service.schemas import (MAX_K, ClassifyResult, ClassifyTextResult, ForecastResult, GenerateResult,
                             ModelsResult, PredictResult, SegmentResult)
from service.served import ServingError, check_stored, declare_models, load_endpoint
from service.uploads import RawImageRoute, UploadGuard


class StartupError(ServingError, BentoMLException):
    """A bad serving config or a configured model missing from the store. As a BentoMLException, `bentoml serve`
    prints its message as one line and exits, instead of a traceback (or, for a missing model, BentoML's own
    attempt to download it: "No cloud context default found")."""


try:
    CONFIG = load_config()
    check_stored(CONFIG, config_path())
except SpecserveError as e:
    raise StartupError(str(e)) from None
LIMITS = CONFIG.limits
connections.install(CONFIG.connections, CONFIG.workers)
sys.setswitchinterval(CONFIG.gil_switch_ms / 1000)
logging.getLogger("specserve").setLevel(logging.INFO)  # BentoML's workers log WARNING and up from other loggers
OPEN_INFERENCE = kserve.OpenInference(CONFIG)
DOC = ("specserve: models made from YAML specs, served from their parity-proven ONNX graphs. Task endpoints below "
       "(POST, JSON or multipart); what is served: POST /models; the same models under the Open Inference Protocol "
       "(KServe v2) at /v2; health: /livez, /readyz.")
# The sync JSON APIs the lean routes answer, and how much work a call asks for (service/lean.py's JsonRoute: in
# units that each cost about the same; the seconds a unit takes are measured as the server runs).
LEAN_JSON: dict[str, Callable[[dict[str, Any]], float]] = {
    "forecast": lambda call: call["k"] + len(call["values"]) / 1000,  # model steps; scaling the series
    "generate": lambda call: call["length"] + len(call["prefix"]) / 10,  # steps; the prefix in one pass
    "predict": lambda call: 1 + len(call["features"]) / 64,  # one model call over the rows
    "classify_text": lambda call: 1 + sum(map(len, call["texts"])) / 1000,  # tokenizing; one model call
}
ModelName = Annotated[str | None, Field(strict=True, description="a served model's name or name:version; none = the "
                                                                 "default")]
# strict: no "1.5" as a number, no true as 1 or 0 as false (the document says integer, number, boolean)
Finite = Annotated[float, Field(allow_inf_nan=False, strict=True)]


def accept_header() -> str | None:
    """The Accept header of the request being answered (None outside a request, e.g. a call in-process)."""
    try:
        return SpecServe.context.request.headers.get("accept")
    except LookupError:
        return None


@bentoml.service(**CONFIG.service_options())
@bentoml.asgi_app(demo.app, path="/demo")
@bentoml.asgi_app(OPEN_INFERENCE.app, path="/v2")
@declare_models(CONFIG.refs())
class SpecServe:
    def __init__(self) -> None:
        threads = CONFIG.ort_threads()  # every model is loaded, verified and warmed up before /readyz answers
        self.endpoints = {name: load_endpoint(name, CONFIG.endpoints.get(name), threads)
                          for name in ENDPOINTS}
        batching = CONFIG.endpoints["classify"].batching if "classify" in CONFIG.endpoints else None
        self.classifiers = vision.classifiers(self.endpoints["classify"], batching, LIMITS.max_image_pixels,
                                              LIMITS.max_request_pixels)
        self.stream_limiter = anyio.CapacityLimiter(CONFIG.threads)  # generation steps of event streams at once
        if CONFIG.lean_routes:
            lean.serve("/classify", self._classify_json)
            for name, units in LEAN_JSON.items():
                api = SpecServe.apis[name]
                lean.serve_json(api.route, lean.JsonRoute(api.input_spec, getattr(self, name).local, CONFIG.threads,
                                                          units, CONFIG.inline_ms / 1000))
        # The models, sessions and BentoML's app are long-lived: moved out of the collector's generations, they are
        # no longer traversed by every collection, which under load paused workers often enough to set the p99.
        gc.collect()
        gc.freeze()

    @bentoml.api
    @answers_errors
    async def classify(self, images: Annotated[list[Path], Field(min_length=1, max_length=LIMITS.max_images)],
                       k: Annotated[int, Field(ge=1, le=MAX_K, strict=True)] = 5,
                       model: ModelName = None) -> ClassifyResult:
        """Top-k labels with probabilities for each uploaded image (PNG, JPEG, BMP, GIF, WebP), converted to the
        model's channels and resized to its input size. Concurrent requests are batched (serving config). Also
        takes one image as the raw body (Content-Type image/png, image/jpeg, ...) with k and model in the query
        string: `curl --data-binary @digit.png -H 'Content-Type: image/png' 'http://host/classify?k=3'`."""
        return await vision.classify_answer(self.endpoints["classify"], self.classifiers, images, k, model)

    async def _classify_json(self, request: lean.ClassifyRequest) -> bytes:
        """classify's answer as JSON, for the lean route (service/lean.py)."""
        answer = await vision.classify_answer(self.endpoints["classify"], self.classifiers, request.images,
                                              request.k, request.model)
        return answer.model_dump_json().encode()

    @bentoml.api
    @answers_errors
    def classify_text(self,
                      texts: Annotated[list[Annotated[str, Field(min_length=1, max_length=LIMITS.max_text_length)]],
                                       Field(min_length=1, max_length=LIMITS.max_texts)],
                      k: Annotated[int, Field(ge=1, le=MAX_K, strict=True)] = 5,
                      model: ModelName = None) -> ClassifyTextResult:
        """Top-k labels with probabilities for each text, tokenized as the model's training texts were: its card's
        vocabulary and tokenizer (words or characters, lower-cased or not, cut or padded to its length)."""
        served = self.endpoints["classify_text"].pick(model)
        return ClassifyTextResult(model=served.tag, results=text_classify.classify(served, texts, k))

    @bentoml.api
    @answers_errors
    def segment(self, image: Path, overlay: Annotated[bool, Field(strict=True)] = False,
                model: ModelName = None) -> SegmentResult:
        """Per-pixel classes of one image: the class-index mask (palette PNG at the upload's size), pixel shares
        per class, and with overlay=true the upload tinted by class."""
        served = self.endpoints["segment"].pick(model)
        opened = open_image(image.read_bytes(), "image", LIMITS.max_image_pixels,
                            PixelBudget(LIMITS.max_request_pixels))
        decoded = vision.decode_for(served, opened, "image")
        return vision.segment(served, decoded, overlay)

    @bentoml.api
    @answers_errors
    def forecast(self, values: Annotated[list[Finite], Field(min_length=1, max_length=LIMITS.max_series_length)],
                 k: Annotated[int, Field(ge=1, le=LIMITS.max_forecast_steps, strict=True)] = 1,
                 model: ModelName = None) -> ForecastResult:
        """The next k values of a series, each step fed the previous predictions."""
        served = self.endpoints["forecast"].pick(model)
        return ForecastResult(model=served.tag, window=series.window_of(served).window,
                              forecast=series.forecast(served, values, k))

    @bentoml.api
    @answers_errors
    def predict(self, features: Annotated[list[Annotated[list[Finite], Field(min_length=1)]],
                                          Field(min_length=1, max_length=LIMITS.max_feature_rows)],
                model: ModelName = None) -> PredictResult:
        """A regression model's outputs for each feature vector."""
        served = self.endpoints["predict"].pick(model)
        return PredictResult(model=served.tag, outputs=regression.predict(served, features))

    @bentoml.api
    @answers_errors
    def generate(self, prefix: Annotated[str, Field(min_length=1, max_length=LIMITS.max_prefix_length)],
                 length: Annotated[int, Field(ge=1, le=LIMITS.max_generation_length, strict=True)] = 100,
                 temperature: Annotated[float, Field(ge=0, le=10, allow_inf_nan=False, strict=True)] = 1.0,
                 top_k: Annotated[int, Field(ge=0, strict=True, description="sample among the k best; 0 = all")] = 0,
                 seed: Annotated[int | None, Field(ge=0, le=2**63 - 1, strict=True)] = None,
                 model: ModelName = None) -> GenerateResult:
        """A continuation of `prefix` by a character model (temperature 0 = greedy; same seed, same text). With
        `Accept: text/event-stream` the answer is a stream of server-sent events instead: `start` (model, seed),
        one `token` event per character, `end` (the whole text); a client that disconnects stops the generation."""
        served = self.endpoints["generate"].pick(model)
        seed = generation.new_seed() if seed is None else seed
        if streaming.wants_stream(accept_header()):
            started = generation.Generation(served, prefix, length, temperature, top_k, seed)  # 4xx before streaming
            return streaming.TokenStream(started, {"model": served.tag, "seed": seed, "prefix": prefix,
                                                   "length": length}, self.stream_limiter)
        text = generation.generate(served, prefix, length, temperature, top_k, seed)
        return GenerateResult(model=served.tag, prefix=prefix, text=text, seed=seed)

    @bentoml.api
    def models(self) -> ModelsResult:
        """What is served: per endpoint that serves a model, its default and each model's tag, task, input, labels
        or vocabulary, metrics and parity proof."""
        return ModelsResult(endpoints={name: ep.describe(CONFIG.access.disclose_versions)
                                       for name, ep in self.endpoints.items() if ep.by_name})


SpecServe.add_asgi_middleware(UploadGuard, max_bytes=LIMITS.max_upload_bytes, routes={
    api.route: set(api.input_spec.multipart_fields) for api in SpecServe.apis.values()},
    raw_images={"/classify": RawImageRoute("images", frozenset({"k", "model"}))})
if CONFIG.admission_slots is not None:  # inside UploadGuard (bodies read), outside both kinds of route
    SpecServe.add_asgi_middleware(admission.FairAdmission, capacity=CONFIG.admission_slots,
                                  routes=[api.route for api in SpecServe.apis.values() if api.route != "/models"],
                                  other_path=kserve.known_path)
SpecServe.add_asgi_middleware(lean.LeanRoutes, max_images=LIMITS.max_images)  # inside UploadGuard: reads its form
SpecServe.add_asgi_middleware(openapi.TruthfulDocs)
gated(SpecServe, lambda app: Gate(app, api_routes=[api.route for api in SpecServe.apis.values()],
                                  access=CONFIG.access, digests=CONFIG.access.key_digests(),
                                  other_path=kserve.known_path, swagger=SWAGGER), doc=DOC)
