"""specserve's Open Inference Protocol (/v2) under NVIDIA's perf_analyzer, Triton's own load tool, beside PyTriton
(Triton Inference Server) serving the same ONNX graph with the same tensors.

    bash scripts/perf_analyzer_setup.sh      # once: perf_analyzer into ~/.cache/specserve/perf_analyzer (x86_64)
    .venv/bin/python benchmarks/perf_analyzer.py                 # levels 1,8,32,64; specserve, PyTriton; BENCHMARKS.md
    .venv/bin/python benchmarks/perf_analyzer.py --levels 1,8 --interval-ms 500 --no-write        # a smoke run
    .venv/bin/python benchmarks/perf_analyzer.py --servers specserve -b 8
    .venv/bin/python benchmarks/perf_analyzer.py --dynamic-batching      # PyTriton merging requests (specserve's /v2
                                                                         # runs each request on its own)

perf_analyzer reads each server's `GET /v2/models/NAME/config` (Triton's model configuration: max_batch_size, the
input `pixels` UINT8 (H, W, C) and the output `logits` FP32 (K) without the batch axis) and sends `POST
/v2/models/NAME/infer` with random pixels as binary tensor data (batch -b, default 1), asking for the output as
binary, from `concurrency` threads back to back (its sync mode). Both servers answer with the same graph
(without --model, specs/digits_cnn.yaml with its initial weights, stored in a temporary BENTOML_HOME), the same
onnxruntime session settings and intra-op threads, and the same process count:

* `specserve`: `bentoml serve` of the service (service/kserve.py), the shipped config but for the model and
  `workers`/`threads`: each request decoded, checked and run on its own (session.run under the `threads` limit);
* `pytriton`: benchmarks/peers/pytriton_app.py --mode pixels, run by the peers' Python (--peers-python; set it up
  with benchmarks/peers/requirements.txt; without it specserve is measured alone, with a note): Triton's C++ HTTP
  front end, `workers` model instances, each one session.run per call in the PyTriton process; no dynamic batching
  unless --dynamic-batching.

Per (server, concurrency), one perf_analyzer run: measurement windows of --interval-ms until three in a row agree
within --stability % on throughput and average latency (perf_analyzer's stabilization; at most --max-trials windows).
A level that does not stabilize is run once more taking the next three windows as they come (the `windows` column
says so). From its -f CSV: infer/s and p50/p99 latency of the stable windows; from its --profile-export-file: every
inference it sent during the run, for the server's CPU (user + system of every process in the server's sessions,
benchmarks/serve_load.py's accounting) per 1,000 inferences over the whole run; from its rusage: perf_analyzer's
own share of the machine's cores (what the load tool took from the servers on the same box); where the server keeps
Triton's statistics (PyTriton), its own queue and compute time per request. perf_analyzer stops at the first failed
request: such a level reports the error instead of figures. Servers are measured one at a time, each alone on the
machine once it idles (a second worker may still be loading when the first answers ready), all levels, then the next.
"""
from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python benchmarks/perf_analyzer.py` from anywhere
from benchmarks.common import fmt, md_table, publish  # noqa: E402
from benchmarks.serve_load import (DEFAULT_PEERS_PYTHON, SHIPPED, Level, Server, build_model, card_file,  # noqa: E402
                                   machine, peer_available, run_measured, scratch, serving_config,
                                   specserve_server, start_peer)
from service.config import ServingConfig  # noqa: E402

SECTION = "perf_analyzer"
SERVERS = ("specserve", "pytriton")
SETUP = "scripts/perf_analyzer_setup.sh"
UNSTABLE = "Failed to obtain stable measurement"


# ------------------------------------------------------------------------------------------------ perf_analyzer

def find_perf_analyzer(given: Path | None) -> Path:
    """The perf_analyzer to run (--perf-analyzer, else $PERF_ANALYZER_HOME's, else ~/.cache/specserve's, else one on
    PATH), checked by its --version; exits with one line when there is none that runs."""
    home = Path(os.environ.get("PERF_ANALYZER_HOME", Path.home() / ".cache" / "specserve" / "perf_analyzer"))
    on_path = shutil.which("perf_analyzer")
    candidates = [given] if given else [home / "perf_analyzer", *([Path(on_path)] if on_path else [])]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            said = version(candidate)
            if said.startswith("Perf Analyzer Version"):
                return candidate
            sys.exit(f"{candidate} does not run as perf_analyzer ({said[-200:]}); reinstall it: bash {SETUP}")
    sys.exit(f"perf_analyzer is not installed (looked for {' and '.join(map(str, candidates))}): bash {SETUP}")


def version(perf_analyzer: Path) -> str:
    """What `perf_analyzer --version` prints (on stderr), or why it does not run."""
    check = subprocess.run([str(perf_analyzer), "--version"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
    return check.stdout.strip()


@dataclass
class Point(Level):
    """One perf_analyzer run: `requests` and `seconds` (hence CPU per 1,000 and the client's share) cover the whole
    run; `infer_per_s` and the percentiles its stable windows."""

    infer_per_s: float = float("nan")
    windows: str = ""
    error: str = ""
    server_side: str = "–"  # Triton's statistics, where the server keeps them: queue / compute µs per request

    @property
    def throughput(self) -> float:
        return self.infer_per_s


def passes(text: str) -> int:
    return len(re.findall(r"^\s+Pass \[\d+\]", text, flags=re.M))


def first_error(text: str) -> str:
    """perf_analyzer's reason for stopping: its `had error` line, else its last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    found = [line for line in lines if "error" in line.lower()]
    return (found[-1] if found else lines[-1] if lines else "no output")[:300].replace("|", "/")


def run_level(perf_analyzer: Path, server: Server, model: str, concurrency: int, args: argparse.Namespace,
              work: Path) -> Point:
    """One perf_analyzer run at `concurrency` (and, when it does not stabilize, one more taking three windows)."""
    stem = work / f"{server.name}-c{concurrency}"
    base = [str(perf_analyzer), "-m", model, "-u", f"127.0.0.1:{server.port}", "-i", "http", "-b", str(args.batch),
            "--concurrency-range", str(concurrency), "--measurement-interval", str(args.interval_ms), "-v",
            "-f", f"{stem}.csv", "--profile-export-file", f"{stem}.json"]

    def attempt(kind: str, stability: float, trials: int) -> tuple[int, str, float, float, float]:
        cpu_before = server.cpu_seconds()
        returncode, text, wall, client_cpu = run_measured(
            [*base, "--stability-percentage", f"{stability:g}", "--max-trials", str(trials)], {},
            Path(f"{stem}-{kind}.txt"))
        return returncode, text, wall, client_cpu, server.cpu_seconds() - cpu_before

    returncode, text, wall, client_cpu, server_cpu = attempt("stable", args.stability, args.max_trials)
    unstable = ""
    if returncode != 0 and UNSTABLE in text:  # take the next three windows as they come
        unstable = f"{passes(text)} unstable + "
        returncode, text, wall, client_cpu, server_cpu = attempt("unchecked", 1000, 3)
    if returncode != 0:
        return Point(server.name, concurrency, 0, 1, wall, client_cpu_s=client_cpu, error=first_error(text),
                     windows=f"{unstable}stopped in window {passes(text)}")
    windows = f"{unstable}{passes(text)}{' unchecked' if unstable else ''}"
    with open(f"{stem}.csv", newline="") as f:
        row = next(csv.DictReader(f))
    inferences = len(json.loads(Path(f"{stem}.json").read_text())["experiments"][0]["requests"]) * args.batch
    compute = sum(int(row[f"Server Compute {part}"]) for part in ("Input", "Infer", "Output")
                  if f"Server Compute {part}" in row)
    return Point(server.name, concurrency, inferences, 0, wall, p50_ms=float(row["p50 latency"]) / 1000,
                 p99_ms=float(row["p99 latency"]) / 1000, server_cpu_s=server_cpu, client_cpu_s=client_cpu,
                 infer_per_s=float(row["Inferences/Second"]), windows=windows,
                 server_side=f"{row['Server Queue']} / {compute}" if "Server Queue" in row else "–")


# ------------------------------------------------------------------------------------------------ servers

async def start(name: str, tag: str, config: dict, args: argparse.Namespace, work: Path,
                env: dict[str, str]) -> tuple[Server | None, str | None]:
    """`name` serving `tag` under /v2, ready; or (None, why not)."""
    model = tag.split(":", 1)[0]
    ready = f"/v2/models/{model}/ready"
    if name == "specserve":
        server = specserve_server(name, config, work, env, ready_path=ready)
        try:
            await server.wait_ready()
        except BaseException:
            server.stop()
            raise
        return server, None
    if why := peer_available(args.peers_python, "pytriton"):
        return None, why
    served = ServingConfig.model_validate(config)
    options = ["--mode", "pixels", "--card", str(card_file(tag, served, work)), "--workers", str(args.workers),
               "--max-batch", str(served.limits.max_images), "--max-wait-ms", str(args.max_wait_ms)]
    return await start_peer(name, "pytriton_app.py", options + ["--dynamic-batching"] * args.dynamic_batching,
                            args.peers_python, work, ready)


def settle(server: Server, below: float = 0.05, most: int = 10) -> float:
    """Wait until the server idles (its CPU over 1 s under `below` of a core: ready answers once one worker
    serves, while another may still be loading its model), at most `most` s; returns that last second's share."""
    for _ in range(most):
        before = server.cpu_seconds()
        time.sleep(1)
        share = server.cpu_seconds() - before
        if share < below:
            break
    return share


# ------------------------------------------------------------------------------------------------ report

def table(points: list[Point]) -> str:
    base = {p.concurrency: p.throughput for p in points if p.server == "pytriton" and not p.error}
    rows = []
    for p in sorted(points, key=lambda p: (p.concurrency, SERVERS.index(p.server))):
        ratio = p.throughput / base[p.concurrency] if base.get(p.concurrency) and not p.error else float("nan")
        figures = ["–"] * 3 if p.error else [fmt(p.throughput, 0), fmt(p.percentile(50)), fmt(p.percentile(99))]
        rows.append([p.server, p.concurrency, figures[0], fmt(ratio), *figures[1:], p.error or "0",
                     fmt(p.cpu_per_1000), f"{100 * p.client_share:.0f} %", p.server_side, p.windows])
    return md_table(["server", "concurrency", "infer/s", "vs pytriton", "p50 ms", "p99 ms", "errors",
                     "server CPU s / 1k inf", "perf_analyzer CPU", "queue / compute µs", "windows"], rows,
                    "llrrrrrrrrl")


def report(points: list[Point], tag: str, args: argparse.Namespace, load: tuple[float, float], idle: dict[str, float],
           skipped: list[str]) -> str:
    built = "" if args.model else " (specs/digits_cnn.yaml, initial weights)"
    batching = (f"PyTriton with Triton's dynamic batcher (max wait {args.max_wait_ms:g} ms)" if args.dynamic_batching
                else "no batching across requests in either")
    idle_note = ", ".join(f"{name} {100 * share:.0f} %" for name, share in idle.items()) or "n/a"
    return "\n".join([
        f"## {SECTION}: `/v2` under Triton's perf_analyzer — specserve and PyTriton, the same graph", "",
        f"`{' '.join(['.venv/bin/python', 'benchmarks/perf_analyzer.py', *sys.argv[1:]])}` — "
        f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, {machine()}, {args.version}.", "",
        f"Model `{tag}`{built}: `pixels` UINT8 (B, H, W, C) → `logits` FP32 (B, K), batch {args.batch} per request, "
        f"random pixels as binary tensor data, the output asked for as binary. Every server: {args.workers} "
        f"process(es)/instance(s), the same onnxruntime session settings and intra-op threads; {batching}. "
        f"perf_analyzer in sync mode (one thread per concurrent request), windows of {args.interval_ms} ms until "
        f"three agree within {args.stability:g} % (at most {args.max_trials}; `windows` = how many it took, "
        f"`unstable + 3 unchecked` = it did not settle and the level was rerun taking three windows as they came). "
        f"infer/s and p50/p99 are the stable windows'; server CPU = user + system seconds of all the server's "
        f"processes per 1,000 inferences over the whole run; queue / compute µs = the server's own mean per request "
        f"(Triton's statistics extension: PyTriton keeps them, specserve does not); perf_analyzer CPU = its share of "
        f"the machine's {os.cpu_count()} cores (taken from the servers on this box). Idle server CPU before the "
        f"first point (1 s windows until under 5 % of a core, at most 10 s): {idle_note}. Load average "
        f"{load[0]:.2f} at the start, {load[1]:.2f} at the end: other jobs shared the machine, so compare rows of "
        f"one run, not runs." + (f" Skipped: {'; '.join(skipped)}." if skipped else ""),
        "", table(points)])


# ------------------------------------------------------------------------------------------------ main

async def main(args: argparse.Namespace) -> None:
    perf_analyzer = find_perf_analyzer(args.perf_analyzer)
    args.version = version(perf_analyzer)
    load_at_start = os.getloadavg()[0]
    points: list[Point] = []
    idle: dict[str, float] = {}
    skipped: list[str] = []
    with scratch("perf_analyzer-", args.model, "server logs, perf_analyzer output and configs") as (work, env):
        tag = args.model or build_model(work)
        model = tag.split(":", 1)[0]
        config = serving_config(tag, args.workers, args.threads, None)
        print(f"== {tag} under {args.version}: {', '.join(args.servers)}", flush=True)
        for name in args.servers:  # one at a time: each alone on the machine, all levels, then the next
            server, why = await start(name, tag, config, args, work, env)
            if server is None:
                skipped.append(f"{name}: {why}")
                print(f"skipping {name}: {why}", flush=True)
                continue
            try:
                idle[name] = settle(server)
                for concurrency in args.levels:
                    point = run_level(perf_analyzer, server, model, concurrency, args, work)
                    points.append(point)
                    print(f"{name:>10} c={concurrency:<4} " + (f"stopped: {point.error}" if point.error else
                          f"{point.throughput:7.0f} infer/s  p50 {point.percentile(50):6.2f} ms  p99 "
                          f"{point.percentile(99):6.2f} ms  server CPU {point.cpu_per_1000:5.2f} s/1k inf  "
                          f"perf_analyzer CPU {100 * point.client_share:3.0f} %  windows {point.windows}"), flush=True)
            finally:
                server.stop()
        publish(SECTION, report(points, tag, args, (load_at_start, os.getloadavg()[0]), idle, skipped),
                write=not args.no_write)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32, 64],
                   help="concurrency levels, comma-separated (default 1,8,32,64)")
    p.add_argument("-b", "--batch", type=int, default=1, help="images per request (default 1)")
    p.add_argument("--servers", type=lambda s: s.split(","), default=list(SERVERS),
                   help=f"comma-separated, of {', '.join(SERVERS)} (default both)")
    p.add_argument("--model", help="stored image model tag to serve (default: build a throwaway digits-cnn)")
    p.add_argument("--interval-ms", type=int, default=2000, help="perf_analyzer's measurement window (default 2000)")
    p.add_argument("--stability", type=float, default=10.0,
                   help="%% three windows in a row may differ by (perf_analyzer's --stability-percentage; default 10)")
    p.add_argument("--max-trials", type=int, default=10, help="windows before giving up on stability (default 10)")
    p.add_argument("--workers", type=int, default=SHIPPED.workers)
    p.add_argument("--threads", type=int, default=SHIPPED.threads)
    p.add_argument("--dynamic-batching", action="store_true", help="let PyTriton's Triton merge requests")
    p.add_argument("--max-wait-ms", type=float, default=0.0, help="with --dynamic-batching: Triton's max queue delay")
    p.add_argument("--peers-python", type=Path, default=DEFAULT_PEERS_PYTHON,
                   help="the Python of the peers' virtual environment")
    p.add_argument("--perf-analyzer", type=Path, help=f"the perf_analyzer to run (default: the one {SETUP} installs)")
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = p.parse_args(argv)
    if unknown := set(args.servers) - set(SERVERS):
        p.error(f"unknown server(s) {sorted(unknown)}; choose from {', '.join(SERVERS)}")
    args.servers = list(dict.fromkeys(args.servers))
    return args


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
