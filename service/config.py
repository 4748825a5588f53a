"""The serving config: which stored models answer which endpoint, and how hard the server may be pushed.

It is read once, when `service.service` is imported, because the service class must name its models at class
level for `bentoml build` to pack them. The file is $SPECSERVE_CONFIG, or `serving.yaml` beside this module.
Every problem is a ConfigError naming the file and the field, so a bad config stops `bentoml serve` with one line.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from models.errors import SpecserveError

ENV_VAR = "SPECSERVE_CONFIG"
DEFAULT_PATH = Path(__file__).with_name("serving.yaml")

Endpoint = Literal["classify", "classify_text", "segment", "forecast", "generate",
                   "predict"]  # = models.task_table.ENDPOINTS (a test)


class ConfigError(SpecserveError, ValueError):
    """The serving config cannot be read or is invalid; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelRef(_Strict):
    """One served model: `tag` is "name" (the newest stored version, resolved at start-up) or "name:version";
    `int8` serves the stored quantized graph instead of the fp32 one, `fp16` the stored fp16 graph (for GPUs: the
    CUDA provider runs it where it really works, the CPU provider elsewhere)."""

    tag: str = Field(pattern=r"^[a-z][a-z0-9_.-]{0,62}(:[A-Za-z0-9_.-]+)?$")
    int8: bool = False
    fp16: bool = False

    @model_validator(mode="after")
    def _one_graph(self) -> "ModelRef":
        if self.int8 and self.fp16:
            raise ValueError("a served model runs one graph: int8 or fp16, not both")
        return self

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"tag": value} if isinstance(value, str) else value

    @property
    def name(self) -> str:
        return self.tag.split(":")[0]


class Batching(_Strict):
    """Micro-batching of one endpoint's model calls (service/batching.py): up to `max_batch_size` images per call;
    a request arriving at an idle model waits at most `max_wait_ms` for others (0: never waits, batches then form
    only from requests that queue while the model is busy — no added latency at low load)."""

    max_batch_size: int = Field(ge=2, le=1024)
    max_wait_ms: float = Field(default=0, ge=0, le=1000)


class EndpointConfig(_Strict):
    models: list[ModelRef] = Field(min_length=1)
    default: str | None = Field(default=None, description="model for requests that name none (default: the first)")
    batching: Batching | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "EndpointConfig":
        names = [m.name for m in self.models]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"model names must be unique per endpoint (requests pick by name), repeated: {repeated}")
        if self.default is not None and self.default not in names:
            raise ValueError(f"default {self.default!r} is not one of the models {names}")
        return self

    @property
    def default_name(self) -> str:
        return self.default or self.models[0].name


class Limits(_Strict):
    """Request limits; anything beyond is refused with 4xx before any model runs."""

    max_upload_bytes: int = Field(default=16 * 2**20, ge=1024, description="request body size (413 beyond)")
    max_image_pixels: int = Field(default=40_000_000, ge=1, description="decoded width × height (413 beyond)")
    max_images: int = Field(default=32, ge=1, description="images per classify request")
    max_series_length: int = Field(default=100_000, ge=1)
    max_forecast_steps: int = Field(default=1_000, ge=1)
    max_prefix_length: int = Field(default=10_000, ge=1)
    max_generation_length: int = Field(default=2_000, ge=1)
    max_feature_rows: int = Field(default=1_024, ge=1, description="feature vectors per predict request")
    max_texts: int = Field(default=256, ge=1, description="texts per classify_text request")
    max_text_length: int = Field(default=10_000, ge=1, description="characters per text of classify_text")
    max_request_pixels: int = Field(default=80_000_000, ge=1, description="decoded width × height summed over all "
                                                                         "the images of one request (413 beyond)")


class Cors(_Strict):
    """Cross-origin requests from browsers: closed (no CORS headers at all) unless origins are listed."""

    allow_origins: list[str] = Field(default_factory=list, description='exact origins ("https://app.example"); '
                                                                       '"*" = any origin')
    allow_headers: list[str] = Field(default_factory=lambda: ["authorization", "content-type", "x-api-key",
                                                              "inference-header-content-length"])
    max_age_s: int = Field(default=600, ge=0, description="how long browsers may cache a preflight answer")

    @field_validator("allow_origins")
    @classmethod
    def _origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
                raise ValueError(f"{origin!r} is not an origin (scheme://host[:port], no path) or '*'")
        return origins


Exposure = Literal["open", "key", "off"]


