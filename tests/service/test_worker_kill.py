"""A worker process SIGKILLed under load: BentoML's arbiter starts a replacement, the server keeps answering, and
after both original workers have been killed every request is answered by replacements.

The server runs 2 worker processes (SERVER_CONFIG) behind one listening socket held by the arbiter (`bentoml
serve`), so a connection made while no worker is accepting waits in the socket's backlog instead of failing.
Only requests in flight on the killed process (or sent on its dead keep-alive connection) lose their connection.
No timing is asserted: the deadlines only bound how long the test waits for something that must happen; the
figures (seconds to a replacement, to answers again, what /readyz said meanwhile) are printed (pytest -s).
"""
from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterator

import httpx
import pytest

from live_server import Server, gradient_png, worker_pids

SERVER_CONFIG = {"workers": 2}  # read by conftest's `server` fixture
CLIENTS = 4
DEADLINE_S = 180  # to wait for a replacement or for answers: generous on a loaded 2-core machine

pytestmark = pytest.mark.slow


@dataclass
class Load:
    """CLIENTS threads sending classify and generate requests back to back; each outcome is recorded with the
    time it was sent: an HTTP status, or the name of the connection error."""

    url: str
    outcomes: list[tuple[float, int | str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def client(self, index: int) -> None:
        image = gradient_png()
        with httpx.Client(base_url=self.url, timeout=60) as http:
            for n in itertools.count():
                if self.stop.is_set():
                    return
                sent = time.monotonic()
                try:
                    if (index + n) % 2:
                        status: int | str = http.post("/classify", files={"images": ("d.png", image)}).status_code
                    else:
                        status = http.post("/generate", json={"prefix": "the ", "length": 10, "temperature": 0,
                                                              "seed": 1}).status_code
                except httpx.HTTPError as e:
                    status = type(e).__name__
                self.outcomes.append((sent, status))

    def succeeded_since(self, moment: float) -> int:
        return sum(1 for sent, status in list(self.outcomes) if sent >= moment and status == 200)


@pytest.fixture
def load(server: Server) -> Iterator[Load]:
    running = Load(server.url)
    threads = [threading.Thread(target=running.client, args=(i,), daemon=True) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    yield running
    running.stop.set()
    for thread in threads:
        thread.join(timeout=90)


def wait_for(what: str, done: Callable[[], bool], on_each: Callable[[], None]) -> float:
    """Seconds until `done()`, calling `on_each()` between checks; fails the test after DEADLINE_S."""
    start = time.monotonic()
    while not done():
        if time.monotonic() - start > DEADLINE_S:
            pytest.fail(f"{what}: not within {DEADLINE_S} s")
        on_each()
        time.sleep(0.2)
    return time.monotonic() - start


def test_killed_workers_are_replaced_and_the_server_keeps_answering(server: Server, load: Load) -> None:
    originals = worker_pids(server)
    assert len(originals) == 2, originals
    readyz: Counter[int | str] = Counter()

    def poll_readyz() -> None:  # a fresh connection each time, as a load balancer's health check makes
        try:
            readyz[httpx.get(f"{server.url}/readyz", timeout=1).status_code] += 1
        except httpx.HTTPError as e:
            readyz[type(e).__name__] += 1

    wait_for("requests answered before the kill", lambda: load.succeeded_since(0) >= 2 * CLIENTS, lambda: None)
    os.kill(originals[0], signal.SIGKILL)
    poll_readyz()
    replaced_s = wait_for("BentoML starting a worker in place of the killed one",
                          lambda: len(set(worker_pids(server)) - set(originals)) == 1, poll_readyz)
    readyz_one_down = dict(readyz)

    os.kill(originals[1], signal.SIGKILL)  # from now on only replacements can answer
    second_kill = time.monotonic()
    answering_s = wait_for("answers from replacement workers only",
                           lambda: load.succeeded_since(second_kill) >= 2 * CLIENTS, poll_readyz)
    both_replaced_s = wait_for("both killed workers replaced", lambda: len(worker_pids(server)) == 2 and not (
        set(worker_pids(server)) & set(originals)), lambda: None)
    load.stop.set()

    statuses = Counter(status for _, status in load.outcomes)
    print(f"\nworker kill: replacement started {replaced_s:.1f} s after the first SIGKILL; /readyz meanwhile "
          f"{readyz_one_down}; after the second SIGKILL requests answered again within {answering_s:.1f} s and both "
          f"workers were replaced {answering_s + both_replaced_s:.1f} s after it; /readyz over the whole test "
          f"{dict(readyz)}; {len(load.outcomes)} requests: {dict(statuses)}")
    # every answer was a right one; only connections to a killed process were lost (one per client and kill, or
    # two where a keep-alive connection died between being picked and being written to)
    assert all(status == 200 for status in statuses if isinstance(status, int)), statuses
    assert sum(n for status, n in statuses.items() if isinstance(status, str)) <= 2 * CLIENTS * 2, statuses
    assert readyz_one_down.get(200) and all(isinstance(s, str) or s == 200 for s in readyz), readyz
