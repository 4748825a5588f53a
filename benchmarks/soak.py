"""Soak test: `classify` and `segment` under sustained load together, twice, with the server's memory before and
after each round, to show that errors stay at zero and memory stays flat.

    .venv/bin/python benchmarks/soak.py             # 2 rounds of 60 s at concurrency 64, writes BENCHMARKS.md
    .venv/bin/python benchmarks/soak.py --seconds 5 --concurrency 8 --no-write      # a smoke run

One real `bentoml serve` with the shipped service/serving.yaml settings (workers, threads, classify batching,
limits), serving throwaway models with their initial weights — specs/digits_cnn.yaml on classify and
specs/shapes_fcn.yaml on segment, stored in a temporary BENTOML_HOME (load does not depend on what the weights
are). Each round, half the clients post a 32×32 PNG to /classify and half a 64×64 RGB PNG to /segment, back to
back; errors are any answer but 200 (503 included) and failed connections. Memory is the resident set (RSS) of
every server process (the arbiter and its workers) summed; a leak would show as growth from round to round. The
client runs on the same machine, sharing its cores with the server.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import os
import shutil
import sys
import tempfile
from pathlib import Path

import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.common import command_line, fmt, load_note, md_table, now, write_section  # noqa: E402
from benchmarks.serve_load import SHIPPED, Level, Server, build_model, digit_png, free_port, load  # noqa: E402

SECTION = "soak"
ENDPOINTS = {"/classify": "images", "/segment": "image"}  # path → its file field


def shapes_png() -> bytes:
    """A 64×64 RGB image of the shapes the segmentation spec is made for, as PNG."""
    from PIL import Image

    from models.data import load_dataset

    shapes = load_dataset("shapes", {"train_count": 1, "test_count": 1}, seed=0)
    buffer = io.BytesIO()
    Image.fromarray(shapes.test_x[0].permute(1, 2, 0).numpy()).save(buffer, format="PNG")  # (64, 64, 3)
    return buffer.getvalue()


def soak_config(classify_tag: str, segment_tag: str) -> dict:
    """The shipped serving config with the throwaway models on classify (keeping its batching) and segment."""
    config = SHIPPED.model_dump(mode="json", exclude_none=True)
    batching = config["endpoints"].get("classify", {}).get("batching")
    config["endpoints"] = {"classify": {"models": [classify_tag], **({"batching": batching} if batching else {})},
                           "segment": {"models": [segment_tag]}}
    return config


def server_rss_mb(server: Server) -> float:
    """Resident memory of the server's processes (`bentoml serve` and every process under it), in MB."""
    total = 0
    for process in server.processes:
        root = psutil.Process(process.pid)
        for member in [root, *root.children(recursive=True)]:
            try:
                total += member.memory_info().rss
            except psutil.NoSuchProcess:
                continue
    return total / 2**20


async def soak_round(server: Server, concurrency: int, seconds: float, images: dict[str, bytes]) -> dict[str, Level]:
    """Both endpoints loaded at once, `concurrency` clients in all (split evenly), for `seconds`."""
    shares = {path: concurrency // len(ENDPOINTS) + (i < concurrency % len(ENDPOINTS)) for i, path in
              enumerate(ENDPOINTS)}
    levels = await asyncio.gather(*(load(server, shares[path], seconds, 0, images[path], path=path, field=field,
                                         values={}) for path, field in ENDPOINTS.items()))
    return dict(zip(ENDPOINTS, levels))


def report(rounds: list[dict[str, Level]], rss: list[float], args: argparse.Namespace, started_load: float) -> str:
    rows = []
    for number, levels in enumerate(rounds, 1):
        for path, level in levels.items():
            rows.append([number, f"`{path}`", level.concurrency, f"{level.requests:,}", level.errors,
                         fmt(level.throughput, 0), fmt(level.percentile(50), 1), fmt(level.percentile(99), 1)])
    memory = [["before round 1", f"{rss[0]:,.0f}", "–"]]
    memory += [[f"after round {i}", f"{mb:,.0f}", f"{mb - rss[0]:+,.0f}"] for i, mb in enumerate(rss[1:], 1)]
    return "\n".join([
        "## soak: `classify` and `segment` under sustained load, errors and memory", "",
        f"`{command_line('soak.py')}` — {now()}, load average {started_load:.1f} at the start, {load_note()} at the "
        f"end.", "",
        f"One `bentoml serve` with the shipped serving config ({SHIPPED.workers} worker(s) × {SHIPPED.threads} "
        f"thread(s), classify batching as shipped), throwaway models with initial weights (specs/digits_cnn.yaml on "
        f"classify, specs/shapes_fcn.yaml on segment). {len(rounds)} rounds of {args.seconds:g} s, {args.concurrency} "
        f"clients in all, split between the endpoints, each posting one PNG after another (32×32 grayscale to "
        f"classify, 64×64 RGB to segment). Errors = any answer but 200 (503 included) or a failed connection.", "",
        md_table(["round", "endpoint", "clients", "requests", "errors", "req/s", "p50 ms", "p99 ms"], rows,
                 align="rlrrrrrr"), "",
        "Resident memory of all server processes (arbiter + workers), MB:", "",
        md_table(["when", "RSS MB", "vs before"], memory, align="lrr")])


async def main(args: argparse.Namespace) -> int:
    started_load = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env["BENTOML_HOME"] = os.environ["BENTOML_HOME"] = str(work / "bentoml")
    config = work / "serving.yaml"
    config.write_text(yaml.safe_dump(soak_config(build_model(work, "digits_cnn.yaml"),
                                                 build_model(work, "shapes_fcn.yaml"))))
    images = {"/classify": digit_png(), "/segment": shapes_png()}
    port = free_port()
    bentoml_bin = str(Path(sys.executable).with_name("bentoml"))
    server = Server("bentoml", [[bentoml_bin, "serve", "service.service:SpecServe", "--port", str(port)]],
                    {**env, "SPECSERVE_CONFIG": str(config)}, port, work / "server.log")
    try:
        await server.wait_ready()
        await soak_round(server, args.concurrency, args.warmup, images)  # unmeasured: first-call allocations
        rss, rounds = [server_rss_mb(server)], []
        for number in range(1, args.rounds + 1):
            rounds.append(await soak_round(server, args.concurrency, args.seconds, images))
            rss.append(server_rss_mb(server))
            summary = ", ".join(f"{path} {lv.requests} req, {lv.errors} errors, p50 {lv.percentile(50):.1f} ms, "
                                f"p99 {lv.percentile(99):.1f} ms" for path, lv in rounds[-1].items())
            print(f"round {number}: {summary}; server RSS {rss[-1]:.0f} MB (before: {rss[0]:.0f} MB)", flush=True)
    except BaseException:
        print(f"server log and config kept in {work}", file=sys.stderr)
        raise
    finally:
        server.stop()
    shutil.rmtree(work, ignore_errors=True)  # reached only on success
    text = report(rounds, rss, args, started_load)
    print("\n" + text)
    if not args.no_write:
        write_section(SECTION, text)
        print(f"\nwritten to BENCHMARKS.md, section {SECTION}")
    return 1 if any(level.errors for levels in rounds for level in levels.values()) else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60.0, help="measured seconds per round")
    p.add_argument("--concurrency", type=int, default=64, help="clients in all, split between the endpoints")
    p.add_argument("--rounds", type=int, default=2, help="identical rounds (memory is read after each)")
    p.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds of the same load first")
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = p.parse_args(argv)
    if args.concurrency < len(ENDPOINTS):
        p.error(f"--concurrency must be at least {len(ENDPOINTS)} (one client per endpoint)")
    return args


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
