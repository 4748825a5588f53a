"""Load benchmark of an endpoint at the machine's limit, driven by Debian's `hey` (or `wrk`): `classify` (the
default) against the same work in a bare Starlette app and in three peers (LitServe, Ray Serve, PyTriton);
`forecast` and `generate` against the same work in the bare Starlette app (the peers serve classify only).

    .venv/bin/python benchmarks/serve_load.py          # classify: levels 1,8,32,64,128, 10 s each, every server
    .venv/bin/python benchmarks/serve_load.py --seconds 2 --warmup 0.5 --levels 1,8 --no-write        # a smoke run
    .venv/bin/python benchmarks/serve_load.py --servers plain,specserve --client wrk
    .venv/bin/python benchmarks/serve_load.py --endpoint forecast      # specserve and plain; BENCHMARKS.md
    .venv/bin/python benchmarks/serve_load.py --endpoint generate --seconds 2 --warmup 0.5 --levels 1,8 --no-write
    .venv/bin/python benchmarks/serve_load.py --endpoint classify,forecast,generate --servers plain,specserve

Every server answers the same request with the same work and the same answer. classify: one 32×32 PNG → decode,
convert to the model's channels, bilinear resize (specserve's own code in the plain app; benchmarks/peers/common.py
repeats it for the peers, which cannot import BentoML) → the same ONNX graph in onnxruntime with the same session
settings and intra-op threads → softmax top-5 as specserve's JSON. forecast: a JSON series (40 values of
sin(0.3 i), k=3) → service.series.forecast → ForecastResult's JSON. generate: a JSON prefix ("the time ", 32
characters, temperature 0, seed 1) → service.generation.generate (33 calls of the step graph) → GenerateResult's
JSON. Every server gets the same process count (the serving config's `workers`, default that of
service/serving.yaml) and, where it batches (classify only), specserve's batching (max batch, max wait):

* `specserve`: `bentoml serve` of the service, the shipped config but for the model (classify batching included;
  forecast and generate are sync APIs, `threads` requests computed at once per process);
* `specserve-unbatched` (classify only): the same without batching;
* `plain`: benchmarks/plain_app.py, the same parse → library functions → JSON in a bare Starlette app (no batching;
  forecast and generate in a thread under a `threads` capacity limiter, as BentoML runs sync APIs);
* `litserve`, `rayserve`, `pytriton` (classify only; skipped with a note for the other endpoints):
  benchmarks/peers/*.py, run by the peers' own Python (--peers-python; set it up with
  benchmarks/peers/requirements.txt). PyTriton speaks the KServe v2 protocol: its request carries the same PNG as
  a BYTES tensor (binary tensor extension) and k as INT32; the others take the same multipart form.

The load generator is `hey` (or `wrk`, --client), one run per (server, concurrency) after an unmeasured warm-up of
the same load. Servers run one at a time (--order sequential, the default: each alone on the machine, so no
server's idle work, e.g. LitServe's polling workers, lands on another's figures; run it on a quiet machine), or
all at once taking turns at each level (--order interleaved: drifting background load then hits all alike). Per point:
requests/s of 200 answers, p50/p99 latency, errors (non-200 answers and failed connections), the server's CPU
seconds per 1,000 answers (user + system of every process in the server's session: BentoML's arbiter and workers,
Ray's raylet and actors, Triton's server and Python stubs, ...), and the client's own CPU share of the machine
(from the load generator's rusage): what the client took from the servers it measures on a shared box.

Without --model, the endpoint's model is built with its initial (untrained) weights, exported with its parity proof
and stored in a temporary BENTOML_HOME: classify's from specs/digits_cnn.yaml, forecast's from
specs/sine_forecaster.yaml, generate's from specs/char_gru_demo.yaml (the shipped config's generate model; its
vocabulary from the embedded text): load does not depend on what the weights are. --endpoint takes a comma list,
measured one after another; each endpoint writes its own BENCHMARKS.md section (classify `serve_load`, the others
`serve_load_<endpoint>`), so a run of one leaves the others' figures alone.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import aiohttp
import numpy as np
import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python benchmarks/serve_load.py` from anywhere
from benchmarks.common import write_section  # noqa: E402
from models.train.hardware import cpu_model  # noqa: E402
from service.config import DEFAULT_PATH, Batching, ServingConfig, load_config  # noqa: E402

SHIPPED = load_config(DEFAULT_PATH)  # defaults: what service/serving.yaml ships
BATCHING = SHIPPED.endpoints["classify"].batching or Batching(max_batch_size=32)
SECTION = "serve_load"  # classify's section in BENCHMARKS.md; the other endpoints' are serve_load_<endpoint>
ENDPOINTS = ("classify", "forecast", "generate")
PEERS = {"litserve": "litserve_app.py", "rayserve": "rayserve_app.py", "pytriton": "pytriton_app.py"}
PEER_READY = {"litserve": "/health", "rayserve": "/classify", "pytriton": "/v2/models/classify/ready"}
PEER_MODULE = {"litserve": "litserve", "rayserve": "ray.serve", "pytriton": "pytriton"}
ALL_SERVERS = ("plain", "specserve", *PEERS)
JSON_SERVERS = ("plain", "specserve")  # what serves forecast and generate (the peers serve classify only)
DEFAULT_PEERS_PYTHON = Path.home() / ".cache" / "specserve" / "peers" / "bin" / "python"


# ------------------------------------------------------------------------------------------------ results

@dataclass
class Level:
    """One (server, concurrency) measurement. `latencies_ms` holds raw latencies when the client gives them (the
    aiohttp client of soak.py); hey and wrk give percentiles, in `p50_ms`/`p99_ms`."""

    server: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    server_cpu_s: float = float("nan")
    client_cpu_s: float = float("nan")

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds else float("nan")

    @classmethod
    def merge(cls, parts: list["Level"]) -> "Level":
        """Slices of one point: counts and CPU add up; percentiles are the request-weighted mean of the slices'
        (exact for raw latencies)."""
        total = sum(p.requests for p in parts) or 1
        weighted = lambda name: sum(getattr(p, name) * p.requests for p in parts) / total  # noqa: E731
        return cls(parts[0].server, parts[0].concurrency, sum(p.requests for p in parts),
                   sum(p.errors for p in parts), sum(p.seconds for p in parts),
                   [ms for p in parts for ms in p.latencies_ms], weighted("p50_ms"), weighted("p99_ms"),
                   sum(p.server_cpu_s for p in parts), sum(p.client_cpu_s for p in parts))

    def percentile(self, q: float) -> float:
        if self.latencies_ms:
            return float(np.percentile(self.latencies_ms, q))
        return {50: self.p50_ms, 99: self.p99_ms}.get(q, float("nan"))

    @property
    def cpu_per_1000(self) -> float:
        return 1000 * self.server_cpu_s / self.requests if self.requests else float("nan")

    @property
    def client_share(self) -> float:
        """The load generator's CPU as a fraction of the machine's (all cores) over the run."""
        return self.client_cpu_s / (self.seconds * (os.cpu_count() or 1)) if self.seconds else float("nan")


# ------------------------------------------------------------------------------------------------ servers

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def digit_png() -> bytes:
    """A real handwritten digit (scikit-learn's digits), upscaled to 32×32, as PNG."""
    from PIL import Image
    from sklearn.datasets import load_digits

    pixels = np.rint(load_digits().images[0] * 255 / 16).astype(np.uint8)  # (8, 8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).resize((32, 32), Image.Resampling.NEAREST).save(buffer, format="PNG")
    return buffer.getvalue()


def build_model(home: Path, spec_file: str = "digits_cnn.yaml") -> str:
    """Store specs/<spec_file> (an image model) with initial weights in `home`; returns the tag."""
    import torch

    from models.artifact.card import ImageInput, ModelCard
    from models.artifact.store import save_to_store
    from models.build import build
    from models.export.onnx_graph import export_net
    from models.export.parity import check_parity
    from models.spec.load import load_spec

    spec = load_spec(ROOT / "specs" / spec_file)
    net = build(spec, seed=0).eval()
    inp = spec.input
    card = ModelCard(name=spec.name, spec_hash=spec.spec_hash(), task=spec.task, labels=spec.labels,
                     input=ImageInput(channels=inp.channels, size=inp.size, mean=inp.mean, std=inp.std))
    pixels = torch.randint(0, 256, (256, *inp.size, inp.channels), dtype=torch.uint8).numpy()  # (N, H, W, C)
    result = export_net(net, card, home / "export", example_inputs=pixels[:4])
    return save_to_store(spec.name, {"model.onnx": result.path}, result.card, check_parity(result.path, net, pixels))


def forecast_tag(home: Path) -> str:
    """Store specs/sine_forecaster.yaml with initial weights in `home`; returns the tag."""
    from models.pipeline import export_spec, store_export
    from models.spec.load import load_spec

    return store_export(export_spec(load_spec(ROOT / "specs" / "sine_forecaster.yaml"), "init", out=home / "sine",
                                    quiet=True))


def generate_tag(home: Path, spec_file: str = "char_gru_demo.yaml") -> str:
    """Store specs/<spec_file> (a character model) with initial weights in `home`; returns the tag. export_spec
    refuses token models (their vocabulary comes from the training text), so this reads the spec's text for the
    vocabulary and parity windows, as exporting a run does, and exports the untrained net (no int8)."""
    import torch

    from models.build import build
    from models.pipeline import _export_and_prove, make_card, store_export
    from models.spec.load import load_spec
    from models.train.data_source import open_dataset
    from models.train.tasks import make_task

    spec = load_spec(ROOT / "specs" / spec_file)
    task = make_task(spec, open_dataset(spec, None, spec.train.seed, quiet=True), torch.device("cpu"))
    real = task.parity_inputs(256)  # (256, T) token windows and their next tokens
    return store_export(_export_and_prove(spec, build(spec, seed=0), make_card(spec, task.info, {}), home / "chars",
                                          real["inputs"], real["labels"], "none", quiet=True))


class Server:
    """Server processes (each in its own process group and session, stopped group and all) answering on one port;
    `ready_path` answers 200 once it serves."""

    def __init__(self, name: str, commands: list[list[str]], env: dict[str, str], port: int, log: Path,
                 pass_fds: tuple[int, ...] = (), ready_path: str = "/readyz"):
        self.name, self.port, self.ready_path = name, port, ready_path
        self.log = log.open("wb")
        self.log_path = log
        self.processes = [subprocess.Popen(command, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                           start_new_session=True, pass_fds=pass_fds) for command in commands]

    async def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if any(p.poll() is not None for p in self.processes):
                    raise RuntimeError(f"{self.name} exited; see {self.log_path}")
                try:
                    async with http.get(f"http://127.0.0.1:{self.port}{self.ready_path}") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.5)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s; see {self.log_path}")

    def members(self) -> list[psutil.Process]:
        """Every live process of the server: its processes, their descendants, and whatever else runs in their
        sessions or their descendants' (Ray and Triton start helpers that outlive their parents; circus starts
        BentoML's workers in sessions of their own)."""
        found: dict[int, psutil.Process] = {}
        for process in self.processes:
            with _quiet():
                root = psutil.Process(process.pid)
                for member in [root, *root.children(recursive=True)]:
                    found[member.pid] = member
        sessions = set()
        for pid in list(found):
            with _quiet():
                sessions.add(os.getsid(pid))
        for process in psutil.process_iter():
            try:
                if process.pid not in found and os.getsid(process.pid) in sessions:
                    found[process.pid] = process
            except (ProcessLookupError, PermissionError, psutil.Error):
                continue
        return list(found.values())

    def cpu_seconds(self) -> float:
        total = 0.0
        for member in self.members():
            try:
                times = member.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                continue
        return total

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                with _quiet():
                    os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with _quiet():
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for member in self.members():  # helpers left in the sessions
            with _quiet():
                member.kill()
        self.log.close()


