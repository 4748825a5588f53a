"""HTTP fuzzing of the live service through its own OpenAPI document (/docs.json) with schemathesis: every
operation, every parameter, values inside and outside their schemas, undeclared Content-Types → never a 5xx, and
every answer conforms to the document (schemathesis's response checks: documented status codes, response bodies
and headers matching their schemas, schema-violating requests refused, schema-valid ones accepted).

The document cannot say that an upload must be a decodable image of at most so many pixels, or that a prefix must
use the model's characters: for schema-valid requests those refusals (413, 415, 422, each documented with the
reason) count as accepted behaviour; a 400 for a schema-valid request does not (it would mean the document lies).

Per operation, schemathesis's coverage phase sends each parameter's boundary and invalid values (and bodies under
Content-Types the operation does not declare), and its fuzzing phase sends `EXAMPLES` hypothesis-generated requests,
valid and invalid (SPECSERVE_FUZZ_SCALE=10 multiplies them for a longer hunt). Left alone, nearly every generated
request would stop at the first gate — a random `model` is a 404, random bytes are no image, random text is not in
the vocabulary — so `flatmap_body` also offers each generated body with those gates opened: the default model,
real images of fuzzed size, mode and format, a prefix mapped into the model's vocabulary (and top_k within it), a
series repeated up to the model's window. The other fuzzed values (k, overlay, length, temperature, seed, the
series' numbers) then reach the decoders and the onnxruntime calls. The generation seed is fixed, so a run is
repeatable; the last test prints the status codes seen per operation (pytest -s).
"""
from __future__ import annotations

import io
import os
from collections import Counter, defaultdict
from typing import Any

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from PIL import Image

from live_server import Server

SCALE = float(os.environ.get("SPECSERVE_FUZZ_SCALE", "1"))
EXAMPLES = max(1, int(100 * SCALE))  # per operation in the fuzzing phase: ~35 s in all on a loaded 2-core box
API = ("/classify", "/segment", "/forecast", "/generate", "/models")

# status codes answered, per operation ("POST /classify" → Counter), read by the summary test at the end
SEEN: defaultdict[str, Counter[int]] = defaultdict(Counter)


def image_file(size: tuple[int, int], mode: str, file_format: str, seed: int) -> bytes:
    """Noise of `size` (W, H) in `mode`, saved as `file_format` (as RGB where the format cannot store the mode)."""
    noise = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0]), dtype=np.uint8))
    buffer = io.BytesIO()
    try:
        noise.convert(mode).save(buffer, format=file_format)
    except (OSError, ValueError):  # e.g. JPEG has no alpha or palette
        buffer = io.BytesIO()
        noise.convert("RGB").save(buffer, format=file_format)
    return buffer.getvalue()


images = st.builds(image_file, st.tuples(st.integers(1, 96), st.integers(1, 96)),
                   st.sampled_from(["L", "RGB", "RGBA", "P", "1", "LA"]),
                   st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "WEBP"]), st.integers(0, 255))


def opened_gates(path: str, body: dict[str, Any], vocab: list[str],
                 window: int) -> st.SearchStrategy[dict[str, Any]]:
    """`body` with what would stop it before the model made valid (see the module docstring), the rest kept. Only
    values of the documented shape are replaced (a model name, a list of 1..32 uploads, an upload), so that a
    schema-violating body stays schema-violating: the response checks judge each request by what was generated."""
    if not (body.get("model") is None or isinstance(body.get("model"), str)):
        return st.just(body)  # e.g. model=[]: a form sends no part for an empty list, so it must not be "repaired"
    opened = {k: v for k, v in body.items() if k != "model"}  # no model: the endpoint's default
    uploads = body.get("images")
    if path == "/classify" and isinstance(uploads, list) and 1 <= len(uploads) <= 32:
        return st.lists(images, min_size=len(uploads), max_size=len(uploads)).map(
            lambda imgs: {**opened, "images": imgs})
    if path == "/segment" and isinstance(body.get("image"), (str, bytes)):
        return images.map(lambda img: {**opened, "image": img})
    if path == "/generate":
        if isinstance(body.get("prefix"), str) and body["prefix"]:
            opened["prefix"] = "".join(vocab[ord(ch) % len(vocab)] for ch in body["prefix"])
        if isinstance(body.get("top_k"), int) and body["top_k"] >= 0:
            opened["top_k"] = body["top_k"] % (len(vocab) + 1)
    if path == "/forecast" and isinstance(body.get("values"), list) and body["values"]:
        opened["values"] = body["values"] * -(-window // len(body["values"]))  # repeated up to the window
    return st.just(opened)


@pytest.fixture(scope="module")
def api_schema(server: Server) -> schemathesis.BaseSchema:
    """The service's published OpenAPI document, loaded from the live server, with the gate-opening hook."""
    models = httpx.post(f"{server.url}/models", json={}, timeout=60).json()["endpoints"]
    vocab = [t for t in models["generate"]["models"][0]["input"]["vocab"] if len(t) == 1]
    window = models["forecast"]["models"][0]["input"]["window"]
    config = schemathesis.Config.from_dict({
        "generation": {"mode": "all"}, "seed": 20261126,
        "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "401", "404", "413", "415", "422"]},
                   # schemathesis's default list of refusals, and 413: a body over the size limit is refused unread
                   "negative_data_rejection": {"expected-statuses": [
                       "400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]}}})
    schema = schemathesis.openapi.from_url(f"{server.url}/docs.json", config=config)

    def flatmap_body(context: schemathesis.HookContext, body: Any) -> st.SearchStrategy[Any]:
        path = context.operation.path if context.operation else ""
        if not isinstance(body, dict) or path not in API:
            return st.just(body)  # a schema-violating body (a list, a string, ...) is sent as generated
        return st.one_of(st.just(body), opened_gates(path, body, vocab, window))

    schema.hook(flatmap_body)
    return schema


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    """schemathesis 4.32's pytest integration reads and rewrites `node._nodeid` (to name each operation's subtest),
    an attribute pytest 9 no longer has; this gives the test item one."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_gets_a_server_error(case: schemathesis.Case) -> None:
    response = case.call(timeout=60)
    SEEN[f"{case.method.upper()} {case.path}"][response.status_code] += 1
    case.validate_response(response)  # every check schemathesis has, not_a_server_error among them


def test_fuzzing_reached_every_operation() -> None:
    """The fuzzing above sent requests to every API operation and some got through to a model (2xx)."""
    if not SEEN:
        pytest.skip("run with test_no_request_gets_a_server_error")
    print("\nstatus codes per operation:", {op: dict(sorted(codes.items())) for op, codes in sorted(SEEN.items())})
    for path in API:
        codes = SEEN[f"POST {path}"]
        assert codes, f"no request sent to {path}"
        assert any(200 <= code < 300 for code in codes), (path, codes)
        assert not any(code >= 500 for code in codes), (path, codes)
