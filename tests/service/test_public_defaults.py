"""What a server with the default access settings does about the ways a public deployment gets probed: metrics label
values cannot be grown by requests to made-up paths, no software version is disclosed, CORS is closed, ambiguous
request framing is refused, the docs page loads nothing from elsewhere; and classify takes a raw image body, with
a pixel budget per request.
"""
from __future__ import annotations

import io
import json
import re
import secrets
import shutil
import socket
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from live_server import LIMITS, Server, gradient_png

SERVER_CONFIG = {"limits": {**LIMITS, "max_request_pixels": 1_500_000}}  # read by conftest's `server` fixture


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def series_names(metrics: str) -> set[str]:
    """Every time series of a /metrics page: name and labels, without the value."""
    return {line.rsplit(" ", 1)[0] for line in metrics.splitlines() if line and not line.startswith("#")}


# --------------------------------------------------------------------------------------------------- metrics

def test_requests_to_made_up_paths_do_not_grow_metrics(http: httpx.Client) -> None:
    assert http.post("/forecast", json={"values": [0.1] * 4}).status_code == 200
    before = http.get("/metrics").text
    made_up = ["/" + secrets.token_hex(6), "/v2/models/" + secrets.token_hex(4) + "/infer",
               "/v2/models/test-digits/versions/" + secrets.token_hex(4), "/static_content/" + secrets.token_hex(4),
               "/demo/" + secrets.token_hex(4), "/classify/" + secrets.token_hex(4)]
    for i in range(2_000):
        path = made_up[i % len(made_up)] + (str(i) if i >= len(made_up) else "")
        answer = http.request("GET" if i % 2 else "POST", path)
        assert answer.status_code == 404, (path, answer.text)
    after = http.get("/metrics").text
    assert series_names(after) == series_names(before)
    assert len(after) == len(before)
    assert not any(path.rsplit("/", 1)[1] in after for path in made_up)


# --------------------------------------------------------------------------------------------------- disclosure

def test_no_software_version_is_disclosed(http: httpx.Client) -> None:
    import bentoml
    import onnxruntime

    answers = [http.post("/forecast", json={"values": [0.1] * 4}), http.get("/nope"), http.get("/"),
               http.get("/docs.json"), http.get("/v2"), http.get("/readyz"), http.post("/models", json={})]
    for answer in answers:
        assert "server" not in answer.headers, answer.request.url
    models = answers[-1].json()["endpoints"]
    parity = models["classify"]["models"][0]["parity"]
    assert parity["passed"] is True and "versions" not in parity
    assert http.get("/v2").json()["version"] == ""
    everything = json.dumps(models) + http.get("/docs.json").text
    assert bentoml.__version__ not in everything and onnxruntime.__version__ not in everything


# --------------------------------------------------------------------------------------------------- CORS, framing

def test_cors_is_closed_by_default(http: httpx.Client) -> None:
    preflight = http.options("/forecast", headers={"origin": "https://app.example",
                                                   "access-control-request-method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers
    answer = http.post("/forecast", json={"values": [0.1] * 4}, headers={"origin": "https://app.example"})
    assert answer.status_code == 200 and not any(h.startswith("access-control-") for h in answer.headers)


def test_content_length_with_transfer_encoding_is_refused(server: Server) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    request = (b"POST /forecast HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 4\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n1a\r\n" + b'{"values": [1, 2, 3, 4]}  ' + b"\r\n0\r\n\r\n"
               b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")  # a request smuggled behind it
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(request)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 ") and b"Content-Length and Transfer-Encoding" in answer
    assert answer.count(b"HTTP/1.1 ") == 1  # the connection was closed: the smuggled request was never answered


# --------------------------------------------------------------------------------------------------- docs page

def test_the_docs_page_loads_nothing_from_elsewhere(http: httpx.Client) -> None:
    page = http.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy and "connect-src 'self'" in policy
    references = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert any(r.endswith("swagger-ui-bundle.js") for r in references)
    for reference in references:
        assert not re.match(r"^[a-z]+:|^//", reference), reference  # relative: this server
        assert http.get("/" + reference.removeprefix("./")).status_code == 200, reference
    script = http.get("/docs.js").text
    assert "./docs.json" in script and "validatorUrl: null" in script and "http" not in script


CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.skipif(not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None,
                    reason="needs Debian's chromium at /usr/bin/chromium")
def test_the_docs_page_in_a_browser_requests_only_this_server(server: Server) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox"])
        try:
            page = browser.new_page()
            requested: list[str] = []
            page.on("request", lambda request: requested.append(request.url))
            page.goto(server.url + "/")
            page.wait_for_selector("text=/classify", timeout=30_000)  # Swagger UI rendered the operations
        finally:
            browser.close()
    assert requested and all(url.startswith(server.url) for url in requested), requested


# --------------------------------------------------------------------------------------------------- raw images

def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_classify_takes_a_raw_image_body(http: httpx.Client, server: Server) -> None:
    image = gradient_png()
    form = http.post("/classify", files={"images": ("d.png", image, "image/png")}, data={"k": "3"}).json()
    raw = http.post("/classify?k=3", content=image, headers={"content-type": "image/png"})
    assert raw.status_code == 200 and raw.json() == form
    mlp = http.post("/classify", params={"k": 2, "model": "test-digits-mlp"}, content=image,
                    headers={"content-type": "image/png"}).json()
    assert mlp["model"] == server.tags["test-digits-mlp"] and len(mlp["results"][0]["top"]) == 2
    jpeg = io.BytesIO()
    Image.open(io.BytesIO(image)).save(jpeg, format="JPEG")
    assert http.post("/classify", content=jpeg.getvalue(), headers={"content-type": "image/jpeg"}).status_code == 200


@pytest.mark.parametrize("url, body, content_type, status, fragment", [
    ("/classify?size=3", None, "image/png", 400, "query parameter size: not one of k, model"),
    ("/classify?k=0", None, "image/png", 400, "k"),
    ("/classify", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "image/png", 415, "not an image"),
    ("/classify", "half of a noise PNG", "image/png", 400, "truncated"),
    ("/classify", b"GIF89a", "image/tiff", 415, "or a raw image body (image/png"),
    ("/classify", bytes(LIMITS["max_upload_bytes"] + 1), "image/png", 413, "larger than the limit"),
    ("/segment", None, "image/png", 415, "/segment takes multipart/form-data"),  # classify only
])
def test_raw_image_refusals(http: httpx.Client, url: str, body: bytes | str | None, content_type: str, status: int,
                            fragment: str) -> None:
    if body == "half of a noise PNG":
        noise = png(np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8))
        body = noise[: len(noise) // 2]
    answer = http.post(url, content=gradient_png() if body is None else body, headers={"content-type": content_type})
    assert answer.status_code == status and fragment in answer.text, answer.text


# --------------------------------------------------------------------------------------------------- pixel budget

def test_a_pixel_budget_per_request(http: httpx.Client) -> None:
    """1,000,000 pixels per image (max_image_pixels) but 1,500,000 per request (max_request_pixels): two full images
    are refused together, before the second is decoded, and each passes alone."""
    big = png(np.zeros((1_000, 1_000), dtype=np.uint8))  # a few kB: only the pixel limits stop it
    one = http.post("/classify", files={"images": ("a.png", big)})
    assert one.status_code == 200, one.text
    two = http.post("/classify", files=[("images", ("a.png", big)), ("images", ("b.png", big))])
    assert two.status_code == 413 and "images[1]" in two.text and "1,500,000 per request" in two.text
    assert http.post("/segment", files={"image": ("a.png", big)}).status_code == 200
