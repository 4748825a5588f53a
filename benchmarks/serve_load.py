"""Load benchmark of `classify`: the BentoML service against a bare Starlette app doing identical work.

    .venv/bin/python benchmarks/serve_load.py                 # throwaway model, 10 s per level, writes BENCHMARKS.md
    .venv/bin/python benchmarks/serve_load.py --model digits-cnn --seconds 5 --no-write

Both servers run on loopback with the same serving config (workers, threads, onnxruntime threads: by default those
of service/serving.yaml) and the same model; the Starlette app (benchmarks/plain_app.py) runs the service's own decode → session → JSON code, so the
ratio measures the framework. Each concurrency level is measured in short slices that visit every server in turn
(so a change in background load hits all of them alike), with an async aiohttp client holding `concurrency`
connections, each sending one multipart PNG after another. The client shares the machine's cores with the
servers, as it must in any loopback measurement on a 2-core box.

Without --model, a model is built from specs/digits_cnn.yaml with its initial (untrained) weights, exported with
its parity proof and stored in a temporary BENTOML_HOME: load does not depend on what the weights are.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import aiohttp
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python benchmarks/serve_load.py` from anywhere
from benchmarks.common import write_section  # noqa: E402
from models.train.hardware import cpu_model  # noqa: E402
from service.config import DEFAULT_PATH, Batching, load_config  # noqa: E402

SHIPPED = load_config(DEFAULT_PATH)  # defaults: what service/serving.yaml ships
BATCHING = SHIPPED.endpoints["classify"].batching or Batching(max_batch_size=32)
SECTION = "serve_load"  # in BENCHMARKS.md


@dataclass
class Level:
    server: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds

    @classmethod
    def merge(cls, parts: list["Level"]) -> "Level":
        return cls(parts[0].server, parts[0].concurrency, sum(p.requests for p in parts), sum(p.errors for p in parts),
                   sum(p.seconds for p in parts), [ms for p in parts for ms in p.latencies_ms])

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


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

    from models.build import build
    from models.artifact.card import ImageInput, ModelCard
    from models.export.onnx_graph import export_net
    from models.export.parity import check_parity
    from models.spec.load import load_spec
    from models.artifact.store import save_to_store

    spec = load_spec(ROOT / "specs" / spec_file)
    net = build(spec, seed=0).eval()
    inp = spec.input
    card = ModelCard(name=spec.name, spec_hash=spec.spec_hash(), task=spec.task, labels=spec.labels,
                     input=ImageInput(channels=inp.channels, size=inp.size, mean=inp.mean, std=inp.std))
    pixels = torch.randint(0, 256, (256, *inp.size, inp.channels), dtype=torch.uint8).numpy()  # (N, H, W, C)
    result = export_net(net, card, home / "export", example_inputs=pixels[:4])
    return save_to_store(spec.name, {"model.onnx": result.path}, result.card, check_parity(result.path, net, pixels))


class Server:
    """Server processes (each in its own process group, stopped group and all) answering on one port."""

    def __init__(self, name: str, commands: list[list[str]], env: dict[str, str], port: int, log: Path,
                 pass_fds: tuple[int, ...] = ()):
        self.name, self.port = name, port
        self.log = log.open("wb")
        self.processes = [subprocess.Popen(command, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                           start_new_session=True, pass_fds=pass_fds) for command in commands]

    async def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if any(p.poll() is not None for p in self.processes):
                    raise RuntimeError(f"{self.name} exited; see {self.log.name}")
                try:
                    async with http.get(f"http://127.0.0.1:{self.port}/readyz") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.3)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s; see {self.log.name}")

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.log.close()


def listening_socket() -> socket.socket:
    """A loopback listening socket for the plain app's processes to share, as BentoML's arbiter makes one."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


async def load(server: Server, concurrency: int, seconds: float, warmup: float, png: bytes, path: str = "/classify",
               field: str = "images", values: dict[str, str] | None = None) -> Level:
    """`concurrency` clients posting `png` (as file `field`, with `values`; default k=5) to `path` back to back;
    counts only what completes after `warmup`."""
    url = f"http://127.0.0.1:{server.port}{path}"
    values = {"k": "5"} if values is None else values
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + seconds

    async def client(http: aiohttp.ClientSession) -> None:
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
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    return Level(server.name, concurrency, len(latencies), errors, seconds, latencies)


def serving_config(tag: str, workers: int, threads: int, batching: dict | None) -> dict:
    classify: dict = {"models": [tag]}
    if batching:
        classify["batching"] = batching
    return {"endpoints": {"classify": classify}, "workers": workers, "threads": threads}


def machine() -> str:
    return f"{os.cpu_count()} cores (nproc {len(os.sched_getaffinity(0))}), {cpu_model()}"


