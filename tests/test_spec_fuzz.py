"""Property-based fuzzing of the loader and the builder: whatever the mutation, only SpecError escapes.

Mutations start from the zoo specs (so they reach deep into valid structure) and either edit the parsed document
(replace a value anywhere by junk, delete or add keys, duplicate list items) or the raw text (delete, insert, swap).
"""
from __future__ import annotations

import math

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.builder import infer
from models.errors import SpecError
from models.spec import load_spec_text
from tests.conftest import ROOT, SPECS

TEXTS = {p.name: p.read_text() for p in SPECS}
DOCS = {name: yaml.safe_load(text) for name, text in TEXTS.items()}

junk = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1, 2**31, 10**12, math.inf, -math.inf, math.nan, 1e308]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["conv2d", "relu", "$c1", "$c2[5]", "residual", "b5", "same", "", "inception", "../../etc/passwd"]),
    st.lists(st.integers(min_value=-3, max_value=600), max_size=4),
    st.dictionaries(st.sampled_from(["out", "kernel", "layers", "body", "times", "name", "x"]), st.integers(-2, 300), max_size=3),
)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, prefix + (i,))


def _mutate(doc, path, op, new):
    if not path:
        return new if op == "replace" else doc
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    key = path[-1]
    if op == "replace":
        parent[key] = new
    elif op == "delete":
        del parent[key]
    elif op == "duplicate" and isinstance(parent, list):
        parent.insert(key, parent[key])
    elif op == "add" and isinstance(parent, dict):
        parent[str(new)[:8] or "k"] = new
    return doc


def _load_and_infer(text: str) -> None:
    try:
        infer(load_spec_text(text, "fuzz.yaml", base_dir=ROOT / "specs"))
    except SpecError as err:
        assert err.problems and all(p.location is not None and p.location.line >= 1 for p in err.problems)


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_structural_mutations_raise_only_spec_errors(data):
    name = data.draw(st.sampled_from(sorted(DOCS)))
    doc = yaml.safe_load(TEXTS[name])
    for _ in range(data.draw(st.integers(1, 3))):
        paths = list(_paths(doc))
        path = data.draw(st.sampled_from(paths))
        op = data.draw(st.sampled_from(["replace", "replace", "delete", "duplicate", "add"]))
        doc = _mutate(doc, path, op, data.draw(junk))
    _load_and_infer(yaml.safe_dump(doc, sort_keys=False))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_text_mutations_raise_only_spec_errors(data):
    text = TEXTS[data.draw(st.sampled_from(sorted(TEXTS)))]
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, max(0, len(text) - 1)))
        op = data.draw(st.sampled_from(["delete", "insert", "swap_lines"]))
        if op == "delete":
            text = text[:pos] + text[pos + data.draw(st.integers(1, 20)):]
        elif op == "insert":
            text = text[:pos] + data.draw(st.sampled_from(["{", "]", ": ", "- ", "\t", "&a ", "*a", "\n  ", "!!str ", "0", "-"])) + text[pos:]
        else:
            lines = text.splitlines()
            i, j = data.draw(st.integers(0, len(lines) - 1)), data.draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
            text = "\n".join(lines)
    _load_and_infer(text)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_spec_errors(raw):
    try:
        infer(load_spec_text(raw, "bytes.yaml"))
    except SpecError:
        pass
