"""Property-based fuzzing of the loader and the builder: whatever the input, only SpecError escapes.

Mutations start from the zoo specs (so they reach deep into valid structure) and either edit the parsed document
(replace a value anywhere by junk, delete or add keys, duplicate list items) or the raw text (delete, insert, swap).
Generated specs are new networks drawn from the layer registry itself: every registered layer, with arguments drawn
from its own pydantic model's field types (mostly plausible values, sometimes edge cases), stacked and nested in
combinators, so a layer added tomorrow is fuzzed without touching this file.

Generated DAGs add the spec language 2 on top: entries named (`as:`) and wired (`from:`) to names drawn from a
small pool (so references resolve, dangle, point forward or form cycles), operators (add, multiply, concat along
an axis), arguments written as expressions over parameters and the input's shape (valid, typo'd, dividing by
zero, enormous), blocks with defaults, and repeats with `each` / `first`; sometimes auxiliary heads and an
`outputs` section naming main and auxiliary outputs (names defined, dangling, repeated or the main one; weights
valid, zero, negative, booleans, text, infinite; junk where a list or mapping belongs).

6,400 examples per run (2,500 structural + 1,500 text + 400 bytes + 1,200 generated + 800 DAGs);
SPECSERVE_FUZZ_SCALE=10 multiplies them for a longer hunt.
"""
from __future__ import annotations

import random

import math
import os
import subprocess
import sys
import typing

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.build import MAX_PARAMETERS, infer
from models.errors import SpecError
from models.layers.builtin import LAYERS
from models.spec.load import load_spec_text
from tests.conftest import ROOT, SPECS

SCALE = float(os.environ.get("SPECSERVE_FUZZ_SCALE", "1"))


def examples(n: int) -> int:
    return max(1, int(n * SCALE))


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