class _quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, value, tb) -> bool:  # type: ignore[no-untyped-def]
        return kind is not None and issubclass(kind, (ProcessLookupError, psutil.Error))


def listening_socket() -> socket.socket:
    """A loopback listening socket for the plain app's processes to share, as BentoML's arbiter makes one."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serving_config(tag: str, workers: int, threads: int, batching: dict | None, endpoint: str = "classify") -> dict:
    """A serving config that serves `tag` on `endpoint` only (batched as `batching` says, when given)."""
    served: dict = {"models": [tag]}
    if batching:
        served["batching"] = batching
    return {"endpoints": {endpoint: served}, "workers": workers, "threads": threads}


# ------------------------------------------------------------------------------------------------ requests

@dataclass(frozen=True)
class Body:
    """One request, as the load generator sends it over and over."""

    path: str
    content_type: str
    data: bytes
    headers: tuple[tuple[str, str], ...] = ()


def multipart(png: bytes, k: int = 5) -> Body:
    boundary = "specservebench7d1f"
    data = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"image.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + png + (
        f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"k\"\r\n\r\n{k}\r\n--{boundary}--\r\n").encode()
    return Body("/classify", f"multipart/form-data; boundary={boundary}", data)


def json_body(path: str, payload: dict) -> Body:
    return Body(path, "application/json", json.dumps(payload).encode())


FORECAST_REQUEST = {"values": [math.sin(0.3 * i) for i in range(40)], "k": 3}
GENERATE_REQUEST = {"prefix": "the time ", "length": 32, "temperature": 0, "seed": 1}


def kserve_bytes(png: bytes, k: int = 5) -> Body:
    """The same PNG and k as a KServe v2 request with the binary tensor extension (for PyTriton)."""
    header = json.dumps({"inputs": [
        {"name": "image", "shape": [1, 1], "datatype": "BYTES", "parameters": {"binary_data_size": 4 + len(png)}},
        {"name": "k", "shape": [1, 1], "datatype": "INT32", "data": [k]}],
        "outputs": [{"name": "result", "parameters": {"binary_data": False}}]}).encode()
    return Body("/v2/models/classify/infer", "application/octet-stream",
                header + len(png).to_bytes(4, "little") + png, (("Inference-Header-Content-Length", str(len(header))),))


def classify_bodies() -> dict[str, Body]:
    """classify's request per server: the PNG and k=5 as a multipart form, or as a KServe v2 request (PyTriton)."""
    png = digit_png()
    bodies = {name: kserve_bytes(png) if name == "pytriton" else multipart(png) for name in ALL_SERVERS}
    bodies["specserve-unbatched"] = bodies["specserve"]
    return bodies


