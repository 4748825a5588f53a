"""Parse a spec's `network` entries into a tree of typed nodes: layers, combinators and expanded blocks.

Grammar of an entry: a bare name (`- relu`) or a one-key mapping (`- conv2d: {out: 6, kernel: 5}`). Combinators:
  residual: {body: [...], shortcut: [...]}   output body(x) + shortcut(x); shortcut defaults to identity
  concat: [[...], [...]]                      channel concatenation of branches (or {branches: [...], name: n})
  repeat: {times: n, layers: [...]}           n independent copies in sequence
  group: {layers: [...], name: n}             a named sequence (a point a backbone can stop at)
User blocks (spec `blocks:`) are used like layers, with their parameters as arguments.
Every node keeps its display path (network[3].inception.layers[0]...) and the YAML location of its text.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from models.errors import Location, Problem, SpecError, format_path
from models.layers.builtin import LAYERS, Args
from models.registry import UnknownName
from models.spec.located_yaml import LocatedYaml
from models.spec.schema import Spec
from models.spec.validation import validation_problems

COMBINATORS = ("residual", "concat", "repeat", "group")
MAX_BLOCK_DEPTH = 16
MAX_NODES = 20_000  # repeat/blocks multiply: bound the expanded network, not just the text
_PARAM = re.compile(r"^\$([A-Za-z_][A-Za-z0-9_]*)(?:\[(\d+)\])?$")


@dataclass
class Node:
    kind: str  # layer type name, combinator name, or user block name
    path: tuple[str | int, ...]  # display path, e.g. ("network", 3, "inception", "layers", 0)
    location: Location
    name: str | None = None

    @property
    def where(self) -> str:
        return format_path(self.path)


@dataclass
class LayerNode(Node):
    args: Args = field(default=None)  # type: ignore[assignment]


@dataclass
class SeqNode(Node):
    """A sequence of nodes: repeat copies, groups and user blocks."""

    layers: list[Node] = field(default_factory=list)


@dataclass
class ResidualNode(Node):
    body: list[Node] = field(default_factory=list)
    shortcut: list[Node] = field(default_factory=list)


@dataclass
class ConcatNode(Node):
    branches: list[list[Node]] = field(default_factory=list)


class _ResidualArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    body: list[Any] = Field(min_length=1)
    shortcut: list[Any] = Field(default_factory=list)
    name: str | None = None


class _ConcatArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    branches: list[list[Any]] = Field(min_length=2)
    name: str | None = None


class _RepeatArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    times: int = Field(ge=1, le=1000)
    layers: list[Any] = Field(min_length=1)
    name: str | None = None


class _GroupArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    layers: list[Any] = Field(min_length=1)
    name: str | None = None


@dataclass
class _Context:
    spec: Spec
    raw_prefix: tuple[str | int, ...]  # where the text of the current entries lives in the YAML
    blocks_in_use: tuple[str, ...] = ()
    count: list[int] = field(default_factory=lambda: [0])


class _Parser:
    def __init__(self, spec: Spec, source: LocatedYaml):
        self.spec, self.source = spec, source
        self.problems: list[Problem] = []
        reserved = [b for b in spec.blocks if b in LAYERS or b in COMBINATORS]
        for b in reserved:
            self.problems.append(Problem(source.locate(("blocks", b), key=True), f"blocks.{b}", f"block name '{b}' is taken by a built-in layer; rename it"))

    def located(self, ctx: _Context, raw: tuple[str | int, ...]) -> Location:
        return self.source.locate(ctx.raw_prefix + raw)

    def fail(self, location: Location, path: tuple[str | int, ...], message: str) -> None:
        self.problems.append(Problem(location, format_path(path), message))

    def sequence(self, entries: Any, ctx: _Context, path: tuple[str | int, ...], raw: tuple[str | int, ...]) -> list[Node]:
        if not isinstance(entries, list):
            self.fail(self.located(ctx, raw), path, f"expected a list of layers, got {type(entries).__name__}")
            return []
        nodes = []
        for i, entry in enumerate(entries):
            node = self.entry(entry, ctx, path + (i,), raw + (i,))
            if node is not None:
                nodes.append(node)
        return nodes

    def entry(self, entry: Any, ctx: _Context, path: tuple[str | int, ...], raw: tuple[str | int, ...]) -> Node | None:
        ctx.count[0] += 1
        location = self.located(ctx, raw)
        if ctx.count[0] > MAX_NODES:
            if ctx.count[0] == MAX_NODES + 1:
                self.fail(location, path, f"network expands to more than {MAX_NODES:,} layers")
            return None
        if isinstance(entry, str):
            kind, value, value_raw = entry, None, raw
        elif isinstance(entry, dict) and len(entry) == 1:
            kind, value = next(iter(entry.items()))
            value_raw = raw + (kind,)
        else:
            shown = f"a mapping with keys {sorted(map(str, entry))}" if isinstance(entry, dict) else repr(entry)[:40]
            self.fail(location, path, "a layer is a name (- relu) or a one-key mapping (- conv2d: {out: 6, kernel: 5}); "
                                      f"got {shown}")
            return None
        path = path + (kind,)
        if kind in COMBINATORS:
            return self.combinator(kind, value, ctx, path, value_raw, location)
        if kind in self.spec.blocks:
            return self.block_use(kind, value, ctx, path, value_raw, location)
        try:
            layer_type = LAYERS.get(kind)
        except UnknownName:
            known = LAYERS.names() + list(COMBINATORS) + list(self.spec.blocks)
            self.fail(location, path, str(UnknownName("layer", kind, known)))
            return None
        if value is None:
            value = {}
        if not isinstance(value, dict):
            self.fail(location, path, f"arguments must be a mapping like {{out: 6}}, got {type(value).__name__} {value!r:.40}")
            return None
        try:
            args = layer_type.args.model_validate(value)
        except ValidationError as err:
            self.problems.extend(validation_problems(err, self.source, ctx.raw_prefix + value_raw, path, layer_type.args))
            return None
        return LayerNode(kind, path, location, args.name, args)

    def combinator(self, kind: str, value: Any, ctx: _Context, path, raw, location: Location) -> Node | None:
        if kind == "concat" and isinstance(value, list):
            value = {"branches": value}
        model = {"residual": _ResidualArgs, "concat": _ConcatArgs, "repeat": _RepeatArgs, "group": _GroupArgs}[kind]
        if not isinstance(value, dict):
            self.fail(location, path, f"{kind} takes a mapping of its fields ({', '.join(model.model_fields)})")
            return None
        try:
            args = model.model_validate(value)
        except ValidationError as err:
            self.problems.extend(validation_problems(err, self.source, ctx.raw_prefix + raw, path, model))
            return None
        branch_raw = raw if isinstance(self._raw_value(ctx, raw), list) else raw + ("branches",)
        if isinstance(args, _ResidualArgs):
            return ResidualNode(kind, path, location, args.name,
                                body=self.sequence(args.body, ctx, path + ("body",), raw + ("body",)),
                                shortcut=self.sequence(args.shortcut, ctx, path + ("shortcut",), raw + ("shortcut",)))
        if isinstance(args, _ConcatArgs):
            return ConcatNode(kind, path, location, args.name,
                              branches=[self.sequence(b, ctx, path + (i,), branch_raw + (i,)) for i, b in enumerate(args.branches)])
        if isinstance(args, _RepeatArgs):
            copies = [SeqNode("repeat", path + (i,), location, None, self.sequence(args.layers, ctx, path + (i,), raw + ("layers",)))
                      for i in range(args.times)]
            return SeqNode(kind, path, location, args.name, copies)
        return SeqNode(kind, path, location, args.name, self.sequence(args.layers, ctx, path + ("layers",), raw + ("layers",)))

    def _raw_value(self, ctx: _Context, raw: tuple[str | int, ...]) -> Any:
        value: Any = self.source.data
        for part in ctx.raw_prefix + raw:
            try:
                value = value[part]
            except (KeyError, IndexError, TypeError):
                return None
        return value

    def block_use(self, kind: str, value: Any, ctx: _Context, path, raw, location: Location) -> Node | None:
        block = self.spec.blocks[kind]
        if kind in ctx.blocks_in_use or len(ctx.blocks_in_use) >= MAX_BLOCK_DEPTH:
            self.fail(location, path, f"block '{kind}' uses itself (through {' → '.join(ctx.blocks_in_use + (kind,))})")
            return None
        value = {} if value is None else value
        if not isinstance(value, dict):
            self.fail(location, path, f"block '{kind}' takes its parameters as a mapping ({', '.join(block.params)})")
            return None
        name = value.get("name")
        given = {k: v for k, v in value.items() if k != "name"}
        missing = [p for p in block.params if p not in given]
        unknown = [k for k in given if k not in block.params]
        for k in unknown:
            close = [p for p in block.params if p not in given]
            hint = f" (did you mean {close[0]}?)" if len(close) == 1 else ""
            self.fail(self.source.locate(ctx.raw_prefix + raw + (k,), key=True), path + (k,), f"block '{kind}' has no parameter '{k}'{hint}; parameters: {', '.join(block.params)}")
        if missing:
            self.fail(location, path, f"block '{kind}' needs parameter(s) {', '.join(missing)}")
        if missing or unknown:
            return None
        layers = self.substitute(block.layers, given, ctx, path, ("blocks", kind, "layers"))
        inner = _Context(self.spec, (), ctx.blocks_in_use + (kind,), ctx.count)
        nodes = self.sequence(layers, inner, path + ("layers",), ("blocks", kind, "layers"))
        return SeqNode(kind, path, location, name if isinstance(name, str) else None, nodes)

    def substitute(self, value: Any, params: dict[str, Any], ctx: _Context, path, raw) -> Any:
        if isinstance(value, str):
            match = _PARAM.match(value)
            if not match:
                return value
            param, index = match.group(1), match.group(2)
            if param not in params:
                self.fail(self.source.locate(raw), path, f"'{value}' names no parameter of this block (parameters: {', '.join(params) or 'none'})")
                return value
            found = params[param]
            if index is None:
                return found
            if not isinstance(found, list) or int(index) >= len(found):
                self.fail(self.source.locate(raw), path, f"'{value}': parameter {param} = {found!r} has no item {index}")
                return value
            return found[int(index)]
        if isinstance(value, list):
            return [self.substitute(v, params, ctx, path, raw + (i,)) for i, v in enumerate(value)]
        if isinstance(value, dict):
            return {k: self.substitute(v, params, ctx, path, raw + (k,)) for k, v in value.items()}
        return value


def _names(nodes: list[Node]) -> list[str]:
    return [n.name for n in nodes if n.name]


def parse_network(spec: Spec, source: LocatedYaml, backbone_spec: Spec | None) -> tuple[list[Node], list[Node]]:
    """(own nodes, backbone nodes) of a validated spec whose text is `source`; raises SpecError listing every
    problem found. Called by models.spec.load, which binds the result to the Spec."""
    parser = _Parser(spec, source)
    backbone: list[Node] = []
    if spec.backbone is not None and backbone_spec is not None:
        source_nodes = list(backbone_spec.nodes)  # parsed when the backbone spec loaded
        names = _names(source_nodes)
        if spec.backbone.until not in names:
            parser.fail(source.locate(("backbone", "until")), ("backbone", "until"),
                        f"'{spec.backbone.until}' is not a named top-level layer of {spec.backbone.spec} "
                        f"(named layers: {', '.join(names) or 'none'})")
        else:
            end = names.index(spec.backbone.until)
            cut = [i for i, n in enumerate(source_nodes) if n.name][end]
            backbone = source_nodes[: cut + 1]
    nodes = parser.sequence(spec.network, _Context(spec, ()), ("network",), ("network",))
    if parser.problems:
        raise SpecError(parser.problems)
    return nodes, backbone
