"""ASGI middleware guarding API request bodies before BentoML parses them.

BentoML answers *any* exception raised while it parses a request with 500, including Starlette's own "bad form"
errors and the errors of the `json.loads` it runs on every form value. So whatever would make that parse fail is
refused here first, with a 4xx that says what was wrong:

* A body larger than `max_bytes` is answered 413 without being read past the limit (from Content-Length when the
  client sends one; chunked bodies are counted as they arrive).
* A compressed body (Content-Encoding other than identity) is 415: nothing in the stack decodes it, so it would
  otherwise reach the parsers as opaque bytes.
* An API with file parameters takes multipart/form-data only (415 otherwise); multipart without a boundary is 400.
* Form bodies (multipart and urlencoded) are parsed here with python-multipart, the parser Starlette uses, within
  the limits Starlette's `Request.form()` applies for BentoML (1000 fields, 1000 files, 1 MiB per plain value):
  malformed → 400, a plain value over 1 MiB → 413, a value `json.loads` cannot take (nested too deep, an integer
  of more than 4300 digits) → 400.
* A file field sent as a plain value (`-F images=foo` instead of `-F images=@foo.png`) is 400: BentoML would
  otherwise treat the value as a URL and download it from the server (a request forgery surface). So is a file sent
  in any other field: BentoML would parse it as JSON text.

* A raw image body (Content-Type image/png, image/jpeg, image/gif, image/bmp or image/webp) is taken on the routes
  given `raw_images` (classify): it is replayed to the app as the multipart form it stands for — the image as the
  route's file field, the query string's parameters (only those the API takes) as its other fields — so BentoML
  parses, validates and documents one API, and the image is decoded and checked like any upload.

Bodies of API calls are buffered here (at most `max_bytes`) and replayed to the app unchanged (or, raw images, as
their form); the parsed form travels in the scope (FORM_KEY), or else the body (BODY_KEY), so the lean routes of
service/lean.py need not parse or read it again.
"""
from __future__ import annotations

import json
import secrets
import time
from typing import Any, Awaitable, Callable, MutableMapping, NamedTuple, Sequence
from urllib.parse import parse_qsl, unquote_plus

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, QuerystringParser, parse_options_header

from service.errors import BAD_REQUEST, TOO_LARGE, UNSUPPORTED, RequestError, error_response

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MULTIPART, URLENCODED = "multipart/form-data", "application/x-www-form-urlencoded"
FORM_KEY = "specserve.form"  # the scope entry holding the parsed form of a guarded request
BODY_KEY = "specserve.body"  # and the one holding its body as received
PARSE_CPU_KEY = "specserve.parse_cpu"  # and the CPU seconds its parse took here
RAW_IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/bmp", "image/webp")
# Starlette's Request.form() defaults, which BentoML uses; beyond them Starlette raises (and BentoML answers 500).
MAX_FORM_FIELDS = 1000
MAX_FORM_FILES = 1000
MAX_FORM_VALUE_BYTES = 1024 * 1024


class FormPart(NamedTuple):
    name: str
    is_file: bool
    data: bytes = b""  # the file's bytes, or the value's (cut just past MAX_FORM_VALUE_BYTES: then refused)


class RawImageRoute(NamedTuple):
    """A route that also takes a raw image body: its file field, and the other fields the query string may set."""

    file_field: str
    fields: frozenset[str]


def bentoml_media_type(headers: dict[str, bytes]) -> str:
    """The media type exactly as BentoML reads it to pick its parser (case-sensitive; none means JSON)."""
    return headers.get("content-type", b"application/json").decode("latin-1").split(";")[0].strip()


def check_value(name: str, raw: bytes) -> None:
    """Refuse a plain form value BentoML's `json.loads(value)` would crash on (it catches only JSONDecodeError)."""
    if len(raw) > MAX_FORM_VALUE_BYTES:
        raise RequestError(TOO_LARGE, f"form field {name!r}: more than {MAX_FORM_VALUE_BYTES:,} bytes, the limit of "
                                      f"a form value; send long values as a JSON body")
    try:
        json.loads(raw.decode("utf-8", "replace"))
    except json.JSONDecodeError:
        pass  # not JSON: BentoML keeps the text as it is
    except RecursionError:
        raise RequestError(BAD_REQUEST, f"form field {name!r}: nested too deeply to be read") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        reason = str(e).split(";")[0]  # drop Python's advice to the server's programmer
        raise RequestError(BAD_REQUEST, f"form field {name!r}: unreadable value ({reason})") from None


def add_part(parts: list[FormPart], part: FormPart) -> None:
    """Append `part`, refusing the form past Starlette's counts of files and fields."""
    parts.append(part)
    if len(parts) > min(MAX_FORM_FILES, MAX_FORM_FIELDS):  # count only when it can matter
        files = sum(p.is_file for p in parts)
        if files > MAX_FORM_FILES or len(parts) - files > MAX_FORM_FIELDS:
            raise RequestError(BAD_REQUEST, f"more than {MAX_FORM_FILES:,} files or {MAX_FORM_FIELDS:,} fields in "
                                            f"the form")