@dataclass(frozen=True)
class Workload:
    """One endpoint's benchmark: the servers that serve it, its throwaway model, its request per server."""

    endpoint: str
    spec: str  # what the throwaway model is built from
    build: Callable[[Path], str]  # stores that model in the given home; returns its tag
    request: str  # one request and its work, as the report says
    bodies: Callable[[], dict[str, Body]]  # server name → its request

    @property
    def section(self) -> str:
        """Its BENCHMARKS.md section: one per endpoint, so a run of one leaves the others' figures alone."""
        return SECTION if self.endpoint == "classify" else f"{SECTION}_{self.endpoint}"

    @property
    def servers(self) -> tuple[str, ...]:
        """What serves the endpoint (and what a run measures unless told otherwise)."""
        return ALL_SERVERS if self.endpoint == "classify" else JSON_SERVERS


WORKLOADS = {
    "classify": Workload("classify", "specs/digits_cnn.yaml", build_model,
                         "one 32×32 PNG per request, k=5, same decode, graph, session settings and answer everywhere",
                         classify_bodies),
    "forecast": Workload("forecast", "specs/sine_forecaster.yaml", forecast_tag,
                         "one JSON series per request (40 values of sin(0.3 i), k=3: 3 calls of the window graph, each "
                         "fed the previous predictions), the same service.series.forecast, session settings and "
                         "answer (ForecastResult) in both",
                         lambda: dict.fromkeys(JSON_SERVERS, json_body("/forecast", FORECAST_REQUEST))),
    "generate": Workload("generate", "specs/char_gru_demo.yaml", generate_tag,
                         "one JSON request per call (prefix \"the time \", 32 characters, temperature 0, seed 1: 33 "
                         "calls of the GRU's step graph, the state carried over), the same "
                         "service.generation.generate, session settings and answer (GenerateResult) in both",
                         lambda: dict.fromkeys(JSON_SERVERS, json_body("/generate", GENERATE_REQUEST))),
}


