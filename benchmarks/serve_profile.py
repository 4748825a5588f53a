"""Where a classify request's time goes in one worker, with and without the lean route, and how forecast fares
beside a classify flood — the figures behind BENCHMARKS.md's serve_profile section.

    .venv/bin/python benchmarks/serve_profile.py                 # profile both routes, 4 mix runs; BENCHMARKS.md
    .venv/bin/python benchmarks/serve_profile.py --seconds 5 --mix-runs 1 --no-write                   # a smoke run

Profile: `bentoml serve` with one worker (`lean_routes` true, then false) of serve_load's model (digits_cnn,
initial weights), `hey -c 8` of serve_load's request for `--seconds`, `py-spy record --format raw` of the worker
meanwhile; the samples of each named function (inclusive, counted once per stack) as shares of all samples, and
the worker's req/s. Mix: two workers serving that model on classify and the sine forecaster (initial weights) on
forecast; `hey -c 32` on /forecast alone, then beside `hey -c 32` on /classify; per run the req/s of each and the
CPU seconds of each worker during the solo run (how the forecast connections spread over the two workers).
Needs Debian's hey and py-spy (PyPI, in the dev extras' environment: `pip install py-spy`).
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.common import publish  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from benchmarks.serve_load import (Body, Server, build_model, client_command, digit_png, forecast_tag,  # noqa: E402
                                   free_port, json_body, machine, multipart, parse_hey, run_client, serving_config)

# function name (as py-spy writes it) → what the row of the table calls it
FUNCTIONS = {
    "MultipartSerde.parse_request": "BentoML's IO path: second multipart parse and pydantic validation",
    "NamedTemporaryFile": "of it: each upload spooled to a temporary file",
    "Path.read_bytes": "each upload's temporary file read back (in the batch thread)",
    "ContextMiddleware.__call__": "BentoML's context middleware, router and route (the parse included)",
    "form_of": "the upload guard's parse (service/uploads.py)",
    "Session.run": "onnxruntime Session.run",
}


def start(name: str, config: dict, work: Path, env: dict[str, str]) -> Server:
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    bentoml_bin = str(Path(sys.executable).with_name("bentoml"))
    return Server(name, [[bentoml_bin, "serve", "service.service:SpecServe", "--host", "127.0.0.1", "--port",
                          str(port)]], {**env, "SPECSERVE_CONFIG": str(path)}, port, work / f"{name}.log")


def workers(server: Server) -> list:
    return [p for p in server.members() if "_bentoml_impl.worker.service" in " ".join(p.cmdline())]


def hey(server: Server, body: Body, concurrency: int, seconds: float, work: Path, tag: str) -> subprocess.Popen:
    body_file = work / f"{tag}.body"
    body_file.write_bytes(body.data)
    command, _ = client_command("hey", f"http://127.0.0.1:{server.port}{body.path}", body, body_file, concurrency,
                                seconds, work)
    return subprocess.Popen(command, stdout=(work / f"{tag}.txt").open("w"), stderr=subprocess.STDOUT)


def requests_per_s(work: Path, tag: str, seconds: float) -> float:
    ok, _, _, _ = parse_hey((work / f"{tag}.txt").read_text())
    return ok / seconds


def shares(raw: Path) -> tuple[dict[str, float], int]:
    """Inclusive share of the samples of each function in FUNCTIONS, from py-spy's raw (collapsed) output."""
    total, counts = 0, collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        total += int(n)
        names = {re.sub(r" \(.*", "", frame) for frame in stack.split(";")}
        for name in FUNCTIONS:
            if name in names:
                counts[name] += int(n)
    return {name: counts[name] / max(total, 1) for name in FUNCTIONS}, total


def ready(server: Server) -> Server:
    asyncio.run(server.wait_ready())
    return server


def profile(lean: bool, tag: str, args: argparse.Namespace, work: Path, env: dict[str, str]) -> dict:
    config = {**serving_config(tag, 1, 1, {"max_batch_size": 32, "max_wait_ms": 0}), "lean_routes": lean}
    server = ready(start(f"profile-{'lean' if lean else 'bentoml'}", config, work, env))
    try:
        body = multipart(digit_png())
        name = f"profile-{lean}"
        hey(server, body, 8, 1, work, name + "-warm").wait()
        client = hey(server, body, 8, args.seconds + 2, work, name)
        raw = work / f"{name}.raw"
        subprocess.run([args.py_spy, "record", "-p", str(workers(server)[0].pid), "-d", f"{args.seconds:g}", "-r",
                        "200", "-f", "raw", "-o", str(raw), "--nonblocking"], check=True, capture_output=True)
        client.wait()
        found, samples = shares(raw)
        return {"shares": found, "samples": samples, "rps": requests_per_s(work, name, args.seconds + 2)}
    finally:
        server.stop()


def finish(client: subprocess.Popen) -> float:
    """Wait for a load generator; its CPU seconds (user + system, from its rusage)."""
    _, _, usage = os.wait4(client.pid, 0)
    client.returncode = 0
    return usage.ru_utime + usage.ru_stime


def cpu_seconds(processes: list) -> list[float]:
    return [sum(p.cpu_times()[:2]) for p in processes]