@settings(max_examples=examples(2500), deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
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


@settings(max_examples=examples(1500), deadline=None, suppress_health_check=[HealthCheck.too_slow])
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


@settings(max_examples=examples(400), deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_spec_errors(raw):
    try:
        infer(load_spec_text(raw, "bytes.yaml"))
    except SpecError:
        pass


# ------------------------------------------------------------------------------------------ generated networks
def _value(annotation) -> st.SearchStrategy:
    """A value for a layer argument of this type: mostly in the useful range, sometimes an edge case."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return st.sampled_from(args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return st.one_of([_value(a) for a in args])
    if origin is tuple:
        return st.tuples(*(_value(a) for a in args))
    if origin is list:
        return st.lists(_value(args[0]), min_size=1, max_size=3)
    if annotation is type(None):
        return st.none()
    if annotation is bool:
        return st.booleans()
    if annotation is int:
        return st.one_of(st.integers(0, 8), st.integers(1, 300), st.sampled_from([-1, 10**6, 2**40]))
    if annotation is float:
        return st.one_of(st.floats(0, 1), st.sampled_from([0.0, 1.0, -0.5, 1e-12, 1e12]))
    return st.none()


@st.composite
def _layer(draw, depth: int = 0):
    name = draw(st.sampled_from(LAYERS.names() + (["residual", "repeat", "concat"] if depth < 2 else [])))
    if name == "residual":
        return {"residual": {"body": draw(st.lists(_layer(depth + 1), min_size=1, max_size=3))}}
    if name == "repeat":
        return {"repeat": {"times": draw(st.integers(0, 4)), "layers": draw(st.lists(_layer(depth + 1), min_size=1, max_size=2))}}
    if name == "concat":
        return {"concat": draw(st.lists(st.lists(_layer(depth + 1), min_size=1, max_size=2), min_size=1, max_size=3))}
    fields = {k: f for k, f in LAYERS.entry(name).obj.args.model_fields.items() if k != "name"}
    required = [k for k, f in fields.items() if f.is_required() and draw(st.integers(0, 9)) > 0]  # usually given
    optional = sorted(k for k in fields if k not in required)
    chosen = required + (draw(st.lists(st.sampled_from(optional), unique=True, max_size=len(optional))) if optional else [])
    args = {k: draw(_value(fields[k].annotation)) for k in chosen}
    return {name: args} if args else name


@st.composite
def _generated_spec(draw) -> str:
    task = draw(st.sampled_from(["classification", "segmentation", "sequence", "regression"]))
    if task in ("classification", "segmentation"):
        size = draw(st.lists(st.integers(1, 64), min_size=2, max_size=2))
        source = {"channels": draw(st.integers(1, 3)), "size": size}
    elif task == "sequence":
        source = {"vocab": draw(st.integers(2, 60)), "steps": draw(st.integers(1, 40))}
    else:  # regression takes features (regression × series is refused at load: task_table)
        source = {"features": draw(st.integers(1, 50))}
    network = draw(st.lists(_layer(), min_size=1, max_size=6))
    if draw(st.booleans()):  # a plausible head, so more of them build and reach the end-of-network checks
        network += ["flatten", {"linear": {"out": draw(st.integers(1, 12))}}]
    doc = {"name": "generated", "task": task, "input": source, "network": network}
    return yaml.safe_dump(doc, sort_keys=False)


@settings(max_examples=examples(1200), deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(_generated_spec())
def test_generated_networks_raise_only_spec_errors(text):
    _load_and_infer(text)


# ------------------------------------------------------------------------------------------ generated DAGs
NAMES = ["a", "b", "c", "skip", "input"]
EXPRESSIONS = ["$in_channels", "$in_channels * 2", "$in_channels // 2", "max(1, $in_features // 3)", "$in_shape[0] + 1",
               "$in_shape[7]", "$in_height", "$in_width // 2", "$w", "$w * 2", "min($w, $in_channels)", "$d", "$w // 0",
               "$nope", "$in_channels *", "2 ** 99", "9 ** 9 ** 9 + $w", "$w.real", "$w / 3", "-$w", "$pair[1]",
               "(2 ** 32 - 1) ** 64 + $w", "4294967295.0 ** 64 + $in_channels", "$in_channels / 0.0", "($w - 4) ** -1"]
_names = st.sampled_from(NAMES)


def _plausible(draw) -> dict:
    """An image layer that usually fits wherever it lands (widths often written as expressions)."""
    width = draw(st.sampled_from([2, 4, 8, "$in_channels", "$in_channels * 2", "max(2, $in_channels // 2)", "$w"]))
    return draw(st.sampled_from([
        {"conv2d": {"out": width, "kernel": 3, "padding": 1}},
        {"conv2d": {"out": "$in_channels", "kernel": 3, "padding": 1, "groups": "$in_channels"}},
        {"conv2d": {"out": width, "kernel": 1}},
        "relu", "batchnorm2d", "silu", "hardswish", "identity", "channels_layernorm", "layer_scale", "drop_path",
        {"maxpool2d": {"kernel": 2}}, {"upsample": {"scale": 2}}, {"adaptive_avgpool2d": {"size": 1}},
    ]))


@st.composite
def _dag(draw, depth: int = 0) -> list:
    """A list of entries wired by name: references mostly to names defined before (so they resolve), sometimes to
    any name of the pool (forward, unknown, cyclic, duplicate, `input`)."""
    defined: list[str] = ["input"]
    entries = []
    for i in range(draw(st.integers(1, 7))):
        def some_name() -> str:
            return draw(st.sampled_from(defined)) if draw(st.integers(0, 4)) else draw(_names)

        roll = draw(st.integers(0, 19))
        if roll < 5:  # an operator
            op = draw(st.sampled_from(["add", "add", "multiply", "concat"]))
            sources = [some_name() for _ in range(draw(st.integers(1, 3)))]
            args: dict = {"from": sources if len(sources) > 1 or draw(st.booleans()) else sources[0]}
            if op == "concat" and draw(st.booleans()):
                args["axis"] = draw(st.integers(-3, 3))
            entry: dict = {op: args}
        else:
            if roll < 17:
                drawn = _plausible(draw)
            else:
                drawn = draw(_layer(depth + 1))
            drawn = {drawn: {}} if isinstance(drawn, str) else drawn
            kind, args = next(iter(drawn.items()))
            if not isinstance(args, dict):
                entries.append(drawn)
                continue
            args = dict(args)
            ints = [k for k, v in args.items() if isinstance(v, int) and not isinstance(v, bool)]
            if ints and draw(st.integers(0, 4)) == 0:
                args[draw(st.sampled_from(ints))] = draw(st.sampled_from(EXPRESSIONS))
            if draw(st.integers(0, 4)) == 0:
                args["from"] = some_name()
            entry = {kind: args}
        if draw(st.integers(0, 2)):
            name = f"n{i}" if draw(st.integers(0, 5)) else draw(_names)
            next(iter(entry.values()))["as"] = name
            defined.append(name)
        entries.append(entry)
    return entries


@st.composite
def _dag_spec(draw) -> str:
    size = draw(st.sampled_from([4, 8, 16]))
    doc: dict = {"name": "dag", "task": "classification", "input": {"channels": draw(st.integers(1, 4)), "size": [size, size]}}
    network = draw(_dag())
    if draw(st.booleans()):
        layers = draw(_dag(1))
        block: dict = {"params": ["w"], "layers": layers + [{"add": {"from": "input"}}] * draw(st.integers(0, 1))}
        if draw(st.booleans()):
            block["defaults"] = {"d": draw(st.sampled_from(EXPRESSIONS + [3])), "pair": [2, 4]}
        doc["blocks"] = {"blk": block}
        use = {"blk": {"w": draw(st.one_of(st.integers(-1, 16), st.sampled_from(EXPRESSIONS)))}}
        network.insert(draw(st.integers(0, len(network))), use)
        if draw(st.booleans()):
            repeat: dict = {"times": draw(st.integers(1, 3)), "layers": [{"blk": {"w": 4}}]}
            if draw(st.booleans()):
                repeat["each"] = {"w": draw(st.lists(st.sampled_from([1, 2, 8, -1, "$in_channels"]), min_size=1, max_size=3))}
            if draw(st.booleans()):
                repeat["first"] = {draw(st.sampled_from(["w", "d", "x"])): draw(st.sampled_from([2, "$w", "$in_channels // 2"]))}
            network.append({"repeat": repeat})
    classes = draw(st.integers(1, 12))
    main = draw(st.sampled_from(["logits", "logits", "out", "aux"]))
    if draw(st.integers(0, 3)):
        network += ["global_avgpool", {"linear": {"out": classes, "as": main}}]
    aux_head = draw(st.integers(0, 2)) == 0
    if aux_head:  # an auxiliary head, usually of the main head's size, usually after it (taking an earlier output)
        head = [{"global_avgpool": {"from": draw(st.sampled_from(["input", "input", *NAMES, "n0", "n1", "n2"]))}},
                {"linear": {"out": draw(st.sampled_from([classes, classes, classes, 1, 13])), "as": "aux"}}]
        at = len(network) if draw(st.integers(0, 3)) else draw(st.integers(0, len(network)))
        network[at:at] = head
    doc["network"] = network
    if aux_head and draw(st.booleans()):  # well formed
        doc["outputs"] = {"main": main, "aux": [{"from": "aux", "weight": draw(st.sampled_from([0.3, 1, 0.4]))}]}
    elif draw(st.integers(0, 2)) == 0:
        doc["outputs"] = draw(_outputs_section())
    return yaml.safe_dump(doc, sort_keys=False)


_output_names = st.sampled_from(["logits", "aux", "out", "n0", "n1", "n3", "input", "logts", "", "a"])
_weights = st.one_of(st.sampled_from([0.3, 1, 0.4, 0, -1, 1e-12, 1e300, True, "0.3", None, [0.3], math.inf, math.nan]),
                     st.floats(allow_nan=True, allow_infinity=True))


@st.composite
def _outputs_section(draw):
    """`outputs`: mostly well formed over the names the DAGs use, sometimes junk at any level."""
    if draw(st.integers(0, 9)) == 0:
        return draw(junk)
    section: dict = {}
    if draw(st.booleans()):
        section["main"] = draw(st.one_of(_output_names, junk)) if draw(st.integers(0, 5)) == 0 else draw(_output_names)
    items = []
    for _ in range(draw(st.integers(0, 3))):
        item: dict = {"from": draw(_output_names), "weight": draw(_weights)}
        if draw(st.integers(0, 7)) == 0:
            del item[draw(st.sampled_from(["from", "weight"]))]
        if draw(st.integers(0, 7)) == 0:
            item[draw(st.sampled_from(["frm", "as", "wieght", "name"]))] = draw(junk)
        items.append(item if draw(st.integers(0, 11)) else draw(junk))
    if items or draw(st.booleans()):
        section["aux"] = items if draw(st.integers(0, 9)) else draw(junk)
    if draw(st.integers(0, 9)) == 0:
        section[draw(st.sampled_from(["auxiliary", "mian", "extra"]))] = draw(junk)
    return section


@settings(max_examples=examples(800), deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(_dag_spec())
def test_generated_dags_raise_only_spec_errors(text):
    _load_and_infer(text)


def test_generated_dags_reach_the_builder():
    """The DAG generator is not all noise: some of its specs load, wire and build (checked on fixed draws)."""
    from hypothesis import find

    found = find(_dag_spec(), lambda text: _builds(text) and "from:" in text,
                 settings=settings(max_examples=3000, database=None, deadline=None,
                                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]))
    assert "from:" in found


def test_generated_outputs_reach_the_builder():
    """Some generated specs with auxiliary outputs load, pass the shape checks of every output and build."""
    from hypothesis import find

    def with_aux(text: str) -> bool:
        doc = yaml.safe_load(text)
        outputs = doc.get("outputs")
        return isinstance(outputs, dict) and isinstance(outputs.get("aux"), list) and bool(outputs["aux"]) \
            and _builds(text)

    # a fixed random source: the search is then the same every run (unseeded, it found none now and then)
    found = find(_dag_spec(), with_aux, settings=settings(max_examples=3000, database=None, deadline=None,
                                                          suppress_health_check=[HealthCheck.too_slow,
                                                                                 HealthCheck.data_too_large]),
                 random=random.Random(20261202))
    net = infer(load_spec_text(found, "fuzz.yaml")).net
    assert net.aux_weights


def _builds(text: str) -> bool:
    try:
        infer(load_spec_text(text, "fuzz.yaml"))
        return True
    except SpecError:
        return False


def test_a_trillion_parameter_layer_is_refused_before_any_allocation():
    """10^6 → 10^6 linear (10^12 weights, 4 TB): refused by the meta-device inference, peak memory barely moves."""
    spec = "name: t\ntask: regression\ninput: {features: 1000000}\nnetwork:\n  - linear: {out: 1000000}\n  - linear: {out: 1}\n"
    probe = (
        "import resource, sys\n"
        "from models.build import infer\nfrom models.errors import SpecError\nfrom models.spec.load import load_spec_text\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"try:\n    infer(load_spec_text({spec!r}, 'huge.yaml'))\n    sys.exit('accepted')\n"
        "except SpecError as err:\n    print(err)\n"
        "print('grew_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "huge.yaml:5:5 network[0].linear" in out.stdout and f"limit of {MAX_PARAMETERS:,}" in out.stdout
    grew_mb = int(out.stdout.split("grew_kb")[1]) / 1024
    assert grew_mb < 64, f"refusing the spec grew peak memory by {grew_mb:.0f} MB"