def table(levels: list[Level], baseline: str) -> str:
    base = {lv.concurrency: lv.throughput for lv in levels if lv.server == baseline}
    rows = ["| server | concurrency | req/s | vs plain | p50 ms | p99 ms | errors |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for lv in levels:
        ratio = lv.throughput / base[lv.concurrency] if base.get(lv.concurrency) else float("nan")
        rows.append(f"| {lv.server} | {lv.concurrency} | {lv.throughput:.0f} | {ratio:.2f} | {lv.percentile(50):.1f} "
                    f"| {lv.percentile(99):.1f} | {lv.errors} |")
    return "\n".join(rows)


def plot_latency(levels: list[Level], path: Path) -> None:
    """p50 (solid) and p99 (dashed) latency against concurrency, one colour per server."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lat, thr) = plt.subplots(1, 2, figsize=(10, 4))
    for name in dict.fromkeys(lv.server for lv in levels):
        mine = [lv for lv in levels if lv.server == name]
        xs = [lv.concurrency for lv in mine]
        line, = lat.plot(xs, [lv.percentile(50) for lv in mine], marker="o", label=f"{name} p50")
        lat.plot(xs, [lv.percentile(99) for lv in mine], linestyle="--", color=line.get_color(), label=f"{name} p99")
        thr.plot(xs, [lv.throughput for lv in mine], marker="o", color=line.get_color(), label=name)
    lat.set(xlabel="concurrent clients", ylabel="latency (ms)", xscale="log", yscale="log", title="classify latency")
    thr.set(xlabel="concurrent clients", ylabel="requests/s", xscale="log", title="classify throughput")
    for ax in (lat, thr):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


async def main(args: argparse.Namespace) -> None:
    load_at_start = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="serve_load-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    built = args.model is None
    if built:
        env["BENTOML_HOME"] = os.environ["BENTOML_HOME"] = str(work / "bentoml")
        args.model = build_model(work)
    batched = {"max_batch_size": args.max_batch, "max_wait_ms": args.max_wait_ms}
    # name → (batching, workers); the 1-worker variant shows what the second worker process buys
    variants = {"bentoml": (None, args.workers), "bentoml batched": (batched, args.workers)}
    if args.workers > 1:
        variants["bentoml batched, 1 worker"] = (batched, 1)
    bentoml_bin = str(Path(sys.executable).with_name("bentoml"))
    servers: list[Server] = []
    try:
        plain_config = work / "plain.yaml"
        plain_config.write_text(yaml.safe_dump(serving_config(args.model, args.workers, args.threads, None)))
        sock = listening_socket()
        plain = [sys.executable, "-m", "benchmarks.plain_app", "--fd", str(sock.fileno())]
        servers.append(Server("plain starlette", [plain] * args.workers, {**env, "SPECSERVE_CONFIG": str(plain_config)},
                              sock.getsockname()[1], work / "plain.log", pass_fds=(sock.fileno(),)))
        sock.close()  # the processes hold it now
        for name, (batching, workers) in variants.items():
            stem = name.replace(" ", "_").replace(",", "")
            config = work / f"{stem}.yaml"
            config.write_text(yaml.safe_dump(serving_config(args.model, workers, args.threads, batching)))
            port = free_port()
            servers.append(Server(name, [[bentoml_bin, "serve", "service.service:SpecServe", "--port", str(port)]],
                                  {**env, "SPECSERVE_CONFIG": str(config)}, port, work / f"{stem}.log"))
        for server in servers:
            await server.wait_ready()
        png = digit_png()
        levels = []
        for concurrency in args.levels:
            # Round-robin slices: each server gets `slices` turns of seconds/slices, so a change in background
            # load while this level runs hits every server alike.
            measured = {server.name: [] for server in servers}
            for _ in range(args.slices):
                for server in servers:
                    measured[server.name].append(await load(server, concurrency, args.seconds / args.slices,
                                                            args.warmup, png))
            for server in servers:
                level = Level.merge(measured[server.name])
                print(f"{server.name:>16} c={concurrency:<3} {level.throughput:7.0f} req/s  "
                      f"p50 {level.percentile(50):6.1f} ms  p99 {level.percentile(99):6.1f} ms  errors {level.errors}",
                      flush=True)
                levels.append(level)
    except BaseException:
        print(f"server logs and configs kept in {work}", file=sys.stderr)
        raise
    finally:
        for server in servers:
            server.stop()
    shutil.rmtree(work, ignore_errors=True)  # reached only on success
    text = "\n".join([
        "## serve_load: `classify` under load, BentoML service vs plain Starlette", "",
        f"`{' '.join(['.venv/bin/python', 'benchmarks/serve_load.py', *sys.argv[1:]])}` — "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {machine()}.", "",
        f"Model `{args.model}`{' (specs/digits_cnn.yaml, initial weights)' if built else ''}, one 32×32 PNG per "
        f"request, k=5. Every server (but `1 worker`): {args.workers} worker process(es) × "
        f"{args.threads} thread(s), onnxruntime intra-op threads `auto`, loopback; `bentoml` = the service with no "
        f"batching, `bentoml batched` = max_batch_size {args.max_batch}, max_wait_ms {args.max_wait_ms:g} (the "
        f"shipped service/serving.yaml, unless the command says otherwise). {args.seconds:g} s measured per level "
        f"and server, in {args.slices} slices taken in turn (each after {args.warmup:g} s unmeasured). `vs plain` = "
        f"throughput / plain Starlette's at the same concurrency; errors = non-200 answers or failed connections. "
        f"Load average {load_at_start:.2f} at the start, {os.getloadavg()[0]:.2f} at the end: other jobs shared "
        f"the machine, so compare rows of one run, not runs.", "",
        table(levels, "plain starlette")])
    print("\n" + text)
    if not args.no_write:
        plot_latency(levels, ROOT / "benchmarks" / "figures" / "serve_latency.png")
        text += "\n\n![latency and throughput vs concurrency](benchmarks/figures/serve_latency.png)"
        write_section(SECTION, text)
        print(f"\nwritten to BENCHMARKS.md ({SECTION})")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="stored model tag to serve (default: build a throwaway one)")
    p.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32, 64])
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds per level and server")
    p.add_argument("--slices", type=int, default=5, help="turns per server and level (interleaved)")
    p.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds before each slice")
    p.add_argument("--workers", type=int, default=SHIPPED.workers)
    p.add_argument("--threads", type=int, default=SHIPPED.threads)
    p.add_argument("--max-batch", type=int, default=BATCHING.max_batch_size)
    p.add_argument("--max-wait-ms", type=float, default=BATCHING.max_wait_ms)
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    return p.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
