"""The outermost layer of the HTTP server: what every request passes before BentoML sees it.

BentoML's own middleware (metrics, tracing, timeouts, the service's UploadGuard) lies inside the Starlette app that
`Service.to_asgi` builds, and its metrics middleware labels every request with its raw path, so a client sending
random paths would grow /metrics without bound. The gate wraps that whole app (`gated` below) and, in this order:

1. refuses requests that carry both Content-Length and Transfer-Encoding (400, connection closed): the framing is
   ambiguous, the classic request-smuggling shape, and no honest client sends both;
2. answers CORS preflights and adds CORS headers when `access.cors.allow_origins` lists origins (closed otherwise:
   no CORS header is ever sent, so browsers keep other sites' pages from reading answers);
3. answers 404 for any path the service does not serve — before BentoML's metrics see it, so their label values
   stay the service's own routes — and for /metrics or the docs when the config turns them off;
4. asks for an API key when keys are configured (401), except on the health probes and what `access` opens;
5. serves the API docs page at / itself: a local page with Swagger UI from BentoML's own bundled files, sent with a
   Content-Security-Policy that lets the browser load nothing from elsewhere (BentoML's page loads Google Tag
   Manager);
6. drops the `Server` header from every answer (BentoML names itself in it).

Keys are compared as sha256 digests with `hmac.compare_digest`, against every configured digest, so the time taken
does not depend on which key matched or how much of it did.
"""
from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Any, Callable, Iterable

from starlette.middleware.cors import CORSMiddleware
from starlette.responses import FileResponse, JSONResponse, Response

from service.config import Access, Cors
from service.uploads import ASGIApp, Message, Receive, Scope, Send

STATIC = Path(__file__).with_name("static")
HEALTH = frozenset({"/livez", "/healthz", "/readyz"})
DOCS = frozenset({"/", "/docs.json", "/docs.js", "/demo", "/demo/"})
SWAGGER_FILES = frozenset({"swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js",
                           "index.css", "favicon-light-32x32.png", "favicon-dark-32x32.png"})
# the docs page's policy: scripts, styles, images and API calls from this origin only
DOCS_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
MAX_KEY_BYTES = 1024


def _bentoml_swagger() -> Path | None:
    """BentoML's bundled Swagger UI files (served by BentoML under /static_content/), if they are where 1.4 has them."""
    from bentoml._internal import server

    folder = Path(server.__file__).parent / "static_content"
    return folder if all((folder / name).is_file() for name in SWAGGER_FILES) else None


SWAGGER = _bentoml_swagger()


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