def mix(tag: str, forecast: str, args: argparse.Namespace, work: Path, env: dict[str, str]) -> list[dict]:
    config = {"endpoints": {"classify": {"models": [tag], "batching": {"max_batch_size": 32, "max_wait_ms": 0}},
                            "forecast": {"models": [forecast]}}, "workers": 2, "threads": 1}
    series = json_body("/forecast", {"values": [0.1 * i for i in range(40)], "k": 3})
    cores = len(os.sched_getaffinity(0))
    runs = []
    for run in range(args.mix_runs):
        server = ready(start(f"mix-{run}", config, work, env))
        try:
            finish(hey(server, series, 32, 1, work, "mix-warm"))
            members = workers(server)
            before = cpu_seconds(members)
            solo_client = finish(hey(server, series, 32, args.seconds, work, f"solo-{run}"))
            solo_workers = [b - a for a, b in zip(before, cpu_seconds(members))]
            flood = hey(server, multipart(digit_png()), 32, args.seconds + 2, work, f"flood-{run}")
            before = cpu_seconds(members)
            mixed_client = finish(hey(server, series, 32, args.seconds, work, f"mixed-{run}"))
            mixed_workers = [b - a for a, b in zip(before, cpu_seconds(members))]
            flood_client = finish(flood)
            runs.append({"solo": requests_per_s(work, f"solo-{run}", args.seconds),
                         "mixed": requests_per_s(work, f"mixed-{run}", args.seconds),
                         "classify": requests_per_s(work, f"flood-{run}", args.seconds + 2),
                         "worker_cpu": [round(c, 2) for c in solo_workers],
                         "mixed_worker_cpu": [round(c, 2) for c in mixed_workers],
                         # the load generators' share of the machine: what they took from the server
                         "solo_client": solo_client / (args.seconds * cores),
                         "mixed_client": (mixed_client + flood_client * args.seconds / (args.seconds + 2))
                                         / (args.seconds * cores)})
        finally:
            server.stop()
    return runs


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def report(profiles: dict[bool, dict], runs: list[dict], args: argparse.Namespace) -> str:
    lines = ["## Where a classify request's time goes, and one endpoint beside another", "",
             f"`{' '.join(['.venv/bin/python benchmarks/serve_profile.py', *sys.argv[1:]])}` — {now()}", "",
             f"{machine()}; load average {os.getloadavg()[0]:.2f} at the end. One `bentoml serve` worker of "
             f"serve_load's model, `hey -c 8` for {args.seconds:g} s, `py-spy record -r 200 -f raw` of the worker; "
             "inclusive share of the worker's samples per function (a function counted once per stack).", "",
             "| function | BentoML's route (`lean_routes: false`) | lean route |", "|---|---:|---:|"]
    for name, what in FUNCTIONS.items():
        cells = [f"{100 * profiles[lean]['shares'][name]:.1f} %" for lean in (False, True)]
        lines.append(f"| {what} (`{name}`) | {cells[0]} | {cells[1]} |")
    lines.append(f"| the worker's req/s at 8 clients | {profiles[False]['rps']:.0f} | {profiles[True]['rps']:.0f} |")
    lines += ["", f"Forecast beside a classify flood: 2 workers, the sine forecaster (initial weights) on forecast, "
              f"`hey -c 32` of 40 values, k=3, on /forecast for {args.seconds:g} s alone, then beside `hey -c 32` of "
              "the PNG on /classify. Per phase, the two workers' CPU seconds (how the connections spread, and what "
              "the server got) and the load generators' share of the machine's CPU (what they took from it).", "",
              "| run | forecast alone req/s | beside classify req/s | kept | classify req/s | workers' CPU s, alone "
              "| workers' CPU s, beside | clients' CPU, alone | clients' CPU, beside |",
              "|---:|---:|---:|---:|---:|---|---|---:|---:|"]
    for i, run in enumerate(runs, 1):
        lines.append(f"| {i} | {run['solo']:.0f} | {run['mixed']:.0f} | {100 * run['mixed'] / run['solo']:.0f} % | "
                     f"{run['classify']:.0f} | {' + '.join(f'{c:.2f}' for c in run['worker_cpu'])} | "
                     f"{' + '.join(f'{c:.2f}' for c in run['mixed_worker_cpu'])} | "
                     f"{100 * run['solo_client']:.0f} % | {100 * run['mixed_client']:.0f} % |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--mix-runs", type=int, default=4)
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy")))
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--mix-only", action="store_true", help="only the mix runs, printed (BENCHMARKS.md untouched)")
    args = parser.parse_args()
    if shutil.which("hey") is None:
        sys.exit("`hey` is not installed: apt-get install hey")
    work = Path(tempfile.mkdtemp(prefix="serve_profile-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BENTOML_DO_NOT_TRACK": "True", "BENTOML_HOME": str(work / "bento")}
    os.environ["BENTOML_HOME"] = env["BENTOML_HOME"]
    tag = build_model(work)
    if args.mix_only:
        for run in mix(tag, forecast_tag(work), args, work, env):
            print(run, f"kept {100 * run['mixed'] / run['solo']:.0f} %")
        return
    profiles = {lean: profile(lean, tag, args, work, env) for lean in (False, True)}
    runs = mix(tag, forecast_tag(work), args, work, env)
    publish("serve_profile", report(profiles, runs, args), write=not args.no_write)


if __name__ == "__main__":
    main()