# ------------------------------------------------------------------------------------------------ load generators

def _seconds(value: str, unit: str) -> float:
    return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "secs": 1.0}[unit]


def parse_hey(text: str) -> tuple[int, int, float, float]:
    """(200 answers, errors, p50 ms, p99 ms) from hey's summary."""
    statuses = {int(code): int(n) for code, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", text)}
    failed = sum(int(n) for n in re.findall(r"^\s+\[(\d+)\]\s+(?!\d+ responses)", text, flags=re.M))
    percentiles = {int(q): float(s) * 1000 for q, s in re.findall(r"(\d+)%+ in ([0-9.]+) secs", text)}
    ok = statuses.get(200, 0)
    return ok, sum(statuses.values()) - ok + failed, percentiles.get(50, float("nan")), percentiles.get(99,
                                                                                                     float("nan"))


def parse_wrk(text: str) -> tuple[int, int, float, float]:
    """(200 answers, errors, p50 ms, p99 ms) from `wrk --latency`."""
    requests = int(re.search(r"(\d+) requests in", text)[1])  # type: ignore[index]
    non_2xx = int(m[1]) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", text)) else 0
    sockets = sum(int(n) for n in m.groups()) if (m := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)) else 0
    lat = {int(q): _seconds(v, u) * 1000 for q, v, u in re.findall(r"^\s+(\d+)%\s+([0-9.]+)(us|ms|s|m)\s*$", text,
                                                                   flags=re.M)}
    return requests - non_2xx, non_2xx + sockets, lat.get(50, float("nan")), lat.get(99, float("nan"))


WRK_SCRIPT = """
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = os.getenv("BENCH_TYPE")
local extra = os.getenv("BENCH_HEADER")
if extra and extra ~= "" then
  local name, value = extra:match("^([^:]+):%s*(.*)$")
  wrk.headers[name] = value
end
"""


def client_command(client: str, url: str, body: Body, body_file: Path, concurrency: int, seconds: float,
                   work: Path) -> tuple[list[str], dict[str, str]]:
    if client == "hey":
        command = ["hey", "-z", f"{seconds:g}s", "-c", str(concurrency), "-m", "POST", "-T", body.content_type,
                   "-D", str(body_file), "-t", "60", "-disable-compression"]
        for name, value in body.headers:
            command += ["-H", f"{name}: {value}"]
        return [*command, url], {}
    script = work / "wrk.lua"
    script.write_text(WRK_SCRIPT)
    threads = max(1, min(2, concurrency))
    env = {"BENCH_BODY": str(body_file), "BENCH_TYPE": body.content_type,
           "BENCH_HEADER": ", ".join(f"{n}: {v}" for n, v in body.headers)}
    return ["wrk", "-t", str(threads), "-c", str(concurrency), "-d", f"{max(1, round(seconds))}s", "--latency",
            "--timeout", "60s", "-s", str(script), url], env


