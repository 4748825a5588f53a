"""Parse a spec's `network` entries into a tree of typed nodes: layers, operators, combinators and expanded blocks.

Grammar of an entry: a bare name (`- relu`) or a one-key mapping (`- conv2d: {out: 6, kernel: 5}`).

Wiring (the network is a DAG): every entry takes the previous entry's output, unless it names its inputs with
`from: x` (or `from: [a, b]` for an operator); any entry can name its output with `as: x` (or `name: x`); the
last entry's output is the list's output; `input` names the list's own input. Names are local to their list: a
nested list (residual body, concat branch, group, repeat copy, block) sees only its own entries and `input`,
and a block never sees its caller's names. At the top level the backbone's top-level names are visible too.
Operators combine named outputs:
  add: {from: [a, b, ...]}                   element-wise sum (equal shapes); from: a adds a to the previous output
  multiply: {from: [x, gate]}                element-wise product, broadcasting axes of size 1 (SE gates)
  concat: {from: [a, b], axis: 0}            concatenation along a per-sample axis (0 = channels)
Combinators (sugar for common wirings):
  residual: {body: [...], shortcut: [...]}   output body(x) + shortcut(x); shortcut defaults to identity
  concat: [[...], [...]]                      concatenation of branches (or {branches: [...], axis: 0, name: n})
  repeat: {times: n, layers: [...]}           n independent copies in sequence; `each: {stride: [2, 1, 1]}` gives
                                              an argument per copy, `first: {stride: 2}` overrides the first copy
  group: {layers: [...], name: n}             a named sequence (a point a backbone can stop at)
User blocks (spec `blocks:`) are used like layers, with their parameters as arguments. Values may be expressions
over block parameters and the input's shape (`"$c * 6"`, `$in_channels`; models/spec/expressions.py).
Every node keeps its display path (network[3].inception.layers[0]...) and the YAML location of its text.
"""
from __future__ import annotations

import difflib
import itertools
import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from models.errors import Location, Problem, SpecError, format_path
from models.layers.builtin import LAYERS, Args
from models.registry import UnknownName
from models.spec.expressions import (SHAPE_NAMES, Expr, ExprError, compile_expression, evaluate, is_expression,
                                     names_in, needs_shape)
from models.spec.located_yaml import LocatedYaml
from models.spec.schema import Spec
from models.spec.validation import validation_problems

COMBINATORS = ("residual", "concat", "repeat", "group")
OPERATORS = ("add", "multiply")  # concat is an operator too when it has `from` and no branches
INPUT = "input"  # the name of a list's own input
WIRING_KEYS = ("from", "as")
MAX_BLOCK_DEPTH = 16
MAX_NODES = 20_000  # repeat/blocks multiply: bound the expanded network, not just the text
_ANCHORS = itertools.count(1)  # node ids that deferred expressions point at (unique across parsers)
_DOLLAR = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")
_FAILED: Any = object()  # a value whose problem has been reported


@dataclass(frozen=True)
class Ref:
    """A name in `from:`, where it is written."""

    name: str
    location: Location
    path: tuple[str | int, ...]


@dataclass
class Node:
    kind: str  # layer type name, combinator or operator name, or user block name
    path: tuple[str | int, ...]  # display path, e.g. ("network", 3, "inception", "layers", 0)
    location: Location
    name: str | None = None
    refs: tuple[Ref, ...] = ()  # the names in its `from:`
    sources: tuple[int, ...] | None = None  # its inputs: indices of earlier entries of its list (-1: the list's
    #                                         input); None: the previous entry (set when the list is linked)
    anchor: int = 0  # what `$in_channels` in its arguments refers to (its input)

    @property
    def where(self) -> str:
        return format_path(self.path)


@dataclass
class LayerNode(Node):
    args: Args | None = None  # validated arguments (None while they wait for the input's shape)
    pending: dict[str, Any] | None = None  # arguments holding expressions over the input's shape (models.build)
    args_at: tuple[str | int, ...] = ()  # where the arguments are written (YAML path), for later errors
    locator: Any = None  # Locator that turns those paths into file:line:column


@dataclass
class OperatorNode(Node):
    axis: int = 0  # concat: per-sample axis


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
    axis: int = 0


def child_lists(node: Node) -> list[list[Node]]:
    """The nested lists of a node (each its own scope of names)."""
    if isinstance(node, SeqNode):
        return [node.layers]
    if isinstance(node, ResidualNode):
        return [node.body, node.shortcut]
    if isinstance(node, ConcatNode):
        return list(node.branches)
    return []


@dataclass(frozen=True)
class Locator:
    """source.locate with some YAML paths redirected (a repeat copy's argument set by `each:` / `first:` is
    located where that value is written)."""

    source: LocatedYaml
    redirects: tuple[tuple[tuple[str | int, ...], tuple[str | int, ...]], ...] = ()

    def locate(self, path: tuple[str | int, ...], *, key: bool = False) -> Location:
        path = tuple(path)
        for old, new in self.redirects:
            if path[: len(old)] == old:
                return self.source.locate(new + path[len(old):], key=key and len(path) > len(old))
        return self.source.locate(path, key=key)

    def written(self, path: tuple[str | int, ...]) -> bool:
        """Whether the value at `path` is written in the text (redirected or not)."""
        path = tuple(path)
        for old, new in self.redirects:
            if path[: len(old)] == old:
                return True
        return path in self.source.locations

    def redirected(self, more: list[tuple[tuple[str | int, ...], tuple[str | int, ...]]]) -> "Locator":
        return Locator(self.source, self.redirects + tuple(more)) if more else self


