"""service/admission.py: the fair queue's turns on a hand-moved clock, and which requests the middleware admits."""
from __future__ import annotations

import asyncio

import pytest

from service.admission import FairAdmission, FairQueue, charge


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


def test_requests_go_straight_in_while_slots_are_free() -> None:
    async def run() -> None:
        queue = FairQueue(2)
        await asyncio.wait_for(queue.enter("a"), 1)
        await asyncio.wait_for(queue.enter("b"), 1)
        assert queue.busy == 2
        third = asyncio.create_task(queue.enter("a"))
        await settle()
        assert not third.done()  # both slots taken: it waits
        queue.leave("b")
        await asyncio.wait_for(third, 1)
        assert queue.busy == 2 and queue.running["a"] == 2

    asyncio.run(run())


def test_a_freed_slot_goes_to_the_flow_that_used_the_least_time() -> None:
    async def run() -> list[str]:
        clock = Clock()
        queue = FairQueue(1, clock)
        order: list[str] = []

        async def request(flow: str, seconds: float) -> None:
            await queue.enter(flow)
            order.append(flow)
            clock.now += seconds  # the request's time in its slot
            queue.leave(flow)

        await queue.enter("flood")  # a slot held while both flows queue up behind it
        tasks = [asyncio.create_task(request("flood", 1.0)) for _ in range(6)]
        tasks += [asyncio.create_task(request("other", 1.0)) for _ in range(3)]
        await settle()
        clock.now += 1.0
        queue.leave("flood")
        await asyncio.gather(*tasks)
        return order

    order = asyncio.run(run())
    # flood used 1 s before "other" came: other goes first, then they alternate until other has none left
    assert order == ["other", "flood", "other", "flood", "other", "flood", "flood", "flood", "flood"]


def test_a_cheap_flow_gets_half_the_time_beside_an_expensive_one() -> None:
    async def run() -> dict[str, int]:
        clock = Clock()
        queue = FairQueue(1, clock)
        done = {"cheap": 0, "dear": 0}
        cost = {"cheap": 0.1, "dear": 1.0}

        async def loop(flow: str) -> None:  # a closed-loop client: one request after another
            while clock.now < 100:
                await queue.enter(flow)
                await asyncio.sleep(0)  # the others queue meanwhile
                clock.now += cost[flow]
                done[flow] += 1
                queue.leave(flow)
                await asyncio.sleep(0)

        await asyncio.gather(*[loop("cheap") for _ in range(4)], *[loop("dear") for _ in range(4)])
        return done

    done = asyncio.run(run())
    # time-fair: each flow got ~50 of the 100 s, so the cheap flow answered ~10x as many requests
    assert 450 <= done["cheap"] <= 550 and 45 <= done["dear"] <= 55


def test_an_idle_flow_saves_up_no_credit() -> None:
    async def run() -> float:
        clock = Clock()
        queue = FairQueue(1, clock)
        await queue.enter("a")
        clock.now += 50.0  # "a" alone for 50 s
        queue.leave("a")
        await queue.enter("b")  # "b" arrives with nothing else busy: it starts level with "a"
        return queue.used["b"]

    assert asyncio.run(run()) == pytest.approx(50.0)


def test_a_cancelled_waiter_leaves_the_queue_and_a_cancelled_grant_frees_its_slot() -> None:
    async def run() -> None:
        queue = FairQueue(1)
        await queue.enter("a")
        waiter = asyncio.create_task(queue.enter("b"))
        await settle()
        waiter.cancel()
        await settle()
        assert not queue.waiting["b"]
        granted = asyncio.create_task(queue.enter("b"))
        await settle()
        queue.leave("a")  # the slot is granted to "b"'s ticket ...
        granted.cancel()  # ... whose request is cancelled before it runs
        await settle()
        assert queue.busy == 0 and queue.running["b"] == 0

    asyncio.run(run())


@pytest.mark.parametrize(("method", "path", "accept", "admitted"), [
    ("POST", "/classify", None, True),
    ("POST", "/generate", "text/event-stream", False),  # streams take turns under their own limiter
    ("POST", "/generate", "application/json", True),
    ("GET", "/classify", None, False),
    ("POST", "/v2/models/digits-cnn/infer", None, True),
    ("POST", "/v2/models/unknown/infer", None, False),
    ("POST", "/livez", None, False),
])
def test_which_requests_take_a_slot(method: str, path: str, accept: str | None, admitted: bool) -> None:
    async def app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        seen.append(middleware._queue.busy if middleware._queue else 0)

    seen: list[int] = []
    middleware = FairAdmission(app, 4, routes=["/classify", "/generate"],
                               other_path=lambda p: p == "/v2/models/digits-cnn/infer")
    headers = [(b"accept", accept.encode())] if accept else []
    asyncio.run(middleware({"type": "http", "method": method, "path": path, "headers": headers}, None, None))
    assert seen == [1 if admitted else 0]


def test_a_flow_that_charges_its_cpu_is_charged_only_that() -> None:
    async def run() -> dict[str, float]:
        clock = Clock()
        queue = FairQueue(4, clock)
        await queue.enter("measured")
        await queue.enter("wall")
        queue.charge("measured", 0.25)  # e.g. its batch's CPU share
        clock.now += 2.0  # both hold a slot for 2 s: "wall" is charged its half of them, "measured" nothing more
        queue.leave("measured")
        queue.leave("wall")
        return dict(queue.used)

    assert asyncio.run(run()) == {"measured": 0.25, "wall": 1.0}


def test_charge_reaches_the_flow_of_the_request_being_answered() -> None:
    async def app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        charge(0.5)

    middleware = FairAdmission(app, 4, routes=["/forecast"], other_path=lambda p: False)
    asyncio.run(middleware({"type": "http", "method": "POST", "path": "/forecast", "headers": []}, None, None))
    charge(1.0)  # outside a request: charged to no one
    assert middleware._queue is not None and dict(middleware._queue.used) == {"/forecast": 0.5}
