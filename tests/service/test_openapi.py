"""service/openapi.py: what it rewrites in BentoML's generated document (the live check is test_http_fuzz.py, whose
schemathesis response checks read the served /docs.json)."""
from __future__ import annotations

from service.openapi import ERROR_SCHEMA, ERROR_STATUSES, truthful

GENERATED = {
    "paths": {
        "/livez": {"get": {"responses": {"200": {"description": "ok"}}}},
        "/segment": {"post": {
            "x-bentoml-name": "segment",
            "requestBody": {"content": {"multipart/form-data": {"schema": {
                "title": "Input", "required": ["image"],
                "properties": {"image": {"type": "string", "format": "binary"},
                               "model": {"type": "string", "default": None, "title": "Model"},
                               "overlay": {"type": "boolean", "default": False}}}}}},
            "responses": {
                "200": {"content": {"application/json": {"schema": {
                    "title": "SegmentResultIODescriptor", "properties": {"overlay_png": {"type": "string"}}}}}},
                "400": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/InvalidArgument"}}}},
            }}},
    },
    "components": {"schemas": {
        "SegmentResultIODescriptor": {"properties": {"overlay_png": {"anyOf": [{"type": "string"}, {"type": "null"}]}}},
        "InvalidArgument": {"properties": {"detail": {"type": "string"}}},
    }},
}


def test_truthful_rewrites_what_bentoml_gets_wrong() -> None:
    doc = truthful(GENERATED)
    operation = doc["paths"]["/segment"]["post"]
    assert set(ERROR_STATUSES) <= set(operation["responses"])  # 401, 413, 415, 422, 503, 504 documented
    error = doc["components"]["schemas"][ERROR_SCHEMA]
    assert error["properties"]["detail"]["type"] == "array" and error["required"] == ["error"]
    assert "InvalidArgument" not in doc["components"]["schemas"]
    assert operation["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith(ERROR_SCHEMA)
    answer = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer == {"$ref": "#/components/schemas/SegmentResultIODescriptor"}  # with overlay_png nullable
    body = operation["requestBody"]
    assert body["required"] is True
    properties = body["content"]["multipart/form-data"]["schema"]["properties"]
    assert properties["model"]["anyOf"] == [{"type": "string"}, {"type": "null"}] and "type" not in properties["model"]
    assert properties["overlay"] == {"type": "boolean", "default": False}  # a non-null default is left alone
    assert doc["paths"]["/livez"] == GENERATED["paths"]["/livez"]  # BentoML's own routes untouched
    assert GENERATED["paths"]["/segment"]["post"]["requestBody"].get("required") is None  # the input is not changed