class _ResidualArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    body: list[Any] = Field(min_length=1)
    shortcut: list[Any] = Field(default_factory=list)
    name: str | None = None


class _ConcatArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    branches: list[list[Any]] = Field(min_length=2)
    axis: int = 0
    name: str | None = None


class _RepeatArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    times: int = Field(ge=1, le=1000)
    layers: list[Any] = Field(min_length=1)
    each: dict[str, list[Any]] = Field(default_factory=dict)
    first: dict[str, Any] = Field(default_factory=dict)
    name: str | None = None


class _GroupArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    layers: list[Any] = Field(min_length=1)
    name: str | None = None


_STRUCTURE = {"layers", "body", "shortcut", "branches", "each", "first"}  # fields holding entries, parsed as such


@dataclass
class _Context:
    locator: Locator
    params: dict[str, Any] = field(default_factory=dict)  # block parameters in scope
    use_path: tuple[str | int, ...] | None = None  # display path of the block use these entries belong to
    blocks_in_use: tuple[str, ...] = ()
    count: list[int] = field(default_factory=lambda: [0])


def _close(name: str, known: list[str]) -> str:
    found = difflib.get_close_matches(name, known, n=2, cutoff=0.6)
    return f" (did you mean {' or '.join(found)}?)" if found else ""


def _close_dollar(name: str, known: list[str]) -> str:
    found = difflib.get_close_matches(name, known, n=2, cutoff=0.6)
    return f" (did you mean {' or '.join('$' + f for f in found)}?)" if found else ""


def _dollar_names(value: Any, raw: tuple[str | int, ...]) -> Iterator[tuple[str, tuple[str | int, ...]]]:
    if isinstance(value, str):
        for m in _DOLLAR.finditer(value):
            yield m.group(1), raw
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _dollar_names(v, raw + (i,))
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _dollar_names(v, raw + (k,))


