"""Hostile requests against a real server: each gets a 4xx that says what was wrong, no bomb or oversized body is
inflated or read into the server's memory (its worker's peak memory is checked), and the server answers /readyz and
a normal request after each.

(test_service.py has the ordinary bad requests; these are the ones written to hurt: images whose headers lie
about their size, bodies of 50 MB, a million-value series, bytes that are not UTF-8, the wrong Content-Type on
every endpoint, compressed bodies and compression bombs.)

This module's server takes bodies up to 4 MB (the other limits are live_server.LIMITS), so that a million-value
series (2 MB of JSON) reaches the series-length check instead of stopping at the body size. That check comes after
BentoML's pydantic has parsed the whole list: a JSON body under the size limit costs a worker roughly 35 times its
size in memory for a moment (measured: +128 MB for 3.8 MB of "0,0,..."), which max_upload_bytes bounds.
"""
from __future__ import annotations

import gzip
import io
import socket
import struct
import zlib
from pathlib import Path
from typing import Callable, Iterator

import httpx
import pytest
from PIL import Image

from live_server import LIMITS, Server, gradient_png, worker_pids

MAX_BODY = 4_000_000
SERVER_CONFIG = {"limits": {**LIMITS, "max_upload_bytes": MAX_BODY}}  # read by conftest's `server` fixture
MB = 2**20


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120) as client:
        yield client


@pytest.fixture(autouse=True)
def still_serving(http: httpx.Client) -> Iterator[None]:
    """After every test: the server is ready and answers a normal request."""
    yield
    assert http.get("/readyz").status_code == 200
    answer = http.post("/classify", files={"images": ("d.png", gradient_png(), "image/png")})
    assert answer.status_code == 200 and len(answer.json()["results"]) == 1, answer.text


def assert_refused(response: httpx.Response, status: int, *fragments: str) -> None:
    """`status`, with a JSON body whose text mentions each fragment (the service's or BentoML's error format)."""
    assert response.status_code == status, (response.status_code, response.text)
    assert "error" in response.text, response.text
    for fragment in fragments:
        assert fragment in response.text, (fragment, response.text)