def run_measured(command: list[str], env: dict[str, str], log: Path) -> tuple[int, str, float, float]:
    """(exit status, output, wall seconds, the command's CPU seconds from its own rusage)."""
    began = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env})
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, log.read_text(), time.perf_counter() - began, usage.ru_utime + usage.ru_stime


def run_client(command: list[str], env: dict[str, str], log: Path) -> tuple[str, float, float]:
    """(output, wall seconds, the client's CPU seconds from its own rusage)."""
    returncode, text, wall, cpu = run_measured(command, env, log)
    if returncode != 0:
        raise RuntimeError(f"{command[0]} failed ({returncode}): {text[-1000:]}")
    return text, wall, cpu


def measure(server: Server, body: Body, body_file: Path, client: str, concurrency: int, seconds: float,
            warmup: float, work: Path) -> Level:
    url = f"http://127.0.0.1:{server.port}{body.path}"
    if warmup > 0:
        command, env = client_command(client, url, body, body_file, concurrency, warmup, work)
        run_client(command, env, work / "warmup.txt")
    command, env = client_command(client, url, body, body_file, concurrency, seconds, work)
    cpu_before = server.cpu_seconds()
    text, wall, client_cpu = run_client(command, env, work / f"{server.name}-{concurrency}.txt")
    server_cpu = server.cpu_seconds() - cpu_before
    ok, errors, p50, p99 = (parse_hey if client == "hey" else parse_wrk)(text)
    return Level(server.name, concurrency, ok, errors, wall, p50_ms=p50, p99_ms=p99, server_cpu_s=server_cpu,
                 client_cpu_s=client_cpu)


async def load(server: Server, concurrency: int, seconds: float, warmup: float, png: bytes, path: str = "/classify",
               field: str = "images", values: dict[str, str] | None = None) -> Level:
    """An async aiohttp client (used by benchmarks/soak.py): `concurrency` clients posting `png` (as file `field`,
    with `values`; default k=5) to `path` back to back; counts only what completes after `warmup`."""
    url = f"http://127.0.0.1:{server.port}{path}"
    values = {"k": "5"} if values is None else values
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + seconds

    async def one_client(http: aiohttp.ClientSession) -> None:
        nonlocal errors
        while (sent := time.perf_counter()) < stop_at:
            form = aiohttp.FormData()
            form.add_field(field, png, filename="image.png", content_type="image/png")
            for name, value in values.items():
                form.add_field(name, value)
            try:
                async with http.post(url, data=form) as response:
                    await response.read()
                    ok = response.status == 200
            except aiohttp.ClientError:
                ok = False
            done = time.perf_counter()
            if sent >= measure_from and done <= stop_at:
                if ok:
                    latencies.append(1000 * (done - sent))
                else:
                    errors += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as http:
        await asyncio.gather(*(one_client(http) for _ in range(concurrency)))
    return Level(server.name, concurrency, len(latencies), errors, seconds, latencies)


# ------------------------------------------------------------------------------------------------ report

def machine() -> str:
    return f"{os.cpu_count()} cores (nproc {len(os.sched_getaffinity(0))}), {cpu_model()}"


def table(levels: list[Level], baseline: str) -> str:
    base = {lv.concurrency: lv.throughput for lv in levels if lv.server == baseline}
    rows = ["| server | clients | req/s | vs plain | p50 ms | p99 ms | errors | server CPU s / 1k req | client CPU |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for lv in sorted(levels, key=lambda lv: (lv.concurrency, ALL_SERVERS.index(lv.server)
                                                if lv.server in ALL_SERVERS else 99)):
        ratio = lv.throughput / base[lv.concurrency] if base.get(lv.concurrency) else float("nan")
        rows.append(f"| {lv.server} | {lv.concurrency} | {lv.throughput:.0f} | {ratio:.2f} | {lv.percentile(50):.1f} "
                    f"| {lv.percentile(99):.1f} | {lv.errors} | {lv.cpu_per_1000:.2f} | {100 * lv.client_share:.0f} % |")
    return "\n".join(rows)