class _Parser:
    def __init__(self, spec: Spec, source: LocatedYaml):
        self.spec, self.source = spec, source
        self.root = Locator(source)
        self.problems: list[Problem] = []
        self.incomplete: set[int] = set()  # ids of node lists with an entry that failed to parse (not linked)
        for b in spec.blocks:
            if b in LAYERS or b in COMBINATORS or b in OPERATORS:
                self.problems.append(Problem(source.locate(("blocks", b), key=True), f"blocks.{b}",
                                             f"block name '{b}' is taken by a built-in layer; rename it"))
        self.broken_blocks = self._check_block_declarations()

    def fail(self, location: Location, path: tuple[str | int, ...], message: str) -> None:
        self.problems.append(Problem(location, format_path(path), message))

    # ------------------------------------------------------------------ block declarations, once per block
    def _check_block_declarations(self) -> set[str]:
        """A declared parameter that nothing uses while the layers use a close, undeclared name is a typo in the
        declaration: blamed there once (not at every use, nor at every `$name`)."""
        broken: set[str] = set()
        passed = self._keys_passed_to_blocks()
        for b, block in self.spec.blocks.items():
            defaults = block.defaults or {}
            used: dict[str, tuple[str | int, ...]] = {}
            for name, raw in itertools.chain(_dollar_names(block.layers, ("blocks", b, "layers")),
                                             _dollar_names(defaults, ("blocks", b, "defaults"))):
                used.setdefault(name, raw)
            declared = [(p, ("blocks", b, "params", i), False) for i, p in enumerate(block.params)]
            declared += [(p, ("blocks", b, "defaults", p), True) for p in defaults]
            # the uses pass the layers' spelling, not the declared one: the declaration is the typo
            undeclared = [n for n in used if n not in block.params and n not in defaults and n not in SHAPE_NAMES
                          and n in passed.get(b, set())]
            for p, raw, is_key in declared:
                if p in used:
                    continue
                close = difflib.get_close_matches(p, undeclared, n=1, cutoff=0.75)  # widht/width, not width/depth
                if close:
                    where = used[close[0]]
                    self.fail(self.source.locate(raw, key=is_key), raw,
                              f"parameter '{p}' is never used, but the layers use ${close[0]} ({format_path(where)}, "
                              f"{self.source.locate(where)}): a typo in the declaration? (did you mean {close[0]}?)")
                    broken.add(b)
        return broken

    def _keys_passed_to_blocks(self) -> dict[str, set[str]]:
        """Block name → the argument keys its uses write (anywhere in network and blocks)."""
        found: dict[str, set[str]] = {}

        def walk(value: Any) -> None:
            if isinstance(value, dict):
                for k, v in value.items():
                    if k in self.spec.blocks and isinstance(v, dict):
                        found.setdefault(k, set()).update(map(str, v))
                    walk(v)
            elif isinstance(value, list):
                for v in value:
                    walk(v)

        walk(self.spec.network)
        walk([b.layers for b in self.spec.blocks.values()])
        return found

    # ------------------------------------------------------------------ lists and entries
    def sequence(self, entries: Any, ctx: _Context, path: tuple[str | int, ...], raw: tuple[str | int, ...]) -> list[Node]:
        if not isinstance(entries, list):
            self.fail(ctx.locator.locate(raw), path, f"expected a list of layers, got {type(entries).__name__}")
            return []
        nodes: list[Node] = []
        complete = True
        for i, entry in enumerate(entries):
            node = self.entry(entry, ctx, path + (i,), raw + (i,))
            if node is not None:
                nodes.append(node)
            else:
                complete = False
        if not complete:
            self.incomplete.add(id(nodes))
        return nodes

    def entry(self, entry: Any, ctx: _Context, path: tuple[str | int, ...], raw: tuple[str | int, ...]) -> Node | None:
        ctx.count[0] += 1
        location = ctx.locator.locate(raw)
        if ctx.count[0] > MAX_NODES:
            if ctx.count[0] == MAX_NODES + 1:
                self.fail(location, path, f"network expands to more than {MAX_NODES:,} layers")
            return None
        if is_expression(entry):  # `- $act`: the whole entry is a block parameter
            entry = self.expression(entry, ctx, raw, 0, path, concrete="a layer")
            if entry is _FAILED:
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
        anchor = next(_ANCHORS)
        wiring = self.wiring(value, ctx, path, value_raw)
        if wiring is None:
            return None
        refs, alias, value = wiring
        branches = isinstance(value, list) or (isinstance(value, dict) and "branches" in value)
        if kind == "concat" and branches and len(refs) > 1:
            self.fail(refs[0].location, path + ("from",), "concat takes either branches (each applied to its one input) "
                                                          "or from: [a, b] (joining named outputs), not both")
            return None
        if kind in OPERATORS or (kind == "concat" and refs and not branches):
            node = self.operator(kind, value, refs, ctx, path, value_raw, location)
            refs = node.refs if node is not None else refs
        elif kind in COMBINATORS:
            node = self.combinator(kind, value, ctx, path, value_raw, location, anchor)
        elif kind in self.spec.blocks:
            node = self.block_use(kind, value, ctx, path, value_raw, location, anchor)
        else:
            node = self.layer(kind, value, ctx, path, value_raw, location, anchor)
        if node is None:
            return None
        node.anchor, node.refs = anchor, refs
        if alias is not None:
            node.name = alias
        if node.name == INPUT:
            self.fail(location, path, f"'{INPUT}' names the input of every list; give this entry another name")
            return None
        if len(refs) > 1 and not isinstance(node, OperatorNode):
            names = ", ".join(r.name for r in refs)
            self.fail(refs[1].location, path + ("from",), f"{kind} takes one input, but from lists {len(refs)} ({names}); "
                                                          f"combine them first: add, multiply or concat: {{from: [{names}]}}")
            return None
        return node

    def wiring(self, value: Any, ctx: _Context, path, raw) -> tuple[tuple[Ref, ...], str | None, Any] | None:
        """Take `from:` and `as:` out of an entry's mapping."""
        if not isinstance(value, dict) or not any(k in value for k in WIRING_KEYS):
            return (), None, value
        value = dict(value)
        refs: tuple[Ref, ...] = ()
        if "from" in value:
            given = value.pop("from")
            refs = self.refs(given, ctx, path + ("from",), raw + ("from",))
            if refs is None:
                return None
        alias = None
        if "as" in value:
            alias = value.pop("as")
            if not isinstance(alias, str) or not alias:
                self.fail(ctx.locator.locate(raw + ("as",)), path + ("as",),
                          f"as names this entry's output, like as: skip1; got {alias!r:.40}")
                return None
            if "name" in value:
                self.fail(ctx.locator.locate(raw + ("as",), key=True), path + ("as",),
                          "give either name or as (they mean the same), not both")
                return None
        return refs, alias, value

    def refs(self, given: Any, ctx: _Context, path, raw) -> tuple[Ref, ...] | None:
        items = [given] if isinstance(given, str) else given
        if not isinstance(items, list) or not items or not all(isinstance(x, str) and x for x in items):
            self.fail(ctx.locator.locate(raw), path, "from names the outputs this entry takes: a name or a list of "
                                                     f"names, like from: skip or from: [a, b]; got {given!r:.40}")
            return None
        return tuple(Ref(n, ctx.locator.locate(raw + ((i,) if isinstance(given, list) else ())), path)
                     for i, n in enumerate(items))

    # ------------------------------------------------------------------ values and expressions
    def resolve(self, value: Any, ctx: _Context, raw, anchor: int, path) -> Any:
        """`value` with its `$` expressions evaluated, or kept as Exprs where they need the input's shape."""
        failed = False

        def walk(v: Any, r: tuple[str | int, ...]) -> Any:
            nonlocal failed
            if is_expression(v):
                out = self.expression(v, ctx, r, anchor, path)
                failed = failed or out is _FAILED
                return out
            if isinstance(v, list):
                return [walk(x, r + (i,)) for i, x in enumerate(v)]
            if isinstance(v, dict):
                return {k: walk(x, r + (k,)) for k, x in v.items()}
            return v

        out = walk(value, raw)
        return _FAILED if failed else out

    def expression(self, text: str, ctx: _Context, raw, anchor: int, path, concrete: str | None = None) -> Any:
        location = ctx.locator.locate(raw)
        where = ctx.use_path or path
        prefix = f"'{text}': "
        try:
            tree = compile_expression(text)
        except ExprError as err:
            self.fail(location, where, f"{prefix}{err}")
            return _FAILED
        names = names_in(tree)
        for n in names:
            if n in ctx.params or n in SHAPE_NAMES:
                continue
            own = "" if text.strip() == f"${n}" else prefix
            shapes = ", ".join(f"${s}" for s in SHAPE_NAMES)
            if ctx.use_path is not None:
                hint = _close_dollar(n, list(ctx.params) + list(SHAPE_NAMES))
                self.fail(location, where, f"{own}'${n}' names no parameter of this block{hint} "
                                           f"(parameters: {', '.join(ctx.params) or 'none'}; the input's shape: {shapes})")
            else:
                hint = _close_dollar(n, list(SHAPE_NAMES))
                self.fail(location, where, f"{own}'${n}' is not a name here{hint}: parameters exist inside blocks; "
                                           f"the input's shape is {shapes}")
            return _FAILED
        deferred = any(n in SHAPE_NAMES or needs_shape(ctx.params[n]) for n in names)
        if deferred:
            if concrete:
                self.fail(location, where, f"{prefix}{concrete} cannot depend on the input's shape")
                return _FAILED
            return Expr(text, tree, ctx.params, anchor, location, path)
        try:
            return evaluate(tree, lambda n: ctx.params[n])
        except ExprError as err:
            self.fail(location, where, f"{prefix}{err}")
            return _FAILED

    # ------------------------------------------------------------------ the kinds of entries
    def layer(self, kind: str, value: Any, ctx: _Context, path, raw, location: Location, anchor: int) -> Node | None:
        try:
            layer_type = LAYERS.get(kind)
        except UnknownName:
            known = LAYERS.names() + list(COMBINATORS) + list(OPERATORS) + list(self.spec.blocks)
            message = str(UnknownName("layer", kind, known))
            if kind.startswith("$"):
                message += "; a parameter can be a whole entry (- $act), not a layer name with arguments"
            elif not difflib.get_close_matches(kind, known, n=1, cutoff=0.75):  # not an obvious typo
                message += ". A layer from a plugin needs --plugin MODULE (or an installed specserve.layers entry point)"
            self.fail(location, path, message)
            return None
        if value is None:
            value = {}
        if not isinstance(value, dict):
            self.fail(location, path, f"arguments must be a mapping like {{out: 6}}, got {type(value).__name__} {value!r:.40}")
            return None
        resolved = self.resolve(value, ctx, raw, anchor, path)
        if resolved is _FAILED:
            return None
        if needs_shape(resolved):  # validate what is known now; the rest once the shape is (models.build)
            known = {k: v for k, v in resolved.items() if not needs_shape(v)}
            try:
                layer_type.args.model_validate(known)
            except ValidationError as err:
                problems = validation_problems(err, ctx.locator, raw, path, layer_type.args)
                kept = [p for p, e in zip(problems, err.errors(include_url=False))
                        if not (e["type"] == "missing" and e["loc"] and e["loc"][0] in resolved)]
                if kept:
                    self.problems.extend(kept)
                    return None
            name = resolved.get("name") if isinstance(resolved.get("name"), str) else None
            return LayerNode(kind, path, location, name, pending=resolved, args_at=raw, locator=ctx.locator)
        try:
            args = layer_type.args.model_validate(resolved)
        except ValidationError as err:
            self.problems.extend(validation_problems(err, ctx.locator, raw, path, layer_type.args))
            return None
        return LayerNode(kind, path, location, args.name, args=args, args_at=raw, locator=ctx.locator)

    def operator(self, kind: str, value: Any, refs: tuple[Ref, ...], ctx: _Context, path, raw,
                 location: Location) -> Node | None:
        verb = {"add": "add", "multiply": "multiply", "concat": "concatenate"}[kind]
        if kind in OPERATORS and isinstance(value, (str, list)):  # add: [a, b] = add: {from: [a, b]}
            if refs:
                self.fail(location, path, f"give {kind}'s inputs once: {kind}: [a, b] or {kind}: {{from: [a, b]}}")
                return None
            found = self.refs(value, ctx, path, raw)
            if found is None:
                return None
            refs, value = found, {}
        value = {} if value is None else value
        if not isinstance(value, dict):
            self.fail(location, path, f"{kind} takes {{from: [a, b]}}, got {type(value).__name__} {value!r:.40}")
            return None
        allowed = ["from", "as", "name"] + (["axis"] if kind == "concat" else [])
        for k in value:
            if k not in allowed:
                self.fail(ctx.locator.locate(raw + (k,), key=True), path + (k,),
                          f"unknown field '{k}'{_close(str(k), allowed)}; {kind} takes {', '.join(allowed)}")
                return None
        name = value.get("name")
        if name is not None and not isinstance(name, str):
            self.fail(ctx.locator.locate(raw + ("name",)), path + ("name",), f"name must be a string, got {name!r:.40}")
            return None
        axis = self.resolve(value.get("axis", 0), ctx, raw + ("axis",), 0, path + ("axis",))
        if axis is _FAILED:
            return None
        if isinstance(axis, bool) or not isinstance(axis, int):
            self.fail(ctx.locator.locate(raw + ("axis",)), path + ("axis",), f"axis must be a whole number, got {axis!r:.40}")
            return None
        if not refs:
            self.fail(location, path, f"{kind} combines named outputs: {kind}: {{from: [a, b]}}, or from: a to {verb} "
                                      "a and the previous output")
            return None
        node = OperatorNode(kind, path, location, name, axis=axis)
        node.refs = refs
        return node

    def combinator(self, kind: str, value: Any, ctx: _Context, path, raw, location: Location, anchor: int) -> Node | None:
        if kind == "concat" and isinstance(value, list):
            value = {"branches": value}
        model = {"residual": _ResidualArgs, "concat": _ConcatArgs, "repeat": _RepeatArgs, "group": _GroupArgs}[kind]
        if not isinstance(value, dict):
            self.fail(location, path, f"{kind} takes a mapping of its fields ({', '.join(model.model_fields)})")
            return None
        fields = {}
        for k, v in value.items():
            if k in _STRUCTURE:
                fields[k] = v
                continue
            fields[k] = self.resolve(v, ctx, raw + (k,), anchor, path + (k,))
            if fields[k] is _FAILED:
                return None
            if needs_shape(fields[k]):
                self.fail(ctx.locator.locate(raw + (k,)), path + (k,), f"{kind}'s {k} cannot depend on the input's shape")
                return None
        try:
            args = model.model_validate(fields)
        except ValidationError as err:
            self.problems.extend(validation_problems(err, ctx.locator, raw, path, model))
            return None
        if isinstance(args, _ResidualArgs):
            return ResidualNode(kind, path, location, args.name,
                                body=self.sequence(args.body, ctx, path + ("body",), raw + ("body",)),
                                shortcut=self.sequence(args.shortcut, ctx, path + ("shortcut",), raw + ("shortcut",)))
        if isinstance(args, _ConcatArgs):
            branch_raw = raw if isinstance(self._raw_value(raw), list) else raw + ("branches",)
            return ConcatNode(kind, path, location, args.name,
                              branches=[self.sequence(b, ctx, path + (i,), branch_raw + (i,)) for i, b in enumerate(args.branches)],
                              axis=args.axis)
        if isinstance(args, _RepeatArgs):
            overrides = self.copy_overrides(args, ctx, path, raw)
            if overrides is None:
                return None
            copies = []
            for i in range(args.times):
                layers, redirects = self.apply_overrides(args.layers, overrides[i], raw + ("layers",))
                copy_ctx = replace(ctx, locator=ctx.locator.redirected(redirects))
                copies.append(SeqNode("repeat", path + (i,), location, None,
                                      layers=self.sequence(layers, copy_ctx, path + (i,), raw + ("layers",))))
            return SeqNode(kind, path, location, args.name, layers=copies)
        return SeqNode(kind, path, location, args.name, layers=self.sequence(args.layers, ctx, path + ("layers",), raw + ("layers",)))

    def _raw_value(self, raw: tuple[str | int, ...]) -> Any:
        value: Any = self.source.data
        for part in raw:
            try:
                value = value[part]
            except (KeyError, IndexError, TypeError):
                return None
        return value

    # ------------------------------------------------------------------ repeat: arguments per copy
    def _accepted(self, entry: Any) -> tuple[str, list[str]] | None:
        """(kind, the argument names it takes) of a repeated entry, for `each` / `first`."""
        kind = entry if isinstance(entry, str) else next(iter(entry)) if isinstance(entry, dict) and len(entry) == 1 else None
        if not isinstance(kind, str):
            return None
        if kind in self.spec.blocks:
            block = self.spec.blocks[kind]
            return kind, block.params + list(block.defaults or {})
        if kind in LAYERS and kind not in COMBINATORS:
            return kind, [f for f in LAYERS.get(kind).args.model_fields if f != "name"]
        return None

    def copy_overrides(self, args: _RepeatArgs, ctx: _Context, path, raw) -> list[dict[str, tuple[Any, tuple]]] | None:
        per_copy: list[dict[str, tuple[Any, tuple]]] = [{} for _ in range(args.times)]
        ok = True
        for k, values in args.each.items():
            if len(values) != args.times:
                self.fail(ctx.locator.locate(raw + ("each", k)), path + ("each", k),
                          f"each.{k} has {len(values)} values for {args.times} copies; give one per copy")
                ok = False
                continue
            for i, v in enumerate(values):
                per_copy[i][k] = (v, raw + ("each", k, i))
        for k, v in args.first.items():
            if k in args.each:
                self.fail(ctx.locator.locate(raw + ("first", k), key=True), path + ("first", k),
                          f"'{k}' is set by both each and first; give it in one of them")
                ok = False
                continue
            per_copy[0][k] = (v, raw + ("first", k))
        accepted = [a for a in map(self._accepted, args.layers) if a is not None]
        for section, keys in (("each", args.each), ("first", args.first)):
            for k in keys:
                if k in ("name", *WIRING_KEYS):
                    self.fail(ctx.locator.locate(raw + (section, k), key=True), path + (section, k),
                              f"{section} cannot set '{k}': each copy is its own list of names")
                    ok = False
                elif not any(k in taken for _, taken in accepted):
                    every = sorted({t for _, taken in accepted for t in taken})
                    takes = "; ".join(f"{kind}: {', '.join(taken) or '—'}" for kind, taken in accepted) or "nothing"
                    self.fail(ctx.locator.locate(raw + (section, k), key=True), path + (section, k),
                              f"no entry of the repeated layers takes '{k}'{_close(k, every)}; they take: {takes}")
                    ok = False
        return per_copy if ok else None

    def apply_overrides(self, layers: list[Any], overrides: dict[str, tuple[Any, tuple]], layers_raw) -> tuple[list[Any], list]:
        if not overrides:
            return layers, []
        new, redirects = [], []
        for j, entry in enumerate(layers):
            accepted = self._accepted(entry)
            value = entry.get(accepted[0]) if accepted and isinstance(entry, dict) else None
            changes = {k: v for k, (v, _) in overrides.items() if accepted and k in accepted[1]}
            if not changes or not (value is None or isinstance(value, dict)):
                new.append(entry)
                continue
            kind = accepted[0]
            new.append({kind: {**(value or {}), **changes}})
            redirects += [(layers_raw + (j, kind, k), overrides[k][1]) for k in changes]
        return new, redirects

    # ------------------------------------------------------------------ blocks
    def block_use(self, kind: str, value: Any, ctx: _Context, path, raw, location: Location, anchor: int) -> Node | None:
        block = self.spec.blocks[kind]
        if kind in self.broken_blocks:
            return None  # its declaration's problem is reported once, at the declaration
        if kind in ctx.blocks_in_use or len(ctx.blocks_in_use) >= MAX_BLOCK_DEPTH:
            self.fail(location, path, f"block '{kind}' uses itself (through {' → '.join(ctx.blocks_in_use + (kind,))})")
            return None
        value = {} if value is None else value
        defaults = block.defaults or {}
        declared = block.params + list(defaults)
        if not isinstance(value, dict):
            self.fail(location, path, f"block '{kind}' takes its parameters as a mapping ({', '.join(declared)})")
            return None
        name = value.get("name")
        given = {k: v for k, v in value.items() if k != "name"}
        missing = [p for p in block.params if p not in given]
        unknown = [k for k in given if k not in declared]
        for k in unknown:
            free = [p for p in declared if p not in given]
            close = difflib.get_close_matches(k, free, n=1, cutoff=0.5) or (free if len(free) == 1 else [])
            hint = f" (did you mean {close[0]}?)" if close else ""
            self.fail(ctx.locator.locate(raw + (k,), key=True), path + (k,),
                      f"block '{kind}' has no parameter '{k}'{hint}; parameters: {', '.join(declared)}")
        if missing:
            self.fail(location, path, f"block '{kind}' needs parameter(s) {', '.join(missing)}")
        if missing or unknown:
            return None
        env: dict[str, Any] = {}
        for k, v in given.items():
            env[k] = self.resolve(v, ctx, raw + (k,), anchor, path + (k,))
            if env[k] is _FAILED:
                return None
        for k, v in defaults.items():  # in order: a default may use the parameters before it
            if k not in given:
                scope = _Context(self.root, dict(env), path, ctx.blocks_in_use, ctx.count)
                env[k] = self.resolve(v, scope, ("blocks", kind, "defaults", k), anchor, path)
                if env[k] is _FAILED:
                    return None
        inner = _Context(self.root, env, path, ctx.blocks_in_use + (kind,), ctx.count)
        nodes = self.sequence(block.layers, inner, path + ("layers",), ("blocks", kind, "layers"))
        return SeqNode(kind, path, location, name if isinstance(name, str) else None, layers=nodes)

    # ------------------------------------------------------------------ wiring: names → sources
    def link(self, nodes: list[Node], outer: tuple[dict[str, Node], ...], prefix: tuple[Node, ...] = (),
             is_block: bool = False, roots: tuple[int, ...] | None = None) -> None:
        """Resolve each entry's `from` to earlier entries of its list; then the lists nested in them. `roots`: the
        entries (of prefix + nodes) whose outputs leave the list (the spec's outputs); None: the last entry."""
        every = list(prefix) + nodes
        start = len(prefix)
        index: dict[str, int] = {}
        for i, n in enumerate(every):
            if not n.name:
                continue
            if n.name in index:
                if i >= start:
                    other = every[index[n.name]]
                    self.fail(n.location, n.path, f"name '{n.name}' is already taken by {other.where} ({other.location}); "
                                                  "names in one list are unique")
                continue
            index[n.name] = i
        if id(nodes) not in self.incomplete:
            self._link_list(every, start, index, outer, roots)
        names_here = {n.name: n for n in every if n.name}
        for n in nodes:
            inner_outer = () if isinstance(n, SeqNode) and n.kind in self.spec.blocks else outer + (names_here,)
            for child in child_lists(n):
                self.link(child, inner_outer)

    def _link_list(self, every: list[Node], start: int, index: dict[str, int], outer,
                   roots: tuple[int, ...] | None = None) -> None:
        targets: dict[int, list[int | None]] = {}
        for i in range(start, len(every)):
            if every[i].refs:
                targets[i] = [-1 if r.name == INPUT else index.get(r.name) for r in every[i].refs]

        def deps(k: int) -> tuple[int, ...]:
            if k < 0:
                return ()
            if k in targets:
                found = tuple(t for t in targets[k] if t is not None)
                return ((k - 1,) + found) if isinstance(every[k], OperatorNode) and len(every[k].refs) == 1 else found
            n = every[k]
            return n.sources if n.sources is not None else (k - 1,)

        ok = True
        for i, found in targets.items():
            n = every[i]
            sources: list[int] = []
            for ref, j in zip(n.refs, found):
                where = format_path(ref.path)
                if j is None:
                    self.problems.append(Problem(ref.location, where, self._unknown_ref(ref.name, i, every, outer)))
                elif j == i:
                    self.problems.append(Problem(ref.location, where, f"'{ref.name}' is this entry's own name: an entry "
                                                                      "cannot take its own output"))
                elif j > i:
                    target = every[j]
                    chain = self._path_back(j, i, deps)
                    if chain:
                        loop = " → ".join(every[k].where for k in reversed(chain))
                        message = (f"'{ref.name}' is {target.where} ({target.location}), which is computed from this "
                                   f"entry's output: a cycle {loop} → {n.where}")
                    else:
                        message = (f"'{ref.name}' is a later entry, {target.where} ({target.location}); an entry can "
                                   "take only the outputs of entries before it")
                    self.problems.append(Problem(ref.location, where, message))
                else:
                    sources.append(j)
                    continue
                ok = False
            if len(sources) == len(n.refs):
                if isinstance(n, OperatorNode) and len(n.refs) == 1:
                    sources.insert(0, i - 1)  # add: {from: a} = the previous output + a
                n.sources = tuple(sources)
        if not ok:
            return
        used: set[int] = set(roots if roots is not None else (len(every) - 1,))  # what leaves the list is used
        for k in range(len(every)):
            used.update(deps(k))
        for k in range(start, len(every)):
            if k not in used:
                n = every[k]
                named = f" and nothing takes '{n.name}'" if n.name else ""
                if k + 1 < len(every):
                    taker = every[k + 1]
                    self.fail(n.location, n.path, f"this entry's output is never used: {taker.where} takes from: "
                                                  f"{', '.join(r.name for r in taker.refs)} instead{named}; use it or "
                                                  "remove it")
                else:  # the last entry, while outputs.main names another one
                    main = self.spec.outputs.main if self.spec.outputs is not None else None
                    self.fail(n.location, n.path, f"this entry's output is never used: it is the last entry, but the "
                                                  f"main output is '{main}' (outputs.main){named}; make it an output "
                                                  "or remove it")
        if start and start < len(every) and start - 1 not in used and self.spec.backbone is not None:
            first = every[start]
            self.fail(self.source.locate(("backbone", "until")), ("backbone", "until"),
                      f"backbone layer '{self.spec.backbone.until}' is kept but never used: {first.where} takes from: "
                      f"{', '.join(r.name for r in first.refs)}; stop the backbone at the last layer the network uses")

    @staticmethod
    def _path_back(start: int, goal: int, deps: Callable[[int], tuple[int, ...]]) -> list[int] | None:
        """Entries from `start` back to `goal` through inputs (depth first), or None when start does not depend on it."""
        stack, seen = [(start, [start])], {start}
        while stack:
            k, trail = stack.pop()
            for d in deps(k):
                if d == goal:
                    return trail + [goal]
                if d not in seen:
                    seen.add(d)
                    stack.append((d, trail + [d]))
        return None

    def _unknown_ref(self, name: str, i: int, every: list[Node], outer: tuple[dict[str, Node], ...]) -> str:
        nested = _nested_name(name, every)
        if nested:
            return nested
        for scope in reversed(outer):
            if name in scope:
                found = scope[name]
                return (f"'{name}' names {found.where} ({found.location}), outside this list: a nested list (residual "
                        "body, concat branch, group, repeat copy, block) sees only its own entries and 'input'")
        visible = [INPUT] + [every[k].name for k in range(i) if every[k].name]
        return f"no entry before this one is named '{name}'{_close(name, visible)}; names here: {', '.join(visible)}"


