"""Streamed generation against a real server: `POST /generate` with `Accept: text/event-stream` sends one event per
token (the first event naming the model and seed), the same tokens as the JSON answer, and a client that
disconnects stops its generation — shown by the server's own count of tokens per stream outcome (/metrics) and its
log line, read after a streaming client read three events and closed the connection.
"""
from __future__ import annotations

import json
import re
import time
from typing import Iterator

import httpx
import pytest

from live_server import LIMITS, Server

LONG = 2_000
SERVER_CONFIG = {"limits": {**LIMITS, "max_generation_length": LONG}}  # read by conftest's `server` fixture
STREAM = {"accept": "text/event-stream"}


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def read_events(response: httpx.Response) -> list[tuple[str, dict]]:
    """(event name, data) of every server-sent event of a streamed answer."""
    events, name = [], "message"
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            events.append((name, json.loads(line.removeprefix("data: "))))
            name = "message"
    return events


def stream_counts(http: httpx.Client) -> dict[str, float]:
    """The server's stream counters: 'streams/<outcome>' and 'tokens/<outcome>'."""
    counts = {}
    for line in http.get("/metrics").text.splitlines():
        match = re.match(r'specserve_generate_(streams|stream_tokens)_total\{outcome="(\w+)"\} ([0-9.e+]+)', line)
        if match:
            counts[f"{'streams' if match[1] == 'streams' else 'tokens'}/{match[2]}"] = float(match[3])
    return counts


def test_events_carry_the_same_tokens_as_the_json_answer(http: httpx.Client, server: Server) -> None:
    request = {"prefix": "the ", "length": 40, "temperature": 1.0, "top_k": 5, "seed": 7}
    text = http.post("/generate", json=request).json()["text"]
    before = stream_counts(http)
    with http.stream("POST", "/generate", json=request, headers=STREAM) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        events = read_events(response)
    (first, start), *tokens, (last, end) = events
    assert first == "start" and start == {"model": server.tags["test-chars"], "seed": 7, "prefix": "the ",
                                          "length": 40}
    assert [name for name, _ in tokens] == ["token"] * 40 and all(len(t["text"]) == 1 for _, t in tokens)
    assert "".join(t["text"] for _, t in tokens) == text
    assert (last, end) == ("end", {"text": text, "tokens": 40})
    after = stream_counts(http)
    assert after["streams/completed"] == before.get("streams/completed", 0) + 1
    assert after["tokens/completed"] == before.get("tokens/completed", 0) + 40


def test_an_unseeded_stream_names_its_seed_for_replay(http: httpx.Client) -> None:
    with http.stream("POST", "/generate", json={"prefix": "a", "length": 12}, headers=STREAM) as response:
        events = read_events(response)
    seed = events[0][1]["seed"]
    replayed = http.post("/generate", json={"prefix": "a", "length": 12, "seed": seed}).json()
    assert replayed["text"] == events[-1][1]["text"]


@pytest.mark.parametrize("accept", ["application/json", "text/event-stream;q=0", "*/*", None])
def test_other_accept_headers_get_json(http: httpx.Client, accept: str | None) -> None:
    answer = http.post("/generate", json={"prefix": "a", "length": 3}, headers={"accept": accept} if accept else {})
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"


@pytest.mark.parametrize("body, status, fragment", [
    ({"prefix": "The Time!"}, 422, "does not know"), ({"prefix": "the", "length": 0}, 400, "length"),
    ({"prefix": "the", "top_k": 29}, 422, "top_k 29"), ({"prefix": "the", "model": "nope"}, 404, "unknown model")])
def test_bad_requests_are_answered_before_any_event(http: httpx.Client, body: dict, status: int,
                                                    fragment: str) -> None:
    answer = http.post("/generate", json=body, headers=STREAM)
    assert answer.status_code == status and answer.headers["content-type"] == "application/json"
    assert fragment in answer.text


def test_a_client_that_disconnects_stops_the_generation(http: httpx.Client, server: Server) -> None:
    before = stream_counts(http)
    # a real streaming client on its own connection: read three tokens, then close the connection
    with httpx.Client(base_url=server.url, timeout=60) as client:
        with client.stream("POST", "/generate", json={"prefix": "the ", "length": LONG, "seed": 1},
                           headers=STREAM) as response:
            seen = 0
            for line in response.iter_lines():
                seen += line.startswith("event: token")
                if seen == 3:
                    break
    deadline = time.monotonic() + 60
    while stream_counts(http).get("streams/disconnected", 0) == before.get("streams/disconnected", 0):
        assert time.monotonic() < deadline, "the server never saw the client go away"
        time.sleep(0.2)
    after = stream_counts(http)
    produced = after["tokens/disconnected"] - before.get("tokens/disconnected", 0)
    assert 3 <= produced < LONG / 2, produced  # stopped early: not the 2,000 tokens asked for
    assert after.get("streams/completed", 0) == before.get("streams/completed", 0)
    time.sleep(0.5)  # the stream is over: its count does not move any more
    assert stream_counts(http)["tokens/disconnected"] == after["tokens/disconnected"]
    logged = re.findall(r"generate stream disconnected: (\d+) of 2000 tokens", server.log.read_text())
    assert logged and int(logged[-1]) == produced
    assert http.post("/generate", json={"prefix": "a", "length": 3}).status_code == 200