def plot_latency(levels: list[Level], path: Path, endpoint: str = "classify") -> None:
    """p50 (solid) and p99 (dashed) latency and throughput against concurrency, one colour per server."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lat, thr) = plt.subplots(1, 2, figsize=(10, 4))
    for name in dict.fromkeys(lv.server for lv in levels):
        mine = sorted((lv for lv in levels if lv.server == name), key=lambda lv: lv.concurrency)
        xs = [lv.concurrency for lv in mine]
        line, = lat.plot(xs, [lv.percentile(50) for lv in mine], marker="o", label=f"{name} p50")
        lat.plot(xs, [lv.percentile(99) for lv in mine], linestyle="--", color=line.get_color(), label=f"{name} p99")
        thr.plot(xs, [lv.throughput for lv in mine], marker="o", color=line.get_color(), label=name)
    lat.set(xlabel="concurrent clients", ylabel="latency (ms)", xscale="log", yscale="log", title=f"{endpoint} latency")
    thr.set(xlabel="concurrent clients", ylabel="requests/s", xscale="log", title=f"{endpoint} throughput")
    for ax in (lat, thr):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ main

def peer_available(python: Path, peer: str) -> str | None:
    """None when `python` can import the peer's framework, else why not."""
    if not python.is_file():
        return f"no peers Python at {python} (see benchmarks/peers/requirements.txt)"
    check = subprocess.run([str(python), "-c", f"import {PEER_MODULE[peer]}"], capture_output=True, text=True)
    return None if check.returncode == 0 else f"{PEER_MODULE[peer]} does not import: {check.stderr.strip()[-200:]}"


def peer_env(python: Path) -> dict[str, str]:
    """The peers' environment: PyTriton's Python stub must load the libpython of the interpreter whose standard
    library it uses (Debian's libpython3.11 is 3.11.2; a newer 3.11 stdlib fails in it), hence its LIBDIR first."""
    libdir = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
                            capture_output=True, text=True).stdout.strip()
    paths = [p for p in (libdir, os.environ.get("LD_LIBRARY_PATH", "")) if p]
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")} | {
        "LD_LIBRARY_PATH": os.pathsep.join(paths), "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


def card_file(tag: str, config: ServingConfig, work: Path) -> Path:
    from models.artifact.store import load_from_store

    stored = load_from_store(tag)
    card = stored.card
    path = work / "card.json"
    path.write_text(json.dumps({"onnx": str(stored.onnx_path), "tag": stored.tag, "channels": card.input.channels,
                                "size": list(card.input.size), "labels": card.labels,
                                "intra_op_threads": config.ort_threads(),
                                "max_image_pixels": config.limits.max_image_pixels}))
    return path


async def start_servers(names: list[str], workload: Workload, tag: str, args: argparse.Namespace, work: Path,
                        env: dict[str, str], servers: list[Server]) -> list[str]:
    """Start each server of `workload` serving `tag` and wait until it is ready before starting the next (start-ups
    competing for 2 cores time out: PyTriton's proxy allows its handshake 1 s); a peer that fails to start is tried
    once more, then skipped. Appends to `servers` as they come up; returns the notes on skipped peers."""
    endpoint = workload.endpoint
    batched = {"max_batch_size": args.max_batch, "max_wait_ms": args.max_wait_ms} if endpoint == "classify" else None
    skipped: list[str] = []
    config = lambda batching: serving_config(tag, args.workers, args.threads, batching, endpoint)  # noqa: E731
    for name in names:
        if name == "plain":
            plain_config = work / "plain.yaml"
            plain_config.write_text(yaml.safe_dump(config(None)))
            sock = listening_socket()
            command = [sys.executable, "-m", "benchmarks.plain_app", "--fd", str(sock.fileno())]
            servers.append(Server("plain", [command] * args.workers, {**env, "SPECSERVE_CONFIG": str(plain_config)},
                                  sock.getsockname()[1], work / "plain.log", pass_fds=(sock.fileno(),)))
            sock.close()  # the processes hold it now
            await servers[-1].wait_ready()
        elif name in ("specserve", "specserve-unbatched"):
            servers.append(specserve_server(name, config(batched if name == "specserve" else None), work, env))
            await servers[-1].wait_ready()
        else:
            if why := peer_available(args.peers_python, name):
                skipped.append(f"{name}: {why}")
                continue
            card = card_file(tag, ServingConfig.model_validate(config(batched)), work)
            options = ["--card", str(card), "--workers", str(args.workers), "--max-batch", str(args.max_batch),
                       "--max-wait-ms", str(args.max_wait_ms)]
            server, why = await start_peer(name, PEERS[name], options, args.peers_python, work, PEER_READY[name])
            if server is None:
                skipped.append(f"{name}: {why}")
            else:
                servers.append(server)
    return skipped


def specserve_server(name: str, config: dict, work: Path, env: dict[str, str], ready_path: str = "/readyz") -> Server:
    """`bentoml serve` of the service under `config` (a serving config, written to work/NAME.yaml) on a free port
    (not yet ready: await its wait_ready)."""
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    bentoml_bin = str(Path(sys.executable).with_name("bentoml"))
    return Server(name, [[bentoml_bin, "serve", "service.service:SpecServe", "--host", "127.0.0.1", "--port",
                          str(port)]], {**env, "SPECSERVE_CONFIG": str(path)}, port, work / f"{name}.log",
                  ready_path=ready_path)