def _nested_name(name: str, every: list[Node]) -> str | None:
    """The message for a name that only an entry inside a nested list of `every` has, or None."""
    for n in every:
        for inner in _descendants(n):
            if inner.name == name:
                return (f"'{name}' names {inner.where} ({inner.location}), inside {n.where}: names inside a nested "
                        "list are not visible outside it; name the nested entry itself or move the entry out")
    return None


# ---------------------------------------------------------------------- outputs: which entries leave the network
# The main output is what export and serving compute; each auxiliary output is trained only (loss weight × the
# task's loss on the same targets). Next-token models carry recurrent state from batch to batch through the one
# output the step form exports, so they take no auxiliary outputs.
NO_AUX = {("sequence", "tokens"): "a next-token model (task sequence on tokens) carries its recurrent state from "
                                  "batch to batch through its one output, so it takes no auxiliary outputs"}


@dataclass(frozen=True)
class Output:
    """One output of the network: the top-level entry (backbone entries first) whose value it is."""

    index: int  # position in backbone_nodes + nodes
    node: Node
    at: tuple[str | int, ...]  # where it is written (YAML path): outputs.main, outputs.aux[i].from, or network
    weight: float = 1.0  # an auxiliary output's factor in the training loss

    @property
    def name(self) -> str:
        return self.node.name or self.node.where

    @property
    def shown(self) -> str:
        """'name' (network[7].linear, file:line:column), for messages naming both outputs."""
        n = self.node
        return f"'{n.name}' ({n.where}, {n.location})" if n.name else f"{n.where} ({n.location})"


