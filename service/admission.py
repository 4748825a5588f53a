"""Fair admission inside one server process: endpoints take turns by the time they use, so a flood of requests to
one endpoint cannot starve another.

Without it a worker's event loop serves whatever is ready first. Under a mix of a classify flood and forecast
requests each connection got roughly one request through per turn, so the endpoint whose requests cost less kept
far less than half of what it served alone (benchmarks/serve_profile.py, before this module: forecast kept
22–37 %; with it, BENCHMARKS.md serve_profile). Here every API
request that computes (the task endpoints' POSTs and the open inference protocol's infer calls) first takes one
of `capacity` slots of its process. While slots are free and nobody waits, a request goes straight in: at low load
this adds nothing but a counter. When they are all taken, requests queue per endpoint (its path), and each freed
slot goes to the waiting endpoint that has used the least time so far (start-time fair queuing), so endpoints busy
at once share a worker's time about equally, whatever their requests cost, and an endpoint that comes back after a
pause starts level with the busy ones (no credit saved up while it was idle).

The time an endpoint used is the CPU time of its model work, where that work reports it (`charge`: the classify
batches, the lean JSON calls, the open inference protocol's calls, each measured with the thread's CPU clock
wherever it ran), and otherwise its share of the busy slots' wall time. CPU, because a batch thread's time overlaps
the event loop's on another core: by wall time in its slots the classify flood got more of the CPU than forecast.
A request's body parse (service/uploads.py measures it: a multipart upload's costs more than a JSON body's) is
charged to its endpoint too; the rest of the HTTP work (headers, routing, answering) is charged to no one, which
tilts the turns a little towards the endpoint of cheaper requests — the one a flood would starve.

It stands inside service/uploads.py's UploadGuard, so a request's body has been read before it asks for a slot (a
slow upload holds no slot), and outside the lean routes and BentoML's router, so both kinds of route are counted.
Event streams (`Accept: text/event-stream`) are not admitted here: a stream holds its connection for as long as
the client reads, and its generation steps take turns under their own limiter (service/streaming.py).
"""
from __future__ import annotations

import asyncio
import collections
import contextvars
import time
from typing import Callable, Iterable, TypeVar

from service.streaming import wants_stream
from service.uploads import PARSE_CPU_KEY, ASGIApp, Receive, Scope, Send

T = TypeVar("T")


class FairQueue:
    """`capacity` slots shared by named flows; a freed slot goes to the waiting flow with the least time used."""

    def __init__(self, capacity: int, clock: Callable[[], float] = time.monotonic):
        self.capacity, self.clock = capacity, clock
        self.busy = 0
        self.used: dict[str, float] = collections.defaultdict(float)  # slot seconds per flow since start
        self.running: collections.Counter[str] = collections.Counter()
        self.waiting: dict[str, collections.deque[asyncio.Future[None]]] = collections.defaultdict(collections.deque)
        self._since = clock()
        self.measured: set[str] = set()  # flows that charge their own CPU time

    def charge(self, flow: str, seconds: float, *, model_work: bool = True) -> None:
        """`flow` took `seconds` of CPU: in its model work (from then on it is charged only by CPU), or else in
        work outside its slot (its request's parse)."""
        if model_work:
            self.measured.add(flow)
        self.used[flow] += seconds

    def _account(self) -> None:
        """Charge the time since the last change to the flows holding slots that do not charge their CPU, each by
        its share of the busy slots (as if the slots shared the process's time equally)."""
        now = self.clock()
        if self.busy:
            for flow, held in self.running.items():
                if held and flow not in self.measured:
                    self.used[flow] += (now - self._since) * held / self.busy
        self._since = now

    def _active(self) -> list[str]:
        return [flow for flow in self.used if self.running[flow] or self.waiting[flow]]

    def _level(self, flow: str) -> None:
        """A flow that was idle starts at the least time of the busy ones, or with none busy at the most any flow
        has used: idleness is not saved up as credit (a flow back after a pause would otherwise hold every slot
        until the others' time caught up with its own)."""
        if not self.running[flow] and not self.waiting[flow]:
            busy = [self.used[other] for other in self._active() if other != flow]
            self.used[flow] = max(self.used[flow], min(busy) if busy else max(self.used.values(), default=0.0))

    async def enter(self, flow: str) -> None:
        self._account()
        self._level(flow)
        if self.busy < self.capacity and not any(self.waiting.values()):
            self.busy += 1
            self.running[flow] += 1
            return
        ticket: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting[flow].append(ticket)
        try:
            await ticket
        except asyncio.CancelledError:
            if ticket.done() and not ticket.cancelled():  # granted just as it was cancelled: give the slot on
                self.leave(flow)
            else:
                self.waiting[flow].remove(ticket)
            raise

    def leave(self, flow: str) -> None:
        self._account()
        self.running[flow] -= 1
        self.busy -= 1
        self._grant()

    def _grant(self) -> None:
        while self.busy < self.capacity:
            queued = [flow for flow, tickets in self.waiting.items() if tickets]
            if not queued:
                return
            flow = min(queued, key=lambda f: (self.used[f], self.running[f]))
            ticket = self.waiting[flow].popleft()
            if ticket.cancelled():
                continue
            self.busy += 1  # (leave, the one caller, has just accounted for the time)
            self.running[flow] += 1
            ticket.set_result(None)


_current: contextvars.ContextVar[tuple[FairQueue, str] | None] = contextvars.ContextVar("specserve_flow",
                                                                                       default=None)


def charge(seconds: float) -> None:
    """Charge `seconds` of model work to the flow of the request being answered (nothing outside admission)."""
    current = _current.get()
    if current is not None:
        current[0].charge(current[1], seconds)


def cpu_timed(call: Callable[[], T]) -> tuple[T, float]:
    """call()'s result and the CPU time the calling thread spent in it."""
    start = time.thread_time()
    result = call()
    return result, time.thread_time() - start


class FairAdmission:
    def __init__(self, app: ASGIApp, capacity: int, routes: Iterable[str], other_path: Callable[[str], bool]):
        """routes: the API paths whose POSTs compute; other_path(path): whether another path computes (the open
        inference protocol's infer paths)."""
        self.app, self.routes, self.other_path = app, frozenset(routes), other_path
        self.capacity = capacity
        self._queue: FairQueue | None = None  # made in the server's event loop, on first use

    def _flow(self, scope: Scope) -> str | None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return None
        path = scope["path"]
        if path not in self.routes and not (path.endswith("/infer") and self.other_path(path)):
            return None
        accept = next((value.decode("latin-1") for name, value in scope["headers"] if name == b"accept"), None)
        return None if wants_stream(accept) else path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        flow = self._flow(scope)
        if flow is None:
            return await self.app(scope, receive, send)
        queue = self._queue = self._queue or FairQueue(self.capacity)
        await queue.enter(flow)
        queue.charge(flow, scope.get(PARSE_CPU_KEY, 0.0), model_work=False)
        token = _current.set((queue, flow))
        try:
            await self.app(scope, receive, send)
        finally:
            _current.reset(token)
            queue.leave(flow)