async def start_peer(name: str, app: str, options: list[str], python: Path, work: Path,
                     ready_path: str) -> tuple[Server | None, str | None]:
    """benchmarks/peers/APP run by the peers' `python` with `options` and a free --port, until `ready_path` answers;
    tried once more if it does not start. (the ready server, None), or (None, why not)."""
    why = None
    for attempt in (1, 2):
        port = free_port()
        command = [str(python), str(ROOT / "benchmarks" / "peers" / app), *options, "--port", str(port)]
        server = Server(name, [command], peer_env(python), port, work / f"{name}-{attempt}.log",
                        ready_path=ready_path)
        try:
            await server.wait_ready()
        except RuntimeError as e:
            server.stop()
            print(f"{name} did not start (attempt {attempt}): {e}", flush=True)
            why = f"did not start twice ({e})"
            continue
        return server, None
    return None, why


def servers_for(workload: Workload, asked: list[str] | None) -> tuple[list[str], list[str]]:
    """(the servers to measure on the workload's endpoint, notes on those asked for that do not serve it). Not
    asked: every server of the endpoint."""
    if asked is None:
        return list(workload.servers), []
    serves = (*workload.servers, "specserve-unbatched") if workload.endpoint == "classify" else workload.servers
    why = {name: "serves classify only" if name in PEERS else "is specserve off classify (only classify batches)"
           for name in asked if name not in serves}
    return [name for name in asked if name not in why], [f"{name}: {reason}" for name, reason in why.items()]


async def measure_endpoint(workload: Workload, args: argparse.Namespace, work: Path,
                           env: dict[str, str]) -> tuple[str, list[Level]]:
    """Every level on every server of one endpoint; returns its report (markdown) and its points."""
    load_at_start = os.getloadavg()[0]
    work.mkdir(parents=True, exist_ok=True)
    names, skipped = servers_for(workload, args.servers)
    print(f"== {workload.endpoint}: {', '.join(names) or 'no server'}"
          f"{'' if workload.endpoint == 'classify' else ' (the peers serve classify only)'}", flush=True)
    for note in skipped:
        print(f"skipping {note}", flush=True)
    tag = args.model or workload.build(work)
    bodies = workload.bodies()
    servers: list[Server] = []
    levels: list[Level] = []
    idle: dict[str, float] = {}
    try:
        # sequential: one server up at a time, all levels, then the next (no server's idle work — LitServe's
        # workers poll their queues — lands on another's measurement); interleaved: all up, turns per level
        groups = [[name] for name in names] if args.order == "sequential" else [names]
        for group in groups:
            first = len(servers)
            skipped += await start_servers(group, workload, tag, args, work, env, servers)
            running = servers[first:]
            for server in running:  # what each costs doing nothing
                before = server.cpu_seconds()
                time.sleep(2)
                idle[server.name] = (server.cpu_seconds() - before) / 2
            for concurrency in args.levels:
                for server in running:
                    body = bodies[server.name]
                    body_file = work / f"{server.name}.body"
                    body_file.write_bytes(body.data)
                    level = measure(server, body, body_file, args.client, concurrency, args.seconds, args.warmup,
                                    work)
                    print(f"{server.name:>20} c={concurrency:<4} {level.throughput:7.0f} req/s  p50 "
                          f"{level.percentile(50):7.1f} ms  p99 {level.percentile(99):7.1f} ms  errors "
                          f"{level.errors:<5} server CPU {level.cpu_per_1000:5.2f} s/1k req  client CPU "
                          f"{100 * level.client_share:3.0f} %", flush=True)
                    levels.append(level)
            if args.order == "sequential":
                for server in running:
                    server.stop()
        for note in skipped:
            print(f"skipped {note}", flush=True)
    finally:
        for server in servers:
            if any(p.poll() is None for p in server.processes):
                server.stop()
    idle_note = ", ".join(f"{name} {100 * share:.0f} %" for name, share in idle.items())
    endpoint, built = workload.endpoint, args.model is None
    if endpoint == "classify":
        title = "`classify` under load — specserve, the same work in plain Starlette, and peers"
        servers_note = (f"specserve and the peers batch up to {args.max_batch} requests (max wait "
                        f"{args.max_wait_ms:g} ms); plain does not batch.")
    else:
        title = f"`{endpoint}` under load — specserve and the same work in plain Starlette"
        servers_note = (f"both compute at most {args.threads} request(s) at once per process, in a thread (BentoML's "
                        "sync API; the plain app's capacity limiter); nothing batches. The peers (LitServe, Ray "
                        "Serve, PyTriton) serve classify only: not measured here.")
    return "\n".join([
        f"## {workload.section}: {title}", "",
        f"`{' '.join(['.venv/bin/python', 'benchmarks/serve_load.py', *sys.argv[1:]])}` — "
        f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, {machine()}, load generator `{args.client}`.", "",
        f"Model `{tag}`{f' ({workload.spec}, initial weights)' if built else ''}, {workload.request}. Every server: "
        f"{args.workers} process(es)/replica(s)/instance(s); {servers_note} {args.seconds:g} s measured per point "
        f"after {args.warmup:g} s unmeasured; servers measured {'one at a time (each alone on the machine, all levels)' if args.order == 'sequential' else 'all up at once, taking turns at each level'}. `vs plain` = throughput / plain's at the same concurrency; errors = non-200 "
        f"answers and failed connections; server CPU = user + system seconds of all the server's processes per "
        f"1,000 answers; client CPU = the load generator's share of the machine's {os.cpu_count()} cores (taken from "
        f"the servers on this box). Idle CPU, 2 s before the first point: {idle_note or 'n/a'}. Load average "
        f"{load_at_start:.2f} at the start, {os.getloadavg()[0]:.2f} at the end: other jobs shared the machine, so "
        f"compare rows of one run, not runs." + (f" Skipped: {'; '.join(skipped)}." if skipped else ""), "",
        table(levels, "plain")]), levels