@dataclass(frozen=True)
class Outputs:
    main: Output
    aux: tuple[Output, ...] = ()


def resolve_outputs(spec: Spec, source: LocatedYaml, every: list[Node]) -> tuple[Outputs | None, list[Problem]]:
    """The spec's outputs over its top-level entries `every` (backbone entries, then the network's): (outputs, the
    problems found); outputs is None when there are problems."""
    problems: list[Problem] = []
    declared = spec.outputs
    if not every:
        return None, problems
    first: dict[str, int] = {}
    for i, n in enumerate(every):
        if n.name:
            first.setdefault(n.name, i)

    def find(name: str, at: tuple[str | int, ...]) -> int | None:
        if name in first:
            return first[name]
        hint = _nested_name(name, every) or (f"no top-level entry is named '{name}'{_close(name, list(first))}; "
                                             f"names: {', '.join(first) or 'none (name an entry with as:)'}")
        problems.append(Problem(source.locate(at), format_path(at), hint))
        return None

    if declared is None or declared.main is None:
        main: Output | None = Output(len(every) - 1, every[-1], ("network",))
    else:
        at = ("outputs", "main")
        k = find(declared.main, at)
        main = None if k is None else Output(k, every[k], at)
    aux: list[Output] = []
    items = declared.aux if declared is not None else []
    refusal = NO_AUX.get((spec.task, spec.input.kind))
    if items and refusal:
        problems.append(Problem(source.locate(("outputs", "aux")), "outputs.aux", refusal))
        return None, problems
    taken: dict[int, int] = {}
    for i, item in enumerate(items):
        at = ("outputs", "aux", i, "from")
        name = getattr(item, "from")
        k = find(name, at)
        if k is None:
            continue
        if main is not None and k == main.index:
            problems.append(Problem(source.locate(at), format_path(at),
                                    f"'{name}' is the main output ({main.node.where}); an auxiliary output is another "
                                    "entry, a head trained beside the main one"))
        elif k in taken:
            problems.append(Problem(source.locate(at), format_path(at),
                                    f"'{name}' is already auxiliary output outputs.aux[{taken[k]}]; list each once"))
        else:
            taken[k] = i
            aux.append(Output(k, every[k], at, float(item.weight)))
    if problems or main is None:
        return None, problems
    return Outputs(main, tuple(aux)), problems