class Access(_Strict):
    """Who may call the server. With no API key configured every path is open (as on a laptop); with keys, every
    request needs one (`Authorization: Bearer <key>` or `X-API-Key: <key>`, else 401) except /livez, /healthz and
    /readyz, and /metrics and the API docs when set to "open". "off" answers 404 on them."""

    api_key_sha256: list[str] = Field(default_factory=list, description="hex sha256 of each accepted key "
                                                                        "(`printf %s KEY | sha256sum`)")
    api_keys_env: str | None = Field(default="SPECSERVE_API_KEYS", description="environment variable holding "
                                     "accepted keys in plain text, comma-separated (hashed at start-up)")
    metrics: Exposure = "key"
    docs: Exposure = Field(default="key", description="/, /docs.json and the demo page")
    cors: Cors = Field(default_factory=Cors)
    disclose_versions: bool = Field(default=False, description="library versions in /models (the parity proof's) "
                                                               "and in the open inference protocol's metadata")

    @field_validator("api_key_sha256")
    @classmethod
    def _digests(cls, digests: list[str]) -> list[str]:
        for digest in digests:
            if not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise ValueError(f"{digest[:12]!r}...: not a lowercase hex sha256 digest (64 characters)")
        return digests

    def key_digests(self, environ: Mapping[str, str] | None = None) -> list[bytes]:
        """sha256 digests of every accepted key: the configured ones and those in `api_keys_env`."""
        environ = os.environ if environ is None else environ
        plain = environ.get(self.api_keys_env, "") if self.api_keys_env else ""
        keys = [k.strip() for k in plain.split(",") if k.strip()]
        return [bytes.fromhex(d) for d in self.api_key_sha256] + [hashlib.sha256(k.encode()).digest() for k in keys]


class Connections(_Strict):
    """How long a client may hold a connection without making progress; past it the connection is closed."""

    keep_alive_s: float = Field(default=5, gt=0, le=3600, description="idle between requests on one connection")
    header_timeout_s: float = Field(default=10, gt=0, le=3600, description="from connecting (or the previous "
                                    "answer) to the end of the request headers, however slowly they trickle in")
    body_timeout_s: float = Field(default=60, gt=0, le=3600, description="from the end of the headers to the end "
                                                                         "of the body")


class ServingConfig(_Strict):
    endpoints: dict[Endpoint, EndpointConfig] = Field(default_factory=dict)
    workers: int = Field(default=1, ge=1, le=64, description="server processes")
    threads: int = Field(default=1, ge=1, le=256, description="sync requests computed at once per process")
    intra_op_threads: int | Literal["auto"] = Field(
        default="auto", description="onnxruntime threads per model call; auto = cores // (workers × threads), >= 1")
    timeout_s: float = Field(default=60, gt=0)
    max_concurrency: int | None = Field(default=None, ge=1, description="requests in flight per service; 503 beyond")
    access_log: bool = Field(default=False, description="BentoML's per-request log line (~1.5 ms of event loop each)")
    tracing: bool = Field(default=False, description="OpenTelemetry spans for API requests (BentoML's tracing config "
                                                     "chooses the exporter); off, no span is even created")
    lean_routes: bool = Field(default=True, description="answer well-formed classify requests without BentoML's "
                              "per-request IO work (service/lean.py); false sends all through BentoML's route")
    inline_ms: float = Field(default=0.5, ge=0, le=100, description="a JSON API call expected to take at most this "
                             "long runs on the event loop, not in a thread (service/lean.py); 0: always a thread")
    gil_switch_ms: float = Field(default=1.0, gt=0, le=100, description="Python's switch interval in each worker: "
                                 "how long a thread may keep the GIL while another waits (Python's default: 5)")
    admission_slots: int | None = Field(default=8, ge=1, le=4096, description="requests computing at once per "
                                        "process; beyond, endpoints take turns by the time they use "
                                        "(service/admission.py); null: no queue")
    limits: Limits = Field(default_factory=Limits)
    access: Access = Field(default_factory=Access)
    connections: Connections = Field(default_factory=Connections)

    @field_validator("intra_op_threads")
    @classmethod
    def _positive(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("intra_op_threads must be >= 1 or 'auto'")
        return value

    def refs(self) -> list[ModelRef]:
        """Every distinct model reference, in config order: the models the service declares for `bentoml build`."""
        return list(dict.fromkeys(ref for endpoint in self.endpoints.values() for ref in endpoint.models))

    def ort_threads(self, cores: int | None = None) -> int:
        """onnxruntime intra-op threads per call, so that workers × threads × intra-op threads <= cores: more
        would make the calls of concurrent requests fight over the same cores."""
        if self.intra_op_threads != "auto":
            return int(self.intra_op_threads)
        cores = cores or len(os.sched_getaffinity(0))
        return max(1, cores // (self.workers * self.threads))

    def service_options(self) -> dict[str, Any]:
        """Keyword arguments of `@bentoml.service` that this config decides."""
        traffic: dict[str, Any] = {"timeout": self.timeout_s}
        if self.max_concurrency is not None:
            traffic["max_concurrency"] = self.max_concurrency
        options: dict[str, Any] = {"workers": self.workers, "threads": self.threads, "traffic": traffic,
                                   "logging": {"access": {"enabled": self.access_log}}}
        if not self.tracing:
            options["tracing"] = {"excluded_urls": ["/"]}  # a regex searched in each URL: every request
        return options


def config_path() -> Path:
    return Path(os.environ.get(ENV_VAR) or DEFAULT_PATH)


def load_config(path: str | Path | None = None) -> ServingConfig:
    """Read and validate the serving config (default: `config_path()`)."""
    path = Path(path) if path is not None else config_path()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the serving config ({e.strerror or e}); set {ENV_VAR}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    try:
        return ServingConfig.model_validate(data or {})
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "top level"
        raise ConfigError(f"{path}: {where}: {first['msg']}") from None
