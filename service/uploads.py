"""ASGI middleware guarding request bodies before BentoML parses them.

* A body larger than `max_bytes` is answered 413 without being read past the limit (from Content-Length when
  the client sends one; chunked bodies are counted as they arrive).
* In a multipart request, a file field sent as a plain value (`-F images=foo` instead of `-F images=@foo.png`) is
  answered 400: BentoML would otherwise treat the value as a URL and download it from the server (a request
  forgery surface, and a 500 when the value is not a URL). So is a file sent in any other field: BentoML would
  parse it as JSON text and answer 500 when it is binary.

Bodies of API calls are buffered here (at most `max_bytes`) and replayed to the app unchanged.
"""
from __future__ import annotations

from typing import Any, Awaitable, Callable, MutableMapping

from python_multipart.multipart import parse_options_header

from service.errors import BAD_REQUEST, TOO_LARGE, error_response

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def multipart_parts(body: bytes, boundary: bytes) -> list[tuple[str, bool]]:
    """(field name, is a file upload) of each part of a multipart `body`, read from the parts' headers only."""
    parts: list[tuple[str, bool]] = []
    delimiter = b"--" + boundary
    at = body.find(delimiter)
    while at != -1 and body[at + len(delimiter): at + len(delimiter) + 2] != b"--":
        end = body.find(b"\r\n\r\n", at)
        if end == -1:
            break
        for line in body[at + len(delimiter): end].split(b"\r\n"):
            key, _, value = line.partition(b":")
            if key.strip().lower() == b"content-disposition":
                _, params = parse_options_header(value.strip())
                parts.append((params.get(b"name", b"").decode("utf-8", "replace"), b"filename" in params))
        at = body.find(delimiter, end)
    return parts


def misplaced_parts(parts: list[tuple[str, bool]], file_fields: set[str]) -> str | None:
    """Why the parts do not fit the API (a value where a file belongs, or a file where a value belongs), or None."""
    values_in_file_fields = sorted({name for name, is_file in parts if name in file_fields and not is_file})
    if values_in_file_fields:
        return (f"{', '.join(values_in_file_fields)}: must be a file upload (curl -F 'name=@file.png'), "
                f"got a plain value")
    files_elsewhere = sorted({name for name, is_file in parts if name not in file_fields and is_file})
    if files_elsewhere:
        return f"{', '.join(files_elsewhere)}: a file upload where a plain value (or nothing) is expected"
    return None


class UploadGuard:
    def __init__(self, app: ASGIApp, max_bytes: int, routes: dict[str, set[str]]):
        """routes: API route path → names of its parameters that must be file uploads (other paths pass as is)."""
        self.app, self.max_bytes, self.routes = app, max_bytes, routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.routes:
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v for k, v in scope["headers"]}
        declared = headers.get("content-length", b"0")
        if not declared.isdigit():
            return await error_response(BAD_REQUEST, f"invalid Content-Length {declared!r}")(scope, receive, send)
        if int(declared) > self.max_bytes:
            return await self._too_large(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                return await self._too_large(scope, receive, send)
        body = b"".join(chunks)
        kind, params = parse_options_header(headers.get("content-type", b""))
        if kind == b"multipart/form-data" and b"boundary" in params:
            problem = misplaced_parts(multipart_parts(body, params[b"boundary"]), self.routes[scope["path"]])
            if problem:
                return await error_response(BAD_REQUEST, problem)(scope, receive, send)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: wait for the client to go away, as servers expect
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        await error_response(TOO_LARGE, f"request body larger than the limit of {self.max_bytes:,} bytes")(
            scope, receive, send)