def network_outputs(spec: Spec) -> Outputs:
    """The outputs of a loaded spec (checked when it loaded)."""
    outputs, problems = resolve_outputs(spec, spec.source, [*spec.backbone_nodes, *spec.nodes])
    if outputs is None:
        raise SpecError(problems or [Problem(spec.locate(("network",)), "network", "the network has no entries")])
    return outputs


def _descendants(node: Node) -> Iterator[Node]:
    for child in child_lists(node):
        for n in child:
            yield n
            yield from _descendants(n)


def _names(nodes: list[Node]) -> list[str]:
    return [n.name for n in nodes if n.name]


def _compact(uses: list[str]) -> str:
    """network[4], network[5], network[6], network[9] → network[4..6], network[9]."""
    parts: list[str] = []
    run: list[tuple[str, int]] = []

    def flush() -> None:
        if not run:
            return
        head, first = run[0]
        last = run[-1][1]
        parts.append(f"{head}[{first}]" if first == last else f"{head}[{first}..{last}]")
        run.clear()

    for use in uses:
        m = re.fullmatch(r"(.*)\[(\d+)\]", use)
        if m and run and run[-1][0] == m.group(1) and run[-1][1] + 1 == int(m.group(2)):
            run.append((m.group(1), int(m.group(2))))
            continue
        flush()
        if m:
            run.append((m.group(1), int(m.group(2))))
        else:
            parts.append(use)
    flush()
    return ", ".join(parts)


