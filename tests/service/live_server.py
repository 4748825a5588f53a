"""A real `bentoml serve` of the service for the tests: config, start on a free port, wait for /readyz, stop."""
from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import psutil
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
BENTOML = Path(sys.executable).with_name("bentoml")

LIMITS = {"max_upload_bytes": 400_000, "max_image_pixels": 1_000_000, "max_images": 4, "max_series_length": 1_000,
          "max_forecast_steps": 50, "max_prefix_length": 200, "max_generation_length": 300}


@dataclass(frozen=True)
class Server:
    url: str
    tags: dict[str, str]  # model name → stored tag
    log: Path
    pid: int  # of `bentoml serve` (BentoML's arbiter, which starts the worker processes)


def serving_config(tags: dict[str, str], overrides: dict | None = None) -> dict:
    """Two classifiers (the MLP served from its int8 graph, picked by name), one model on each other endpoint;
    `overrides` replaces top-level keys (e.g. workers, limits)."""
    return {"endpoints": {
        "classify": {"models": ["test-digits", {"tag": "test-digits-mlp", "int8": True}], "default": "test-digits",
                     "batching": {"max_batch_size": 8, "max_wait_ms": 1}},
        "segment": {"models": ["test-shapes"]},
        "forecast": {"models": [tags["sine-forecaster"]]},  # "name:version" pins a version
        "generate": {"models": ["test-chars"]}},
        "workers": 1, "threads": 2, "limits": LIMITS, **(overrides or {})}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(home: Path, tags: dict[str, str], workdir: Path, timeout: float = 120,
          overrides: dict | None = None, python_path: tuple[Path, ...] = (),
          extra_env: dict[str, str] | None = None) -> Iterator[Server]:
    """`bentoml serve service.service:SpecServe` on a free loopback port until /readyz answers 200; the whole
    process group is stopped on exit, whatever happened. `python_path` folders come before the project's; `extra_env`
    adds environment variables for the server."""
    config = workdir / "serving.yaml"
    config.write_text(yaml.safe_dump(serving_config(tags, overrides)))
    port, log = free_port(), workdir / "server.log"
    env = {**os.environ, "BENTOML_HOME": str(home), "SPECSERVE_CONFIG": str(config), "PYTHONPATH": os.pathsep.join(map(str, (*python_path, ROOT))),
           "BENTOML_DO_NOT_TRACK": "True", **(extra_env or {})}
    with log.open("wb") as out:
        process = subprocess.Popen([str(BENTOML), "serve", "service.service:SpecServe", "--host", "127.0.0.1",
                                    "--port", str(port)], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(process, url, log, timeout, "bentoml serve")
        yield Server(url, tags, log, process.pid)
    finally:
        stop_group(process)


def wait_ready(process: subprocess.Popen, url: str, log: Path, timeout: float, what: str) -> None:
    """Until `url`/readyz answers 200; RuntimeError with the log's tail if the server exits or takes too long."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"not ready after {timeout:.0f} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.3)


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM the server's whole process group (arbiter and workers), SIGKILL it if it lingers."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def worker_pids(server: Server) -> list[int]:
    """The live worker processes of `server`: children of its arbiter running BentoML's worker module."""
    pids = []
    for child in psutil.Process(server.pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "_bentoml_impl.worker.service" in child.cmdline():
                pids.append(child.pid)
        except psutil.NoSuchProcess:  # exited while being looked at
            continue
    return sorted(pids)


def gradient_png() -> bytes:
    """An 8×8 grayscale PNG, for the normal classify requests of tests that are about something else."""
    buffer = io.BytesIO()
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4).save(buffer, format="PNG")
    return buffer.getvalue()
