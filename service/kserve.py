"""The Open Inference Protocol (KServe v2, as Triton and KServe speak it) beside the task endpoints, mounted at /v2.

The same loaded models answer, by name: each served model is a v2 model whose one version is its stored version,
and whose tensors are exactly its stored ONNX graph's (the card's io names): image models take UINT8 pixels NHWC
(B, H, W, C) and the graph normalizes itself; token models INT64 ids (B, T) plus their FP32 recurrent state
(B, layers, hidden), which may be left out (zeros) and is returned as an output so a client can step; text
classifiers the same INT64 ids (B, T), made with the vocabulary and tokenizer /models shows, without state; forecasters
FP32 windows (B, τ) in model units (the card's scaling, /models, is the client's to apply); regressors FP32
features (B, F). Outputs are the graph's: scores (logits) and state.

    GET  /v2                                       server metadata
    GET  /v2/health/live, /v2/health/ready         health (open without an API key, like /livez)
    GET  /v2/models/{name}[/versions/{v}]          model metadata: inputs, outputs, datatypes, shapes (-1 = any)
    GET  /v2/models/{name}[/versions/{v}]/ready    200 when served
    GET  /v2/models/{name}[/versions/{v}]/config   the model configuration as Triton writes it (what perf_analyzer
                                                   and tritonclient's get_model_config read)
    POST /v2/models/{name}[/versions/{v}]/infer    inference

Requests are JSON, or JSON followed by raw tensor bytes (the binary tensor data extension:
`Inference-Header-Content-Length` = the JSON's length, `parameters.binary_data_size` per input). Outputs come back
as JSON numbers unless asked for as binary (`parameters.binary_data` per output, or `binary_data_output` for the
request, which tritonclient sends when no output is named). The classification extension is supported on
(batch, classes) outputs: `parameters.classification: k` returns BYTES "score:index:label", best first.

Every input is checked against the graph before it runs — names, datatypes, ranks, static sizes, element counts,
value ranges (uint8 and token ids within the vocabulary; float32 values finite) — and against the serving
config's limits (body size, batch size, steps, pixels per request); anything else is a 400 that says which input
and why, so no client tensor reaches onnxruntime in a shape it would fail on.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

import anyio
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from models.artifact.card import ImageInput, TokenInput
from service.admission import charge, cpu_timed
from service.config import ServingConfig
from service.errors import BAD_REQUEST, NOT_FOUND, TOO_LARGE, UNPROCESSABLE, UNSUPPORTED, RequestError
from service.served import ServedModel

DATATYPES = {"tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(float16)": "FP16", "tensor(uint8)": "UINT8",
             "tensor(int8)": "INT8", "tensor(int16)": "INT16", "tensor(int32)": "INT32", "tensor(int64)": "INT64",
             "tensor(uint16)": "UINT16", "tensor(uint32)": "UINT32", "tensor(uint64)": "UINT64",
             "tensor(bool)": "BOOL"}
NUMPY = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "UINT8": np.uint8, "INT8": np.int8,
         "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "UINT16": np.uint16, "UINT32": np.uint32,
         "UINT64": np.uint64, "BOOL": np.bool_}
FROM_NUMPY = {np.dtype(t).name: name for name, t in NUMPY.items()}
PATH = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<action>/ready|/infer|/config)?$")
FIXED = frozenset({"/v2", "/v2/", "/v2/health/live", "/v2/health/ready"})
HEADER_LENGTH = "inference-header-content-length"


# ---------------------------------------------------------------------------------------------- the served models

def catalog() -> dict[str, ServedModel]:
    """Every model the service serves, by name (names are unique: a model's task fixes its one endpoint)."""
    import bentoml

    try:
        service = bentoml.get_current_service()
    except Exception:  # not started (yet): nothing is served
        return {}
    return {name: served for endpoint in service.endpoints.values() for name, served in endpoint.by_name.items()}


def version_of(model: ServedModel) -> str:
    return model.tag.split(":", 1)[1]


def known_path(path: str) -> bool:
    """Whether `path` is one this app answers (a served model, and its served version if one is named)."""
    if path in FIXED:
        return True
    match = PATH.match(path)
    if match is None:
        return False
    model = catalog().get(match["name"])
    return model is not None and match["version"] in (None, version_of(model))


@dataclass(frozen=True)
class Tensor:
    """A graph tensor as the protocol describes it: -1 for a dynamic axis."""

    name: str
    datatype: str
    shape: list[int]

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": self.shape}


def tensors(args: list[Any]) -> list[Tensor]:
    """onnxruntime NodeArgs → Tensors."""
    return [Tensor(a.name, DATATYPES.get(a.type, a.type), [d if isinstance(d, int) else -1 for d in a.shape])
            for a in args]


def inputs_of(model: ServedModel) -> list[Tensor]:
    return tensors(model.session.get_inputs())


def outputs_of(model: ServedModel) -> list[Tensor]:
    return tensors(model.session.get_outputs())


# ---------------------------------------------------------------------------------------------- the request

class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")


class InputTensor(_Loose):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: Any = None


class OutputRequest(_Loose):
    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferRequest(_Loose):
    id: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[InputTensor] = Field(min_length=1)
    outputs: list[OutputRequest] | None = None


def _no_constants(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def parse_header(raw: bytes) -> InferRequest:
    try:
        data = json.loads(raw, parse_constant=_no_constants)
    except RecursionError:
        raise RequestError(BAD_REQUEST, "the request JSON is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError, NaN/Infinity, an integer of > 4300 digits
        raise RequestError(BAD_REQUEST, f"the request is not valid JSON ({str(e).split(';')[0]})") from None
    try:
        return InferRequest.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the request"
        raise RequestError(BAD_REQUEST, f"{where}: {first['msg']}") from None


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """(JSON header, binary tensor data) of a request body."""
    if header_length is None:
        return body, memoryview(b"")
    if not header_length.strip().isdigit() or int(header_length) > len(body):
        raise RequestError(BAD_REQUEST, f"Inference-Header-Content-Length {header_length!r} is not a length within "
                                        f"the {len(body):,}-byte body")
    n = int(header_length)
    return body[:n], memoryview(body)[n:]


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise RequestError(BAD_REQUEST, f"{where} must be true or false")
    return value


@dataclass
class Limits:
    """What one request may ask of a model (from the serving config's limits)."""

    max_batch_images: int
    max_batch_rows: int
    max_steps: int
    max_pixels: int

    @classmethod
    def of(cls, config: ServingConfig) -> "Limits":
        lim = config.limits
        return cls(lim.max_images, lim.max_feature_rows, lim.max_prefix_length, lim.max_request_pixels)


def _from_json(values: Any, spec: Tensor, count: int) -> np.ndarray:
    """JSON data (flat or nested, row-major) → a flat array of the tensor's dtype, range-checked."""
    where = f"input '{spec.name}'"
    if not isinstance(values, list):
        raise RequestError(BAD_REQUEST, f"{where}: data must be a list of numbers")
    try:
        array = np.array(values)
    except (ValueError, OverflowError):
        raise RequestError(BAD_REQUEST, f"{where}: data is ragged or not numbers") from None
    if array.size != count:
        raise RequestError(BAD_REQUEST, f"{where}: shape {spec.shape} has {count:,} elements, data has {array.size:,}")
    kind = array.dtype.kind
    integral = spec.datatype.startswith(("INT", "UINT"))
    if count and (kind not in "iuf" or (integral and kind == "f")):
        wanted = "integers" if integral else "numbers"
        raise RequestError(BAD_REQUEST, f"{where}: {spec.datatype} data must be {wanted}, got {array.dtype.name} "
                                        f"values")
    target = np.dtype(NUMPY[spec.datatype])
    if integral:
        info = np.iinfo(target)
        if count and (array.min() < info.min or array.max() > info.max):
            raise RequestError(BAD_REQUEST, f"{where}: {spec.datatype} values must lie in [{info.min}, {info.max}]")
    elif count and (not np.all(np.isfinite(array)) or np.abs(array).max() > np.finfo(target).max):
        raise RequestError(BAD_REQUEST, f"{where}: {spec.datatype} values must be finite and within its range")
    return array.astype(target).reshape(-1)


def decode_inputs(model: ServedModel, request: InferRequest, binary: memoryview,
                  limits: Limits) -> dict[str, np.ndarray]:
    """The request's tensors, checked against `model`'s graph inputs; state inputs left out are zeros."""
    specs = {t.name: t for t in inputs_of(model)}
    io = model.card.io
    assert io is not None
    data_inputs, state_inputs = io.inputs, io.state_in
    given: dict[str, np.ndarray] = {}
    offset = 0
    for tensor in request.inputs:
        spec = specs.get(tensor.name)
        if spec is None:
            raise RequestError(BAD_REQUEST, f"input '{tensor.name}': {model.name} takes {sorted(specs)}")
        if tensor.name in given:
            raise RequestError(BAD_REQUEST, f"input '{tensor.name}' given twice")
        where = f"input '{tensor.name}'"
        if tensor.datatype != spec.datatype:
            raise RequestError(BAD_REQUEST, f"{where} is {spec.datatype}, got {tensor.datatype}")
        if len(tensor.shape) != len(spec.shape) or any(
                d < 0 or (want != -1 and d != want) for d, want in zip(tensor.shape, spec.shape)):
            raise RequestError(BAD_REQUEST, f"{where}: shape {tensor.shape} does not fit the graph's {spec.shape} "
                                            f"(-1: any size)")
        count = math.prod(tensor.shape)
        itemsize = np.dtype(NUMPY[spec.datatype]).itemsize
        size = tensor.parameters.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size != count * itemsize:
                raise RequestError(BAD_REQUEST, f"{where}: binary_data_size {size!r} is not {count:,} × {itemsize} "
                                                f"bytes (shape {tensor.shape}, {spec.datatype})")
            if tensor.data is not None:
                raise RequestError(BAD_REQUEST, f"{where}: both data and binary_data_size")
            if offset + size > len(binary):
                raise RequestError(BAD_REQUEST, f"{where}: the body ends before its {size:,} binary bytes")
            flat = np.frombuffer(binary[offset: offset + size], dtype=np.dtype(NUMPY[spec.datatype]).newbyteorder("<"))
            if not flat.flags.aligned:  # the tensors before it left it at an odd offset in the body
                flat = flat.copy()
            offset += size
            if spec.datatype.startswith("FP") and not np.all(np.isfinite(flat)):
                raise RequestError(BAD_REQUEST, f"{where}: {spec.datatype} values must be finite")
        else:
            if tensor.data is None:
                raise RequestError(BAD_REQUEST, f"{where}: no data (give `data`, or binary data with "
                                                f"parameters.binary_data_size)")
            flat = _from_json(tensor.data, spec, count)
        given[tensor.name] = flat.astype(NUMPY[spec.datatype], copy=False).reshape(tensor.shape)
    if offset != len(binary):
        raise RequestError(BAD_REQUEST, f"{len(binary) - offset:,} bytes of binary data belong to no input")
    missing = [name for name in data_inputs if name not in given]
    if missing:
        raise RequestError(BAD_REQUEST, f"missing input {missing[0]!r} ({specs[missing[0]].datatype} "
                                        f"{specs[missing[0]].shape})")
    batch = {array.shape[0] for array in given.values()}
    if len(batch) > 1:
        raise RequestError(BAD_REQUEST, f"inputs disagree on the batch size: {sorted(batch)}")
    (b,) = batch
    check_limits(model, given[data_inputs[0]], b, limits)
    zeros = dict(zip(state_inputs, model.zero_state(b)))
    return {name: given[name] if name in given else zeros[name] for name in io.graph_inputs}


def max_batch(model: ServedModel, limits: Limits) -> int:
    """The largest batch one request may carry (check_limits' bound)."""
    return limits.max_batch_images if isinstance(model.card.input, ImageInput) else limits.max_batch_rows


def triton_config(model: ServedModel, limits: Limits) -> dict[str, Any]:
    """Triton's model configuration (its model_config.proto as JSON) of a served graph. The first axis of every
    tensor is the batch: Triton's `dims` leave it out and `max_batch_size` bounds it."""

    def entries(specs: list[Tensor]) -> list[dict[str, Any]]:
        return [{"name": t.name, "data_type": f"TYPE_{'STRING' if t.datatype == 'BYTES' else t.datatype}",
                 "dims": t.shape[1:]} for t in specs]

    return {"name": model.name, "platform": "onnxruntime_onnx", "backend": "onnxruntime",
            "max_batch_size": max_batch(model, limits), "input": entries(inputs_of(model)),
            "output": entries(outputs_of(model))}


def check_limits(model: ServedModel, data: np.ndarray, batch: int, limits: Limits) -> None:
    spec = model.card.input
    if batch < 1:
        raise RequestError(BAD_REQUEST, "the batch is empty")
    if isinstance(spec, ImageInput):
        if batch > limits.max_batch_images:
            raise RequestError(TOO_LARGE, f"{batch} images in one request; the limit is {limits.max_batch_images}")
        pixels = batch * spec.size[0] * spec.size[1]
        if pixels > limits.max_pixels:
            raise RequestError(TOO_LARGE, f"{pixels:,} pixels in one request; the limit is {limits.max_pixels:,}")
    elif batch > limits.max_batch_rows:
        raise RequestError(TOO_LARGE, f"a batch of {batch} in one request; the limit is {limits.max_batch_rows}")
    if isinstance(spec, TokenInput):
        steps = data.shape[1]
        if not 1 <= steps <= limits.max_steps:
            raise RequestError(TOO_LARGE if steps else BAD_REQUEST, f"{steps} steps; 1 to {limits.max_steps} allowed")
        if data.size and (data.min() < 0 or data.max() >= len(spec.vocab)):
            raise RequestError(BAD_REQUEST, f"token ids must lie in [0, {len(spec.vocab) - 1}] (the vocabulary)")


@dataclass(frozen=True)
class Wanted:
    name: str
    binary: bool
    classification: int


def wanted_outputs(model: ServedModel, request: InferRequest) -> list[Wanted]:
    names = [t.name for t in outputs_of(model)]
    default_binary = request.parameters.get("binary_data_output", False)
    _bool(default_binary, "parameters.binary_data_output")
    if request.outputs is None:
        return [Wanted(name, default_binary, 0) for name in names]
    wanted = []
    for output in request.outputs:
        if output.name not in names:
            raise RequestError(BAD_REQUEST, f"output '{output.name}': {model.name} has {names}")
        binary = _bool(output.parameters.get("binary_data", default_binary), f"output '{output.name}' binary_data")
        k = output.parameters.get("classification", 0)
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise RequestError(BAD_REQUEST, f"output '{output.name}': classification must be a count >= 0")
        wanted.append(Wanted(output.name, binary, k))
    if len({w.name for w in wanted}) != len(wanted):
        raise RequestError(BAD_REQUEST, "an output is asked for twice")
    return wanted


def classification(model: ServedModel, scores: np.ndarray, k: int, name: str) -> np.ndarray:
    """Triton's classification extension: per row the k best "score:index[:label]", as bytes (B, k)."""
    if scores.ndim != 2:
        raise RequestError(BAD_REQUEST, f"output '{name}' has shape {list(scores.shape)}; classification needs "
                                        f"(batch, classes)")
    labels = model.card.labels
    best = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # (B, k)
    rows = [[f"{row[j]:g}:{j}" + (f":{labels[j]}" if labels else "") for j in js] for row, js in zip(scores, best)]
    return np.array([[s.encode() for s in row] for row in rows], dtype=object)


def encode_outputs(model: ServedModel, request: InferRequest, results: dict[str, np.ndarray],
                   wanted: list[Wanted]) -> Response:
    outputs, chunks = [], []
    for want in wanted:
        array = results[want.name]
        datatype = FROM_NUMPY[array.dtype.name]
        if want.classification:
            array, datatype = classification(model, array, want.classification, want.name), "BYTES"
        entry: dict[str, Any] = {"name": want.name, "datatype": datatype, "shape": list(array.shape)}
        if want.binary:
            raw = (b"".join(len(s).to_bytes(4, "little") + s for s in array.reshape(-1)) if datatype == "BYTES"
                   else np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif datatype == "BYTES":
            entry["data"] = [s.decode() for s in array.reshape(-1)]
        else:
            if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
                raise RequestError(UNPROCESSABLE, f"output '{want.name}' has non-finite values, which JSON cannot "
                                                  f"carry; ask for it as binary data")
            entry["data"] = array.reshape(-1).tolist()
        outputs.append(entry)
    answer: dict[str, Any] = {"model_name": model.name, "model_version": version_of(model), "outputs": outputs}
    if request.id is not None:
        answer["id"] = request.id
    header = json.dumps(answer, separators=(",", ":")).encode()
    if not chunks:
        return Response(header, media_type="application/json")
    return Response(header + b"".join(chunks), media_type="application/octet-stream",
                    headers={"inference-header-content-length": str(len(header))})


# ---------------------------------------------------------------------------------------------- the app

class OpenInference:
    def __init__(self, config: ServingConfig):
        self.config = config
        self.limits = Limits.of(config)
        self._limiter: anyio.CapacityLimiter | None = None
        self.app = Starlette(routes=[
            Route("/", self.server_metadata, methods=["GET"]),
            Route("/health/live", self.live, methods=["GET"]),
            Route("/health/ready", self.ready, methods=["GET"]),
            Route("/models/{name}", self.model_metadata, methods=["GET"]),
            Route("/models/{name}/versions/{version}", self.model_metadata, methods=["GET"]),
            Route("/models/{name}/ready", self.model_ready, methods=["GET"]),
            Route("/models/{name}/versions/{version}/ready", self.model_ready, methods=["GET"]),
            Route("/models/{name}/config", self.model_config, methods=["GET"]),
            Route("/models/{name}/versions/{version}/config", self.model_config, methods=["GET"]),
            Route("/models/{name}/infer", self.infer, methods=["POST"]),
            Route("/models/{name}/versions/{version}/infer", self.infer, methods=["POST"]),
        ], exception_handlers={RequestError: answer_error})

    def limiter(self) -> anyio.CapacityLimiter:
        """Model calls at once per process: the config's `threads`, as for the task endpoints."""
        self._limiter = self._limiter or anyio.CapacityLimiter(self.config.threads)
        return self._limiter

    async def server_metadata(self, request: Request) -> JSONResponse:
        version = ""
        if self.config.access.disclose_versions:
            import importlib.metadata

            version = importlib.metadata.version("specserve")
        return JSONResponse({"name": "specserve", "version": version,
                             "extensions": ["binary_tensor_data", "classification"]})

    async def live(self, request: Request) -> JSONResponse:
        return JSONResponse({"live": True})

    async def ready(self, request: Request) -> JSONResponse:
        ready = bool(catalog())
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    def model(self, request: Request) -> ServedModel:
        name, version = request.path_params["name"], request.path_params.get("version")
        model = catalog().get(name)
        if model is None or version not in (None, version_of(model)):
            known = ", ".join(f"{m.name} (version {version_of(m)})" for m in catalog().values())
            raise RequestError(NOT_FOUND, f"unknown model {name!r}{f' version {version!r}' if version else ''}; "
                                          f"served: {known}")
        return model

    async def model_metadata(self, request: Request) -> JSONResponse:
        model = self.model(request)
        return JSONResponse({"name": model.name, "versions": [version_of(model)], "platform": "onnxruntime_onnx",
                             "inputs": [t.describe() for t in inputs_of(model)],
                             "outputs": [t.describe() for t in outputs_of(model)]})

    async def model_config(self, request: Request) -> JSONResponse:
        return JSONResponse(triton_config(self.model(request), self.limits))

    async def model_ready(self, request: Request) -> JSONResponse:
        model = self.model(request)
        return JSONResponse({"name": model.name, "ready": True})

    async def infer(self, request: Request) -> Response:
        model = self.model(request)
        if request.headers.get("content-encoding", "identity").strip().lower() not in ("", "identity"):
            raise RequestError(UNSUPPORTED, "compressed request bodies are not supported; send it uncompressed")
        body = await read_body(request, self.config.limits.max_upload_bytes)
        header, binary = split_body(body, request.headers.get(HEADER_LENGTH))
        parsed = parse_header(header)
        feeds = decode_inputs(model, parsed, binary, self.limits)
        wanted = wanted_outputs(model, parsed)
        names = [t.name for t in outputs_of(model)]

        def run() -> list[np.ndarray]:
            return model.session.run(names, feeds)

        try:
            results, seconds = await anyio.to_thread.run_sync(cpu_timed, run, limiter=self.limiter())
            charge(seconds)
        except Exception as e:  # onnxruntime refusing an input the checks above let through
            message = str(e).splitlines()[0][:300]
            raise RequestError(UNPROCESSABLE, f"{model.name} could not run on these inputs: {message}") from None
        return encode_outputs(model, parsed, dict(zip(names, results)), wanted)


async def answer_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, RequestError)
    return error.response()


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 once it passes `limit` bytes (by Content-Length, or as it arrives)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(TOO_LARGE, f"request body larger than the limit of {limit:,} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(TOO_LARGE, f"request body larger than the limit of {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