def multipart_parts(body: bytes, boundary: bytes) -> list[FormPart]:
    """The parts of a multipart `body` (field name, whether it is a file upload, its bytes); RequestError when the
    body is malformed or a part is over the limits (see the module docstring)."""
    parts: list[FormPart] = []
    header: list[bytes] = [b"", b""]  # the header being read: name, value
    disposition, value = b"", bytearray()
    pieces: list[bytes] = []  # of the file being read

    def on_part_begin() -> None:
        nonlocal disposition
        disposition = b""
        value.clear()
        pieces.clear()

    def on_header_end() -> None:
        nonlocal disposition
        if header[0].strip().lower() == b"content-disposition":
            disposition = header[1]
        header[:] = [b"", b""]

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if parts[-1].is_file:
            pieces.append(data[start:end])
        elif len(value) <= MAX_FORM_VALUE_BYTES:  # past the limit: only the size matters
            value.extend(data[start:end])

    def on_headers_finished() -> None:
        _, params = parse_options_header(disposition)
        if b"name" not in params:
            raise RequestError(BAD_REQUEST, "a multipart part has no name (Content-Disposition: form-data; name=...)")
        add_part(parts, FormPart(params[b"name"].decode("utf-8", "replace"), b"filename" in params))

    def on_part_end() -> None:
        if parts[-1].is_file:
            parts[-1] = parts[-1]._replace(data=b"".join(pieces))
        else:
            check_value(parts[-1].name, bytes(value))
            parts[-1] = parts[-1]._replace(data=bytes(value))

    def header_piece(index: int) -> Callable[[bytes, int, int], None]:
        def add(data: bytes, start: int, end: int) -> None:
            header[index] += data[start:end]
        return add

    callbacks = {"on_part_begin": on_part_begin, "on_header_field": header_piece(0),
                 "on_header_value": header_piece(1), "on_header_end": on_header_end,
                 "on_headers_finished": on_headers_finished, "on_part_data": on_part_data, "on_part_end": on_part_end}
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        parser.write(body)
        parser.finalize()
    except FormParserError as e:
        raise RequestError(BAD_REQUEST, f"malformed multipart body ({e})") from None
    return parts


def urlencoded_parts(body: bytes) -> list[FormPart]:
    """The fields of an application/x-www-form-urlencoded `body`, checked as `multipart_parts` checks values."""
    parts: list[FormPart] = []
    field: list[bytearray] = [bytearray(), bytearray()]  # name, value as sent (percent-encoded)

    def on_field_start() -> None:
        field[0].clear()
        field[1].clear()

    def piece(index: int) -> Callable[[bytes, int, int], None]:
        def add(data: bytes, start: int, end: int) -> None:
            field[index].extend(data[start:end])
            if len(field[0]) + len(field[1]) > MAX_FORM_VALUE_BYTES:
                raise RequestError(TOO_LARGE, f"a form field of more than {MAX_FORM_VALUE_BYTES:,} bytes; send long "
                                              f"values as a JSON body")
        return add

    def on_field_end() -> None:
        name = unquote_plus(field[0].decode("latin-1"))
        add_part(parts, FormPart(name, False))
        check_value(name, unquote_plus(field[1].decode("latin-1")).encode("utf-8"))

    parser = QuerystringParser({"on_field_start": on_field_start, "on_field_name": piece(0),  # type: ignore[arg-type]
                                "on_field_data": piece(1), "on_field_end": on_field_end})
    try:
        parser.write(body)
        parser.finalize()
    except FormParserError as e:
        raise RequestError(BAD_REQUEST, f"malformed form body ({e})") from None
    return parts


def misplaced_parts(parts: Sequence[tuple], file_fields: set[str]) -> str | None:
    """Why the parts do not fit the API (a value where a file belongs, or a file where a value belongs), or None."""
    values_in_file_fields = sorted({name for name, is_file, *_ in parts if name in file_fields and not is_file})
    if values_in_file_fields:
        return (f"{', '.join(values_in_file_fields)}: must be a file upload (curl -F 'name=@file.png'), "
                f"got a plain value")
    files_elsewhere = sorted({name for name, is_file, *_ in parts if name not in file_fields and is_file})
    if files_elsewhere:
        return f"{', '.join(files_elsewhere)}: a file upload where a plain value (or nothing) is expected"
    return None


