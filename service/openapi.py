"""/docs.json made to tell the truth about the API, from the document BentoML generates.

BentoML's generated document disagrees with what the service answers (schemathesis with response checks found it):
its error bodies carry `detail` as a string where validation errors carry an array; its inline copy of each answer's
schema drops the null branch of nullable fields (the component of the same title keeps it); it lists only 200/400/404/500
where the service also answers 401 (API keys), 413 (body and pixel limits), 415 (media types), 422 (content a model
cannot take), 503/504 (BentoML's own concurrency and timeout limits); a parameter that defaults to null is typed as a
plain string, so null reads as schema-violating; and a request body with required fields is not marked required.
`truthful` rewrites those parts of the document; `TruthfulDocs` serves the rewritten document in place of BentoML's
(computed on first request, then kept: the document does not change while the server runs).
"""
from __future__ import annotations

import copy
import json
from typing import Any

from service.uploads import ASGIApp, Message, Receive, Scope, Send

ERROR_SCHEMA = "Error"
ERROR = {
    "type": "object", "title": ERROR_SCHEMA, "required": ["error"],
    "description": "What was wrong: specserve's own errors carry `status`; BentoML's validation errors carry "
                   "`detail`, pydantic's list of problems",
    "properties": {
        "error": {"type": "string", "description": "one line saying what was wrong and where"},
        "status": {"type": "integer", "description": "the HTTP status, repeated"},
        "detail": {"type": "array", "items": {"type": "object"},
                   "description": "per invalid parameter: its location (loc), message (msg) and kind (type)"},
    },
}
BENTOML_ERROR_SCHEMAS = ("InvalidArgument", "NotFound", "InternalServerError")
# Every status an API operation can answer besides 200, and why.
ERROR_STATUSES = {
    "400": "Bad Request: a parameter missing, of the wrong type or out of range; a malformed body",
    "401": "Unauthorized: the serving config asks for an API key and none (or a wrong one) was sent",
    "404": "Not Found: no model of that name serves this endpoint",
    "413": "Content Too Large: the body, an image's or the request's pixels over the serving config's limits",
    "415": "Unsupported Media Type: a Content-Type or Content-Encoding this endpoint does not take, or an upload "
           "that is no image",
    "422": "Unprocessable Content: well-formed, but not something the model can take (e.g. characters outside its "
           "vocabulary)",
    "500": "Internal Server Error: a fault of the server, logged there",
    "503": "Service Unavailable: more requests in flight than the serving config's max_concurrency",
    "504": "Gateway Timeout: the request took longer than the serving config's timeout_s",
}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """A property schema that admits null where its default is null (BentoML drops the null branch)."""
    if schema.get("default", 0) is not None or "anyOf" in schema or "type" not in schema:
        return schema
    kept = {k: v for k, v in schema.items() if k not in ("type", "format")}
    branch = {k: schema[k] for k in ("type", "format") if k in schema}
    return {**kept, "anyOf": [branch, {"type": "null"}]}


def truthful(document: dict[str, Any]) -> dict[str, Any]:
    """A copy of BentoML's OpenAPI `document` rewritten as the module docstring says."""
    doc = copy.deepcopy(document)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for name in BENTOML_ERROR_SCHEMAS:
        schemas.pop(name, None)
    schemas[ERROR_SCHEMA] = ERROR
    error_content = {"application/json": {"schema": {"$ref": f"#/components/schemas/{ERROR_SCHEMA}"}}}
    for path, operations in doc.get("paths", {}).items():
        for operation in operations.values():
            if "x-bentoml-name" not in operation:
                continue  # BentoML's health and metrics routes
            responses = operation.setdefault("responses", {})
            for answer in responses.get("200", {}).get("content", {}).values():
                title = answer.get("schema", {}).get("title")
                if title in schemas:  # the component keeps the null branches the inline copy lost
                    answer["schema"] = {"$ref": f"#/components/schemas/{title}"}
            for status, why in ERROR_STATUSES.items():
                responses[status] = {"description": why, "content": error_content}
            body = operation.get("requestBody")
            if not body:
                continue
            for media in body.get("content", {}).values():
                schema = media.get("schema", {})
                properties = schema.get("properties", {})
                for name, prop in properties.items():
                    properties[name] = _nullable(prop)
                if schema.get("required"):
                    body["required"] = True
    return doc


class TruthfulDocs:
    """Serve truthful(BentoML's /docs.json) at /docs.json; everything else passes through."""

    PATH = "/docs.json"

    def __init__(self, app: ASGIApp):
        self.app = app
        self.body: bytes | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.PATH or scope["method"] not in ("GET", "HEAD"):
            return await self.app(scope, receive, send)
        if self.body is None:
            self.body = await self._generated(scope, receive)
            if self.body is None:  # BentoML failed to make it (it logged why): answer as it did
                return await self.app(scope, receive, send)
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(self.body)).encode())]})
        await send({"type": "http.response.body", "body": self.body if scope["method"] == "GET" else b""})

    async def _generated(self, scope: Scope, receive: Receive) -> bytes | None:
        """BentoML's document, asked of the app behind this one, rewritten; None if it did not answer 200."""
        status, chunks = 0, []

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app({**scope, "method": "GET"}, receive, capture)
        if status != 200:
            return None
        return json.dumps(truthful(json.loads(b"".join(chunks)))).encode()