def memory_kb(pid: int) -> tuple[int, int]:
    """(peak, current) resident memory of a process, in kB (Linux /proc)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmHWM"].split()[0]), int(fields["VmRSS"].split()[0])


def added_peak_mb(server: Server, send: Callable[[], None]) -> float:
    """How far above its earlier peak (or current size, if higher) the worker's memory peaked while `send` ran.
    Reading a body of N MB into memory would add about N."""
    (worker,) = worker_pids(server)  # this module's server runs one worker
    peak, current = memory_kb(worker)
    send()
    return (memory_kb(worker)[0] - max(peak, current)) / 1024


# ------------------------------------------------------------------------------------- images that lie about size

def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def gif_claiming(width: int, height: int) -> bytes:
    return (b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0)
            + b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00\x3b")


def bmp_claiming(width: int, height: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info), 0, 0, 14 + len(info)) + info


def jpeg_claiming(width: int, height: int) -> bytes:
    return (b"\xff\xd8\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
            + b"\xff\xda" + struct.pack(">HB", 8, 1) + b"\x01\x00\x00\x3f\x00\xff\xd9")


def webp_claiming(width: int, height: int) -> bytes:
    vp8x = b"VP8X" + struct.pack("<I", 10) + bytes(4) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(
        3, "little")
    return b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x


@pytest.mark.parametrize("make", [png_claiming, gif_claiming, bmp_claiming, jpeg_claiming, webp_claiming])
def test_tiny_image_declaring_billions_of_pixels_is_a_bomb(http: httpx.Client, make: Callable[..., bytes]) -> None:
    bomb = make(16_384, 16_384)  # 268 megapixels declared in ≤ 70 bytes, no pixel data
    assert len(bomb) < 100
    assert_refused(http.post("/classify", files={"images": ("x", bomb)}), 413, "images[0]", "decompression bomb")
    assert_refused(http.post("/segment", files={"image": ("x", bomb)}), 413, "image", "decompression bomb")


@pytest.mark.parametrize("make", [png_claiming, gif_claiming, bmp_claiming, jpeg_claiming])
def test_tiny_image_declaring_more_than_the_pixel_limit(http: httpx.Client, make: Callable[..., bytes]) -> None:
    lying = make(2_000, 1_000)  # under PIL's bomb threshold, over this server's max_image_pixels of 1,000,000
    assert_refused(http.post("/classify", files={"images": ("x", lying)}), 413, "2,000,000 pixels", "1,000,000")


def test_png_whose_text_chunk_inflates_to_200_mb(http: httpx.Client, server: Server) -> None:
    small = io.BytesIO()
    Image.new("L", (8, 8)).save(small, format="PNG")
    text = chunk(b"zTXt", b"bomb\x00\x00" + zlib.compress(bytes(200 * MB), 9))  # ~200 kB on the wire
    bomb = small.getvalue()[:33] + text + small.getvalue()[33:]  # after the IHDR chunk
    answers: list[httpx.Response] = []
    grew = added_peak_mb(server, lambda: answers.append(http.post("/classify", files={"images": ("t.png", bomb)})))
    assert_refused(answers[0], 400, "images[0]", "too large")
    assert grew < 50, f"the worker's memory peaked {grew:.0f} MB higher"


# ------------------------------------------------------------------------------------------------ huge bodies

def test_50_mb_body_is_refused_before_it_is_read(http: httpx.Client, server: Server) -> None:
    body = bytes(50 * MB)
    answers: list[httpx.Response] = []

    def send() -> None:
        # declared: refused from Content-Length; chunked (no length): refused once MAX_BODY bytes have arrived
        answers.append(http.post("/classify", content=body,
                                 headers={"content-type": "multipart/form-data; boundary=x"}))
        answers.append(http.post("/forecast", content=(body[i: i + MB] for i in range(0, len(body), MB)),
                                 headers={"content-type": "application/json"}))

    grew = added_peak_mb(server, send)
    for answer in answers:
        assert_refused(answer, 413, f"larger than the limit of {MAX_BODY:,} bytes")
    assert grew < 25, f"the worker's memory peaked {grew:.0f} MB higher: the body was read"


def test_million_value_series(http: httpx.Client) -> None:
    series = b"[" + b"0," * (10**6 - 1) + b"0]"  # 2 MB: under this server's body limit
    assert_refused(http.post("/forecast", content=b'{"values": ' + series + b"}",
                             headers={"content-type": "application/json"}),
                   400, "values", f"at most {LIMITS['max_series_length']} items")
    # as a form field it is over the 1 MiB that the form parser takes for one value
    assert_refused(http.post("/forecast", files={"values": (None, series)}), 413, "'values'", "send long values as "
                                                                                               "a JSON body")


# ------------------------------------------------------------------------------------------ bytes, not UTF-8

def test_non_utf8_bytes(http: httpx.Client) -> None:
    assert_refused(http.post("/generate", content=b'{"prefix": "the \xff\xfe"}',
                             headers={"content-type": "application/json"}), 400, "Invalid JSON")
    assert_refused(http.post("/generate", content=b'{"prefix": "\\udcff"}',  # a lone surrogate, escaped
                             headers={"content-type": "application/json"}), 400, "Invalid JSON", "surrogate")
    # form values are read as Latin-1 when they are not UTF-8: the characters are then unknown to the model
    assert_refused(http.post("/generate", files={"prefix": (None, b"the \xff\xfe")}), 422, "does not know")
    assert_refused(http.post("/generate", content=b"prefix=the+%FF%FE",
                             headers={"content-type": "application/x-www-form-urlencoded"}), 422, "does not know")
    assert_refused(http.post("/generate", files={"prefix": (None, "the"), "model": (None, b"\xff\xfe")}), 404,
                   "unknown model")
    name = (b'--b\r\nContent-Disposition: form-data; name="images"; filename="\xff\xfe.png"\r\n\r\n'
            b"not an image\r\n--b--\r\n")
    assert_refused(http.post("/classify", content=name, headers={"content-type": "multipart/form-data; boundary=b"}),
                   415, "not an image")


# ------------------------------------------------------------------------------------------ wrong Content-Type

@pytest.mark.parametrize("path", ["/classify", "/segment"])
@pytest.mark.parametrize("content_type, body", [
    ("application/json", b'{"k": 3}'), ("text/plain", b"hello"), ("image/png", png_claiming(8, 8)),
    ("application/x-www-form-urlencoded", b"images=http://127.0.0.1:1/x.png"),  # would be fetched as a URL
    ("Multipart/Form-Data; boundary=b", b"--b--\r\n"),  # BentoML matches media types case-sensitively
    (None, b"{}")])
def test_file_endpoints_take_only_multipart(http: httpx.Client, path: str, content_type: str | None,
                                            body: bytes) -> None:
    if (path, content_type) == ("/classify", "image/png"):  # classify takes raw image bodies since issue 18
        pytest.skip("raw image bodies on /classify: test_public_defaults.py::test_raw_image_refusals")
    headers = {"content-type": content_type} if content_type else {}
    assert_refused(http.post(path, content=body, headers=headers), 415, f"{path} takes multipart/form-data")


@pytest.mark.parametrize("path", ["/forecast", "/generate", "/models"])
@pytest.mark.parametrize("content_type, body, status, message", [
    ("image/png", png_claiming(8, 8), 400, "Invalid JSON"),  # read as JSON, as any type but the form types
    ("application/xml", b"<values>1</values>", 400, "Invalid JSON"),
    ("multipart/form-data", b"--b--\r\n", 400, "without its boundary"),
    ("multipart/form-data; boundary=b", b"no boundary in here", 400, "malformed multipart body"),
    ("multipart/form-data; boundary=b", b'--b\r\nContent-Disposition: form-data\r\n\r\n1\r\n--b--\r\n', 400,
     "part has no name"),
    ("application/vnd.bentoml+pickle", b"\x80\x04K\x01.", 415, "pickle")])  # never unpickled
def test_json_endpoints_refuse_what_they_cannot_read(http: httpx.Client, path: str, content_type: str, body: bytes,
                                                     status: int, message: str) -> None:
    assert_refused(http.post(path, content=body, headers={"content-type": content_type}), status, message)


def test_form_values_that_would_crash_the_json_reader(http: httpx.Client) -> None:
    assert_refused(http.post("/generate", files={"prefix": (None, "the"), "length": (None, "[" * 100_000)}), 400,
                   "'length'", "nested too deeply")
    assert_refused(http.post("/generate", data={"prefix": "the", "top_k": "9" * 5_000}), 400, "'top_k'", "digits")
    many = [("values", (None, "1"))] * 1_001
    assert_refused(http.post("/forecast", files=many), 400, "more than 1,000")


# ------------------------------------------------------------------------------------------ compressed bodies

@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    """100 MB of JSON in ~100 kB of gzip."""
    return gzip.compress(b'{"values": [' + b"0," * (50 * MB) + b"0]}", 6)


@pytest.mark.parametrize("path, content_type, encoding", [
    ("/forecast", "application/json", "gzip"), ("/forecast", "application/json", "deflate"),
    ("/forecast", "application/json", "br"), ("/generate", "application/json", "gzip"),
    ("/classify", "multipart/form-data; boundary=b", "gzip")])
def test_compressed_bodies_are_refused_not_inflated(http: httpx.Client, server: Server, gzip_bomb: bytes, path: str,
                                                    content_type: str, encoding: str) -> None:
    answers: list[httpx.Response] = []
    grew = added_peak_mb(server, lambda: answers.append(http.post(
        path, content=gzip_bomb, headers={"content-type": content_type, "content-encoding": encoding})))
    assert_refused(answers[0], 415, f"Content-Encoding '{encoding}' is not supported")
    assert grew < 50, f"the worker's memory peaked {grew:.0f} MB higher"


def test_compressed_bytes_without_content_encoding_are_opaque(http: httpx.Client, gzip_bomb: bytes) -> None:
    """Nothing in the stack inflates a body by itself: sent without Content-Encoding, it is just bad JSON."""
    assert_refused(http.post("/forecast", content=gzip_bomb, headers={"content-type": "application/json"}), 400,
                   "Invalid JSON")


def raw_http(server: Server, request: bytes) -> bytes:
    """What the server sends back to `request`, written byte for byte on a fresh connection."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as conn:
        conn.sendall(request)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return answer


@pytest.mark.parametrize("framing", [b"Transfer-Encoding: gzip", b"Transfer-Encoding: gzip, chunked",
                                     b"Content-Length: 2\r\nContent-Length: 7", b"Content-Length: -1"])
def test_unsupported_or_contradictory_framing_is_refused_by_the_http_server(server: Server, framing: bytes) -> None:
    answer = raw_http(server, b"POST /forecast HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + framing
                      + b"\r\nConnection: close\r\n\r\n2\r\n{}\r\n0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]


# ------------------------------------------------------------------------------------------ numeric extremes

def test_subnormal_temperature_samples_like_greedy(http: httpx.Client) -> None:
    """scores / 5e-324 overflows to inf; sampling must still be a distribution (found by test_http_fuzz.py)."""
    def text(temperature: float) -> str:
        answer = http.post("/generate", json={"prefix": "the ", "length": 30, "temperature": temperature, "seed": 1})
        assert answer.status_code == 200, answer.text
        return answer.json()["text"]

    assert text(5e-324) == text(1e-308) == text(0)
