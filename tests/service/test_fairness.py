"""No single request and no single endpoint stalls the others, against a real `bentoml serve`: a request of 32 huge
images is refused from its headers while normal requests are answered, and forecast keeps answering beside a flood
of classify requests. Behaviour only (every answer arrives, with the right status); the throughput figures of such
mixes are benchmarks/serve_load.py's (BENCHMARKS.md), printed here with -s for a look."""
from __future__ import annotations

import asyncio
import io
import time

import httpx
import numpy as np
import psutil
from PIL import Image

from live_server import Server, worker_pids

SERVER_CONFIG = {"workers": 2, "threads": 1,
                 "limits": {"max_images": 32, "max_image_pixels": 40_000_000, "max_request_pixels": 80_000_000,
                            "max_upload_bytes": 16_000_000}}


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


DIGIT = png(Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)))
HUGE = png(Image.new("L", (6000, 6000)))  # ~40 KB on the wire, 36 MP decoded
SERIES = {"values": [float(np.sin(0.3 * i)) for i in range(40)], "k": 3}


async def classify_loop(client: httpx.AsyncClient, until: float, statuses: list[int]) -> None:
    while time.monotonic() < until:
        response = await client.post("/classify", files=[("images", ("d.png", DIGIT, "image/png"))])
        statuses.append(response.status_code)


async def forecast_loop(client: httpx.AsyncClient, until: float, statuses: list[int]) -> None:
    while time.monotonic() < until:
        statuses.append((await client.post("/forecast", json=SERIES)).status_code)


def test_a_request_of_32_huge_images_is_refused_while_others_are_answered(server: Server) -> None:
    async def run() -> tuple[httpx.Response, list[int]]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            statuses: list[int] = []
            huge = client.post("/classify", files=[("images", (f"{i}.png", HUGE, "image/png")) for i in range(32)])
            normal = classify_loop(client, time.monotonic() + 2, statuses)
            answer, _ = await asyncio.gather(huge, normal)
            return answer, statuses

    answer, statuses = asyncio.run(run())
    assert answer.status_code == 413, answer.text
    assert answer.json()["error"].startswith("images[2]: with it the request's images have 108,000,000 pixels")
    assert statuses and set(statuses) == {200}


def test_forecast_keeps_answering_beside_a_classify_flood(server: Server) -> None:
    async def run(flood: bool) -> tuple[list[int], list[int]]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:
            until = time.monotonic() + 3
            classified: list[int] = []
            forecasts: list[int] = []
            loops = [forecast_loop(client, until, forecasts) for _ in range(4)]
            if flood:
                loops += [classify_loop(client, until, classified) for _ in range(16)]
            await asyncio.gather(*loops)
            return forecasts, classified

    solo, _ = asyncio.run(run(flood=False))
    mixed, classified = asyncio.run(run(flood=True))
    print(f"\nforecast answers in 3 s: alone {len(solo)}, beside {len(classified)} classify answers {len(mixed)}")
    assert set(solo) == set(mixed) == set(classified) == {200}
    assert mixed and classified


def test_connections_spread_over_the_workers_own_sockets(server: Server) -> None:
    """Each worker listens on a socket of its own beside the shared one (service/connections.py), and 40 new
    connections land on both workers (all on one would be a 1 in 2**39 chance of the flow hashes)."""
    port = int(server.url.rsplit(":", 1)[1])

    def sockets(pid: int, status: str) -> list:
        return [c for c in psutil.Process(pid).net_connections(kind="tcp")
                if c.status == status and c.laddr.port == port]

    workers = worker_pids(server)
    assert len(workers) == 2
    assert all(len(sockets(pid, psutil.CONN_LISTEN)) == 2 for pid in workers)  # the shared one and its own

    async def hold_connections() -> list[int]:
        clients = [httpx.AsyncClient(base_url=server.url, timeout=30) for _ in range(40)]
        try:
            answers = await asyncio.gather(*[c.post("/forecast", json=SERIES) for c in clients])
            assert {a.status_code for a in answers} == {200}
            return [len(sockets(pid, psutil.CONN_ESTABLISHED)) for pid in workers]
        finally:
            await asyncio.gather(*[c.aclose() for c in clients])

    per_worker = asyncio.run(hold_connections())
    print(f"\n40 connections per worker: {per_worker}")
    assert sum(per_worker) == 40 and min(per_worker) > 0
