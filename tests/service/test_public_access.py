"""A server set up for public deployment, as a client on the internet meets it: API keys (one from the serving
config as a sha256 digest, two from an environment variable), the docs open, /metrics behind the key, CORS for one
origin, and short connection timeouts — a slow or idle client is cut off within them, however it trickles bytes.

(service/gate.py's every combination is in test_gate.py, without a server; this module proves the real
`bentoml serve` applies it, with BentoML's own clients, tritonclient and raw sockets.)
"""
from __future__ import annotations

import hashlib
import socket
import time
from pathlib import Path
from typing import Iterator

import bentoml
import httpx
import numpy as np
import pytest

from live_server import Server, gradient_png

KEY, ENV_KEYS = "config-key-0123", ("env-key-1", "env-key-2")
ORIGIN = "https://app.example"
HEADER_TIMEOUT, BODY_TIMEOUT, KEEP_ALIVE = 1.0, 2.0, 1.0
SERVER_CONFIG = {  # read by conftest's `server` fixture
    "access": {"api_key_sha256": [hashlib.sha256(KEY.encode()).hexdigest()], "api_keys_env": "SPECSERVE_TEST_KEYS",
               "docs": "open", "cors": {"allow_origins": [ORIGIN]}},
    "connections": {"header_timeout_s": HEADER_TIMEOUT, "body_timeout_s": BODY_TIMEOUT, "keep_alive_s": KEEP_ALIVE}}
SERVER_ENV = {"SPECSERVE_TEST_KEYS": ", ".join(ENV_KEYS)}
CUT_WITHIN = 15  # seconds: the timeouts above plus any delay of a loaded machine


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def keyed(key: str = KEY) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_every_call_needs_a_key_but_the_probes(http: httpx.Client) -> None:
    calls = [("POST", "/classify"), ("POST", "/forecast"), ("POST", "/generate"), ("POST", "/models"),
             ("GET", "/schema.json"), ("GET", "/metrics"), ("GET", "/v2"), ("GET", "/v2/models/test-digits"),
             ("POST", "/v2/models/test-digits/infer")]
    for method, path in calls:
        answer = http.request(method, path, json={})
        assert answer.status_code == 401, (path, answer.text)
        assert answer.headers["www-authenticate"] == 'Bearer realm="specserve"' and "API key" in answer.json()["error"]
        assert http.request(method, path, json={}, headers=keyed("nearly" + KEY)).status_code == 401
    for path in ["/livez", "/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"]:
        assert http.get(path).status_code == 200, path
    for path in ["/", "/docs.json", "/demo/", "/static_content/swagger-ui.css"]:  # docs: open in this config
        assert http.get(path).status_code == 200, path


def test_keys_from_the_config_and_the_environment(http: httpx.Client) -> None:
    body = {"values": [0.1, 0.2, 0.3, 0.4, 0.5]}
    for headers in [keyed(KEY), keyed(ENV_KEYS[0]), {"x-api-key": ENV_KEYS[1]}, {"authorization": f"bearer {KEY}"}]:
        answer = http.post("/forecast", json=body, headers=headers)
        assert answer.status_code == 200, (headers, answer.text)
    assert http.get("/metrics", headers=keyed()).status_code == 200


def test_clients_send_their_keys(server: Server, tmp_path: Path) -> None:
    image = tmp_path / "d.png"
    image.write_bytes(gradient_png())
    with bentoml.SyncHTTPClient(server.url, token=ENV_KEYS[0]) as client:  # BentoML's own client: Bearer token
        assert len(client.classify(images=[image], k=2)["results"][0]["top"]) == 2
    triton = pytest.importorskip("tritonclient.http")
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    pixels = triton.InferInput("pixels", [1, 8, 8, 1], "UINT8")
    pixels.set_data_from_numpy(np.zeros((1, 8, 8, 1), np.uint8))
    assert client.infer("test-digits", [pixels], headers=keyed()).as_numpy("logits").shape == (1, 10)
    with pytest.raises(Exception, match="401|API key"):
        client.infer("test-digits", [pixels])
    client.close()


