"""service/gate.py on its own (no server): which paths pass, which need a key, what never reaches the app behind.

The app behind the gate is a stand-in that records every request it sees and answers 200 with a `Server` header,
so each test can say exactly what got through. The live server's behaviour is in test_public_*.py.
"""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import pytest

with warnings.catch_warnings():  # Starlette 1.10 would rather drive it with httpx2; httpx is what is installed
    warnings.simplefilter("ignore", DeprecationWarning)
    from starlette.testclient import TestClient

from service.config import Access, ConfigError, load_config
from service.gate import SWAGGER, Gate, key_matches, presented_key

KEY = "s3cret-key"
DIGEST = hashlib.sha256(KEY.encode()).hexdigest()
API = ["/classify", "/segment", "/forecast", "/generate", "/predict", "/models"]


class Recorder:
    def __init__(self) -> None:
        self.paths: list[str] = []

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] == "lifespan":
            return
        self.paths.append(scope["path"])
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"server", b"BentoML Service/x"), (b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"inner"})


def client(access: dict | None = None, v2: set[str] | None = None) -> tuple[TestClient, Recorder]:
    inner = Recorder()
    parsed = Access.model_validate(access or {})
    gate = Gate(inner, api_routes=API, access=parsed, digests=parsed.key_digests({}),
                other_path=lambda path: path in (v2 or set()), swagger=SWAGGER)
    return TestClient(gate, base_url="http://127.0.0.1"), inner


def test_unknown_paths_are_404_and_never_reach_the_app() -> None:
    http, inner = client(v2={"/v2/models/m/infer"})
    for path in ["/nope", "/classify/", "/v2/models/other/infer", "/static_content/x.js", "/demo/x", "/metrics2"]:
        answer = http.post(path)
        assert answer.status_code == 404 and answer.json() == {"error": "not found", "status": 404}, path
    assert inner.paths == []
    assert http.post("/v2/models/m/infer").text == "inner" and http.post("/classify").text == "inner"


def test_without_keys_everything_served_is_open() -> None:
    http, inner = client()
    for path in [*API, "/metrics", "/docs.json", "/demo/", "/schema.json", "/livez", "/readyz"]:
        assert http.post(path).status_code == 200, path
    assert http.get("/").headers["content-type"].startswith("text/html")  # the gate's own docs page


@pytest.mark.parametrize("metrics, docs", [("open", "key"), ("key", "open"), ("off", "off"), ("off", "key")])
def test_keys_and_what_stays_open(metrics: str, docs: str) -> None:
    http, inner = client({"api_key_sha256": [DIGEST], "metrics": metrics, "docs": docs})
    expected_without_key = {"open": 200, "key": 401, "off": 404}
    for path in ["/livez", "/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"]:
        assert http.get(path).status_code == 200, path  # probes never need a key
    for path in [*API, "/schema.json"]:
        refused = http.post(path)
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer"), path
        assert http.post(path, headers={"authorization": f"Bearer {KEY}"}).status_code == 200
        assert http.post(path, headers={"x-api-key": KEY}).status_code == 200
    assert http.get("/metrics").status_code == expected_without_key[metrics]
    assert http.get("/metrics", headers={"x-api-key": KEY}).status_code == (404 if metrics == "off" else 200)
    for path in ["/", "/docs.json", "/demo/", "/static_content/swagger-ui-bundle.js"]:
        assert http.get(path).status_code == expected_without_key[docs], path
        assert http.get(path, headers={"x-api-key": KEY}).status_code == (404 if docs == "off" else 200), path
    assert "/classify" in inner.paths and "/livez" in inner.paths


@pytest.mark.parametrize("headers", [
    {"authorization": "Bearer wrong"}, {"authorization": f"Basic {KEY}"}, {"authorization": "Bearer"},
    {"x-api-key": KEY + " x"}, {"x-api-key": KEY.upper()}, {"authorization": f"Bearer {KEY * 200}"},
    {"authorization": f"Token {KEY}"}])
def test_wrong_keys_are_refused(headers: dict[str, str]) -> None:
    http, inner = client({"api_key_sha256": [DIGEST]})
    assert http.post("/forecast", headers=headers).status_code == 401
    assert inner.paths == []


def test_keys_from_the_environment_and_their_matching() -> None:
    access = Access(api_key_sha256=[DIGEST], api_keys_env="MY_KEYS")
    digests = access.key_digests({"MY_KEYS": " env-one ,env-two,, "})
    assert len(digests) == 3
    for key, ok in [(KEY, True), ("env-one", True), ("env-two", True), ("env-one ", False), ("", False)]:
        assert key_matches(key.encode() or None, digests) is ok, key
    assert Access(api_keys_env=None).key_digests({"SPECSERVE_API_KEYS": "k"}) == []
    assert presented_key([(b"authorization", b"bearer  abc ")]) == b"abc"
    assert presented_key([(b"x-api-key", b"abc")]) == b"abc"
    assert presented_key([(b"authorization", b"Basic abc")]) is None


def test_ambiguous_framing_is_refused_and_the_connection_closed() -> None:
    http, inner = client()
    answer = http.post("/forecast", content=b"{}", headers={"transfer-encoding": "chunked", "content-length": "2"})
    assert answer.status_code == 400 and answer.headers["connection"] == "close"
    assert "Content-Length and Transfer-Encoding" in answer.json()["error"] and inner.paths == []


def test_the_server_header_is_dropped_and_the_docs_page_is_local() -> None:
    http, _ = client()
    assert "server" not in http.post("/classify").headers
    page = http.get("/")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy
    assert "http" not in page.text.replace("http-equiv", "")  # every reference is relative
    assert http.get("/docs.js").headers["content-type"].startswith("text/javascript")


def test_cors_is_closed_unless_origins_are_listed() -> None:
    preflight = {"origin": "https://app.example", "access-control-request-method": "POST",
                 "access-control-request-headers": "authorization, content-type"}
    closed, _ = client()
    answer = closed.options("/forecast", headers=preflight)
    assert "access-control-allow-origin" not in answer.headers
    assert "access-control-allow-origin" not in closed.post("/forecast", headers={"origin": "https://app.example"}
                                                            ).headers
    opened, inner = client({"api_key_sha256": [DIGEST], "cors": {"allow_origins": ["https://app.example"]}})
    answer = opened.options("/forecast", headers=preflight)  # preflights carry no key, and need none
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "https://app.example"
    assert "authorization" in answer.headers["access-control-allow-headers"].lower()
    evil = opened.options("/forecast", headers={**preflight, "origin": "https://evil.example"})
    assert evil.status_code == 400 and "access-control-allow-origin" not in evil.headers
    simple = opened.post("/forecast", headers={"origin": "https://app.example", "x-api-key": KEY})
    assert simple.status_code == 200 and simple.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-origin" not in opened.post("/forecast", headers={
        "origin": "https://evil.example", "x-api-key": KEY}).headers
    assert inner.paths == ["/forecast", "/forecast"]


def test_websockets_are_closed() -> None:
    http, inner = client()
    with pytest.raises(Exception):
        with http.websocket_connect("/classify"):
            pass
    assert inner.paths == []


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "serving.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, message", [
    ("access: {api_key_sha256: [abc]}", "not a lowercase hex sha256"),
    ("access: {cors: {allow_origins: ['https://a.example/path']}}", "is not an origin"),
    ("access: {metrics: public}", "access.metrics"),
    ("connections: {header_timeout_s: 0}", "connections.header_timeout_s"),
    ("limits: {max_request_pixels: 0}", "limits.max_request_pixels"),
])
def test_bad_access_settings_name_the_field(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(write(tmp_path, text))