def _uses(paths: list[str]) -> list[str]:
    """The differing heads of paths that end alike (the uses of one block): strip their common tail."""
    tail = paths[0]
    for p in paths[1:]:
        while not p.endswith(tail):
            tail = tail[1:]
    cut = next((k for k, c in enumerate(tail) if c in ".["), len(tail))
    tail = tail[cut:]
    heads = [p[: len(p) - len(tail)] if tail else p for p in paths]
    return list(dict.fromkeys(heads))


def merge_repeats(problems: list[Problem]) -> list[Problem]:
    """One line per distinct problem: the same message at the same place (a mistake inside a block, seen at each
    use) is reported once, with the uses listed."""
    groups: dict[tuple[Any, str], list[Problem]] = {}
    for p in problems:
        groups.setdefault((p.location, p.message), []).append(p)
    merged = []
    for (_, message), found in groups.items():
        if len(found) == 1:
            merged.append(found[0])
            continue
        uses = _uses([p.path for p in found])
        merged.append(Problem(found[0].location, found[0].path,
                              f"{message} (in {len(found)} uses: {_compact(uses)})" if len(uses) > 1 else message))
    return merged


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
    nodes = parser.sequence(spec.network, _Context(parser.root), ("network",), ("network",))
    roots = None
    if id(nodes) not in parser.incomplete:
        every = [*backbone, *nodes]
        outputs, problems = resolve_outputs(spec, source, every)
        parser.problems.extend(problems)
        # with an output that does not resolve, no entry is blamed for being unused: the outputs are the mistake
        roots = tuple(range(len(every))) if outputs is None else (outputs.main.index, *(a.index for a in outputs.aux))
    parser.link(nodes, (), tuple(backbone), roots=roots)
    if parser.problems:
        raise SpecError(merge_repeats(parser.problems))
    return nodes, backbone