def test_cors_for_the_configured_origin_only(http: httpx.Client) -> None:
    preflight = {"origin": ORIGIN, "access-control-request-method": "POST",
                 "access-control-request-headers": "authorization, content-type"}
    allowed = http.options("/generate", headers=preflight)  # browsers send preflights without credentials
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == ORIGIN
    refused = http.options("/generate", headers={**preflight, "origin": "https://evil.example"})
    assert "access-control-allow-origin" not in refused.headers
    answer = http.post("/generate", json={"prefix": "a", "length": 2}, headers={**keyed(), "origin": ORIGIN})
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == ORIGIN
    other = http.post("/generate", json={"prefix": "a", "length": 2}, headers={**keyed(), "origin": "https://x.example"})
    assert other.status_code == 200 and "access-control-allow-origin" not in other.headers


def connect(server: Server) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    conn = socket.create_connection((host, int(port)), timeout=CUT_WITHIN + 10)
    return conn


def read_until_closed(conn: socket.socket) -> bytes:
    answer = b""
    try:
        while chunk := conn.recv(65536):
            answer += chunk
    except (ConnectionResetError, BrokenPipeError):
        pass
    return answer


def read_one_response(conn: socket.socket) -> bytes:
    """Exactly one HTTP response (headers, then Content-Length bytes of body), however TCP splits it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        assert chunk, f"connection closed mid-response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = conn.recv(65536)
        assert chunk, f"connection closed mid-body: {data!r}"
        body += chunk
    return head + b"\r\n\r\n" + body


def test_a_silent_connection_is_cut(server: Server) -> None:
    with connect(server) as conn:
        start = time.monotonic()
        answer = read_until_closed(conn)
    assert answer.startswith(b"HTTP/1.1 408 ") and time.monotonic() - start < CUT_WITHIN


def test_headers_trickled_byte_by_byte_are_cut(server: Server) -> None:
    with connect(server) as conn:
        start = time.monotonic()
        conn.sendall(b"POST /forecast HTTP/1.1\r\nHost: x\r\n")
        try:
            while time.monotonic() - start < CUT_WITHIN:  # a new header line every 0.2 s resets no timer
                conn.sendall(b"X-Slow: 1\r\n")
                time.sleep(0.2)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = read_until_closed(conn)
    elapsed = time.monotonic() - start
    assert elapsed < CUT_WITHIN and answer.startswith(b"HTTP/1.1 408 "), (elapsed, answer[:100])


def test_a_body_trickled_slowly_is_cut(server: Server) -> None:
    with connect(server) as conn:
        conn.sendall(b"POST /forecast HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
                     + b"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
        start = time.monotonic()
        try:
            while time.monotonic() - start < CUT_WITHIN:
                conn.sendall(b" ")
                time.sleep(0.2)
        except (BrokenPipeError, ConnectionResetError):
            pass
        read_until_closed(conn)
    assert time.monotonic() - start < CUT_WITHIN


def test_an_idle_keep_alive_connection_is_closed(server: Server) -> None:
    with connect(server) as conn:
        conn.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        first = read_one_response(conn)  # the body may come in its own segment: read the whole answer first
        assert first.startswith(b"HTTP/1.1 200 ")
        start = time.monotonic()
        rest = read_until_closed(conn)
    assert rest == b"" and time.monotonic() - start < CUT_WITHIN


def test_a_prompt_client_on_a_kept_alive_connection_is_not_cut(http: httpx.Client) -> None:
    for _ in range(3):  # one connection, requests well within the timeouts
        assert http.post("/forecast", json={"values": [0.1] * 4}, headers=keyed()).status_code == 200
        time.sleep(KEEP_ALIVE / 4)