def presented_key(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The API key a request carries: `Authorization: Bearer <key>` or `X-API-Key: <key>`; None without one."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, key = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and key.strip():
                return key.strip()
        elif name == b"x-api-key" and value.strip():
            return value.strip()
    return None


def key_matches(key: bytes | None, digests: list[bytes]) -> bool:
    """Whether sha256(key) is one of `digests`, comparing against all of them in constant time each."""
    if key is None or len(key) > MAX_KEY_BYTES:
        return False
    digest = hashlib.sha256(key).digest()
    matched = False
    for accepted in digests:
        matched |= hmac.compare_digest(digest, accepted)
    return matched


class Gate:
    def __init__(self, app: ASGIApp, *, api_routes: Iterable[str], access: Access, digests: list[bytes],
                 other_path: Callable[[str], bool] = lambda path: False, swagger: Path | None = None):
        """api_routes: the service's API paths; other_path(path) says whether a path outside the fixed ones is
        served (the open inference protocol's, which depend on the models loaded); swagger: BentoML's folder of
        Swagger UI files, served under /static_content/."""
        self.app, self.access, self.digests = app, access, digests
        self.api = frozenset(api_routes) | {"/schema.json"}  # /schema.json: what BentoML's own clients read first
        self.other_path, self.swagger = other_path, swagger
        self.inner: ASGIApp = self._guarded
        if access.cors.allow_origins:
            self.inner = cors(self._guarded, access.cors)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":  # nothing here speaks WebSocket
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            return await self.app(scope, receive, send)  # lifespan
        names = {name for name, _ in scope["headers"]}
        if b"content-length" in names and b"transfer-encoding" in names:
            response = json_error(400, "both Content-Length and Transfer-Encoding: the body's length is ambiguous",
                                  headers={"connection": "close"})
            return await response(scope, receive, send)
        await self.inner(scope, receive, send)

    def group(self, path: str) -> str | None:
        """Which kind of path this is: "health", "metrics", "docs", "swagger", "api", or None (not served)."""
        if path in HEALTH or path in ("/v2/health/live", "/v2/health/ready"):
            return "health"
        if path == "/metrics":
            return "metrics"
        if path in DOCS:
            return "docs"
        if path.startswith("/static_content/") and path.removeprefix("/static_content/") in SWAGGER_FILES:
            return "swagger" if self.swagger is not None else None
        if path in self.api or self.other_path(path):
            return "api"
        return None

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        group = self.group(path)
        exposure = {"metrics": self.access.metrics, "docs": self.access.docs, "swagger": self.access.docs,
                    "health": "open"}.get(group or "", "key")
        if group is None or exposure == "off":
            return await json_error(404, "not found")(scope, receive, send)
        if exposure == "key" and self.digests and not key_matches(presented_key(scope["headers"]), self.digests):
            response = json_error(401, "this server needs an API key: send `Authorization: Bearer <key>` or "
                                       "`X-API-Key: <key>`", headers={"www-authenticate": 'Bearer realm="specserve"'})
            return await response(scope, receive, send)
        if scope["method"] in ("GET", "HEAD") and (own := self._own_page(path)) is not None:
            return await own(scope, receive, send)
        if path == "/v2":  # the protocol's server metadata; the mounted app's root is /v2/
            scope = {**scope, "path": "/v2/", "raw_path": b"/v2/"}
        await self.app(scope, receive, without_server_header(send))

    def _own_page(self, path: str) -> Response | None:
        if path == "/":
            return FileResponse(STATIC / "docs.html", media_type="text/html; charset=utf-8",
                                headers={"content-security-policy": DOCS_POLICY, "x-content-type-options": "nosniff"})
        if path == "/docs.js":
            return FileResponse(STATIC / "docs.js", media_type="text/javascript; charset=utf-8")
        return None


def without_server_header(send: Send) -> Send:
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [(k, v) for k, v in message.get("headers", []) if k.lower() != b"server"]}
        await send(message)

    return sending


def cors(app: ASGIApp, config: Cors) -> ASGIApp:
    """Starlette's CORS middleware for the configured origins (no credentials: keys travel in headers)."""
    return CORSMiddleware(app, allow_origins=config.allow_origins, allow_methods=["GET", "POST", "OPTIONS"],
                          allow_headers=config.allow_headers, max_age=config.max_age_s,
                          expose_headers=["inference-header-content-length"])


def gated(service: Any, make_gate: Callable[[ASGIApp], ASGIApp], doc: str) -> None:
    """Put `make_gate(app)` in front of the ASGI app `service` (a bentoml Service) builds for each server process,
    and make `doc` the description /docs.json gives (BentoML's default names its own version and links badges
    from other sites).

    BentoML's worker serves `service.to_asgi()`; its Service class is a slotted attrs class, so instead of patching
    the method on the object (refused) or on the class (every service in the process), the object is given a
    subclass that adds nothing but these two members."""
    base = type(service)

    class GatedService(base):  # type: ignore[misc, valid-type]
        __slots__ = ()

        def to_asgi(self, *args: Any, **kwargs: Any) -> ASGIApp:
            return make_gate(base.to_asgi(self, *args, **kwargs))

        @property
        def doc(self) -> str:
            return doc

    GatedService.__name__ = GatedService.__qualname__ = f"Gated{base.__name__}"
    service.__class__ = GatedService