@contextlib.contextmanager
def scratch(prefix: str, model: str | None, kept: str = "server logs and configs") -> Iterator[tuple[Path, dict]]:
    """(a temporary work folder, the servers' environment): a throwaway BENTOML_HOME in the folder unless a stored
    `model` is served. The folder is removed on success, kept (and said so) on failure."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BENTOML_DO_NOT_TRACK": "True"}
    if model is None:
        env["BENTOML_HOME"] = os.environ["BENTOML_HOME"] = str(work / "bentoml")
    try:
        yield work, env
    except BaseException:
        print(f"{kept} kept in {work}", file=sys.stderr)
        raise
    shutil.rmtree(work, ignore_errors=True)  # reached only on success


async def main(args: argparse.Namespace) -> None:
    if shutil.which(args.client) is None:
        sys.exit(f"`{args.client}` is not installed: apt-get install {args.client}")
    with scratch("serve_load-", args.model) as (work, env):
        for endpoint in args.endpoints:
            workload = WORKLOADS[endpoint]
            text, levels = await measure_endpoint(workload, args, work / endpoint, env)
            print("\n" + text + "\n")
            if not args.no_write:
                figure = f"serve_latency{'' if endpoint == 'classify' else '_' + endpoint}.png"
                plot_latency(levels, ROOT / "benchmarks" / "figures" / figure, endpoint)
                text += f"\n\n![latency and throughput vs concurrency](benchmarks/figures/{figure})"
                write_section(workload.section, text)
                print(f"written to BENCHMARKS.md ({workload.section})\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--endpoint", dest="endpoints", type=lambda s: s.split(","), default=["classify"],
                   help=f"comma-separated, of {', '.join(ENDPOINTS)} (measured one after another; default classify)")
    p.add_argument("--model", help="stored model tag to serve, with one endpoint (default: build a throwaway one)")
    p.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32, 64, 128])
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds per point")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds of the same load before each point")
    p.add_argument("--servers", type=lambda s: s.split(","), default=None,
                   help=f"comma-separated, of {', '.join(ALL_SERVERS)}, specserve-unbatched (default: all that "
                        f"serve the endpoint: every one for classify, {' and '.join(JSON_SERVERS)} for the others)")
    p.add_argument("--client", choices=["hey", "wrk"], default="hey", help="load generator (Debian packages)")
    p.add_argument("--order", choices=["sequential", "interleaved"], default="sequential",
                   help="one server up at a time (default), or all up and taking turns at each level")
    p.add_argument("--peers-python", type=Path, default=DEFAULT_PEERS_PYTHON,
                   help="the Python of the peers' virtual environment")
    p.add_argument("--workers", type=int, default=SHIPPED.workers)
    p.add_argument("--threads", type=int, default=SHIPPED.threads)
    p.add_argument("--max-batch", type=int, default=BATCHING.max_batch_size)
    p.add_argument("--max-wait-ms", type=float, default=BATCHING.max_wait_ms)
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = p.parse_args(argv)
    if unknown := set(args.servers or ()) - {*ALL_SERVERS, "specserve-unbatched"}:
        p.error(f"unknown server(s) {sorted(unknown)}")
    if unknown := set(args.endpoints) - set(ENDPOINTS):
        p.error(f"unknown endpoint(s) {sorted(unknown)}; choose from {', '.join(ENDPOINTS)}")
    args.endpoints = list(dict.fromkeys(args.endpoints))
    if args.model is not None and len(args.endpoints) > 1:
        p.error("--model serves one endpoint: give one --endpoint with it")
    return args


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