def header_problem(path: str, headers: dict[str, bytes], file_fields: set[str],
                   raw_images: bool = False) -> RequestError | None:
    """What is wrong with a request's Content-Encoding or Content-Type for the API at `path`, or None.
    raw_images: the API also takes a raw image body."""
    encoding = headers.get("content-encoding", b"identity").strip().lower()
    if encoding not in (b"", b"identity"):
        return RequestError(UNSUPPORTED, f"Content-Encoding {encoding.decode('latin-1')!r} is not supported; send "
                                         f"the body uncompressed")
    media = bentoml_media_type(headers)
    if raw_images and media.lower() in RAW_IMAGE_TYPES:
        return None
    if file_fields and media != MULTIPART:
        also = f" or a raw image body ({', '.join(RAW_IMAGE_TYPES)})" if raw_images else ""
        return RequestError(UNSUPPORTED, f"{path} takes {MULTIPART} (file field: {', '.join(sorted(file_fields))})"
                                         f"{also}, got Content-Type {media or 'none'!r}")
    if media == MULTIPART and b"boundary" not in parse_options_header(headers["content-type"])[1]:
        return RequestError(BAD_REQUEST, f"Content-Type {MULTIPART} without its boundary parameter")
    return None


def form_of(body: bytes, headers: dict[str, bytes], file_fields: set[str]) -> list[FormPart] | None:
    """The parts of a buffered form body for an API whose file parameters are `file_fields`; None for a JSON body
    (or anything else, which BentoML reads as JSON: pydantic answers its errors with 400). RequestError when the
    form is malformed, over the limits or does not fit the API."""
    media = bentoml_media_type(headers)
    if media == MULTIPART:
        parts = multipart_parts(body, parse_options_header(headers["content-type"])[1][b"boundary"])
    elif media == URLENCODED:
        parts = urlencoded_parts(body)
    else:
        return None
    if problem := misplaced_parts(parts, file_fields):
        raise RequestError(BAD_REQUEST, problem)
    return parts


def raw_image_form(image: bytes, media: str, query: bytes,
                   route: RawImageRoute) -> tuple[bytes, bytes, list[FormPart]]:
    """(multipart body, its Content-Type, its parts) standing for a raw image body and the request's query
    parameters."""
    try:
        params = parse_qsl(query.decode("latin-1"), keep_blank_values=True, max_num_fields=len(route.fields) * 4)
    except ValueError as e:
        raise RequestError(BAD_REQUEST, f"unreadable query string ({e})") from None
    unknown = sorted({name for name, _ in params if name not in route.fields})
    if unknown:
        raise RequestError(BAD_REQUEST, f"query parameter {', '.join(unknown)}: not one of "
                                        f"{', '.join(sorted(route.fields))}")
    boundary = secrets.token_hex(16).encode()
    parts, form = [], []
    for name, value in params:
        check_value(name, value.encode("utf-8"))
        form.append(FormPart(name, False, value.encode("utf-8")))
        parts.append(b'--%s\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n'
                     % (boundary, name.encode(), value.encode("utf-8")))
    extension = media.split("/")[1]
    parts.append(b'--%s\r\nContent-Disposition: form-data; name="%s"; filename="upload.%s"\r\n'
                 b"Content-Type: %s\r\n\r\n" % (boundary, route.file_field.encode(), extension.encode(), media.encode()))
    body = b"".join(parts) + image + b"\r\n--%s--\r\n" % boundary
    return body, b"multipart/form-data; boundary=" + boundary, [*form, FormPart(route.file_field, True, image)]


class UploadGuard:
    def __init__(self, app: ASGIApp, max_bytes: int, routes: dict[str, set[str]],
                 raw_images: dict[str, RawImageRoute] | None = None):
        """routes: API route path → names of its parameters that must be file uploads (other paths pass as is);
        raw_images: routes that also take a raw image body (see the module docstring)."""
        self.app, self.max_bytes, self.routes = app, max_bytes, routes
        self.raw_images = raw_images or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.routes:
            return await self.app(scope, receive, send)
        file_fields = self.routes[scope["path"]]
        headers = {k.decode("latin-1").lower(): v for k, v in scope["headers"]}
        declared = headers.get("content-length", b"0")
        if not declared.isdigit():
            return await error_response(BAD_REQUEST, f"invalid Content-Length {declared!r}")(scope, receive, send)
        if int(declared) > self.max_bytes:
            return await self._too_large(scope, receive, send)
        raw_route = self.raw_images.get(scope["path"])
        if problem := header_problem(scope["path"], headers, file_fields, raw_images=raw_route is not None):
            return await problem.response()(scope, receive, send)
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
        media = bentoml_media_type(headers).lower()
        parse_started = time.thread_time()
        try:
            if raw_route is not None and media in RAW_IMAGE_TYPES:
                body, content_type, form = raw_image_form(body, media, scope.get("query_string", b""), raw_route)
                kept = [(k, v) for k, v in scope["headers"] if k.lower() not in (b"content-type", b"content-length")]
                scope = {**scope, "query_string": b"", "headers": [
                    *kept, (b"content-type", content_type), (b"content-length", str(len(body)).encode())]}
            else:
                form = form_of(body, headers, file_fields)
        except RequestError as e:
            return await e.response()(scope, receive, send)
        # parsed once: the lean routes (service/lean.py) answer from the form, or from the body of a JSON call
        scope = {**scope, FORM_KEY: form} if form is not None else {**scope, BODY_KEY: body}
        scope[PARSE_CPU_KEY] = time.thread_time() - parse_started  # charged to its endpoint (service/admission.py)
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
