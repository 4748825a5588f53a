"""Arithmetic in spec values: `"$c * 6"`, `"$in_channels // 2"`, `"max(1, $in_channels // 4)"`, `"$c2[0]"`.

A string holding a `$` is an expression. Its names are block parameters (`$c`) and the shape of the input arriving
at the layer it is written in (`$in_channels` = axis 0, `$in_features` = the last axis, `$in_height` / `$in_width`
of a (C, H, W) input, `$in_shape[i]`). It is parsed with Python's `ast` and only a whitelist is evaluated: numbers,
`+ - * / // % **`, unary minus, parentheses, `min(...)`, `max(...)`, `$names` and indexing `$name[i]`. No Python
`eval`, no attribute access, no calls but min/max; exponents, results and the text are bounded, so an expression
cannot hang or exhaust memory.

An expression over parameters only is evaluated while the spec is parsed; one over the input's shape (directly, or
through a parameter whose value used it) becomes an `Expr` that the builder evaluates once it knows the shape at
its anchor: the layer it is written in, or for a block's parameters and defaults, the block's use.
"""
from __future__ import annotations

import ast
import difflib
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from models.errors import Location

SHAPE_NAMES = ("in_channels", "in_features", "in_height", "in_width", "in_shape")
FUNCTIONS: dict[str, Callable[..., Any]] = {"min": min, "max": max}
MAX_TEXT = 200
MAX_EXPONENT = 64
MAX_MAGNITUDE = 10**15
_NAME = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")
_PREFIX = "__p_"  # `$c` is parsed as the Python name __p_c, so bare names (no $) can be told apart
_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%", ast.Pow: "**"}
ALLOWED = "numbers, + - * / // % **, parentheses, min(), max(), $names and $name[i]"


class ExprError(ValueError):
    """An expression that cannot be parsed or evaluated; the message is for the user (without the text).
    `expr` is the Expr that failed, when an Expr was being evaluated (the innermost one)."""

    expr: "Expr | None" = None


def is_expression(value: Any) -> bool:
    return isinstance(value, str) and "$" in value


def compile_expression(text: str) -> ast.Expression:
    """The checked syntax tree of `text`; raises ExprError naming what is not allowed."""
    if len(text) > MAX_TEXT:
        raise ExprError(f"expressions are at most {MAX_TEXT} characters")
    source = _NAME.sub(lambda m: _PREFIX + m.group(1), text).strip()
    if "$" in source:
        raise ExprError("'$' must be followed by a name, like $c or $in_channels")
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as err:
        raise ExprError(f"not an expression ({err.msg}); allowed: {ALLOWED}") from None
    for node in ast.walk(tree):
        _check(node)
    return tree


def _check(node: ast.AST) -> None:
    if isinstance(node, (ast.Expression, ast.Load)) or type(node) in _OPS or isinstance(node, (ast.USub, ast.UAdd)):
        return
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        return
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise ExprError(f"{node.value!r} is not a number; allowed: {ALLOWED}")
        if not abs(node.value) <= MAX_MAGNITUDE:
            raise ExprError(f"the number {node.value:.3g} is too large (limit {MAX_MAGNITUDE:.0e})")
        return
    if isinstance(node, ast.Name):
        if node.id.startswith(_PREFIX) or node.id in FUNCTIONS:
            return
        raise ExprError(f"names in expressions start with $: write ${node.id}")
    if isinstance(node, ast.Call):
        if isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS and node.args and not node.keywords \
                and not any(isinstance(a, ast.Starred) for a in node.args):
            return
        raise ExprError(f"the only functions are min(a, b, ...) and max(a, b, ...); allowed: {ALLOWED}")
    if isinstance(node, ast.Subscript):
        if isinstance(node.slice, ast.Slice):
            raise ExprError("slices are not allowed; index one item, like $c2[0]")
        return
    what = {ast.Attribute: "attribute access is", ast.Compare: "comparisons are", ast.BoolOp: "and/or are",
            ast.IfExp: "if/else is", ast.Lambda: "lambda is", ast.List: "lists (write a YAML list) are",
            ast.Tuple: "tuples (write a YAML list) are"}
    raise ExprError(f"{what.get(type(node), type(node).__name__ + ' is')} not allowed; allowed: {ALLOWED}")


def names_in(tree: ast.Expression) -> list[str]:
    """The `$names` an expression uses, without the $, in order of first use."""
    used = sorted((node.col_offset, node.id[len(_PREFIX):]) for node in ast.walk(tree)
                  if isinstance(node, ast.Name) and node.id.startswith(_PREFIX))
    return list(dict.fromkeys(name for _, name in used))


def suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f" (did you mean ${close[0]}?)" if close else ""


@dataclass(frozen=True, eq=False)
class Expr:
    """An expression waiting for the input's shape at its anchor (a node id given by the parser)."""

    text: str
    tree: ast.Expression
    params: Mapping[str, Any]  # the block parameters in scope (values may be Exprs themselves)
    anchor: int
    location: Location
    path: tuple[str | int, ...]

    def evaluate(self, shape_at: Callable[[int], tuple[int, ...]]) -> Any:
        """The value, given the per-sample input shape at each anchor; raises ExprError."""

        def lookup(name: str) -> Any:
            if name in self.params:
                return resolve(self.params[name], shape_at)
            return shape_value(name, shape_at(self.anchor))

        try:
            return evaluate(self.tree, lookup)
        except ExprError as err:
            if err.expr is None:
                err.expr = self
            raise


def needs_shape(value: Any) -> bool:
    """Whether `value` (a resolved spec value) still holds an expression over an input shape."""
    if isinstance(value, Expr):
        return True
    if isinstance(value, list):
        return any(needs_shape(v) for v in value)
    if isinstance(value, dict):
        return any(needs_shape(v) for v in value.values())
    return False


def resolve(value: Any, shape_at: Callable[[int], tuple[int, ...]]) -> Any:
    """`value` with every Expr in it evaluated."""
    if isinstance(value, Expr):
        return value.evaluate(shape_at)
    if isinstance(value, list):
        return [resolve(v, shape_at) for v in value]
    if isinstance(value, dict):
        return {k: resolve(v, shape_at) for k, v in value.items()}
    return value


def shape_value(name: str, shape: tuple[int, ...]) -> Any:
    if name == "in_shape":
        return list(shape)
    if name == "in_channels":
        return shape[0]
    if name == "in_features":
        return shape[-1]
    if len(shape) != 3:
        raise ExprError(f"${name} needs a (channels, height, width) input, but the input here is {shape}")
    return shape[1] if name == "in_height" else shape[2]


def _number(value: Any, what: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ExprError(f"{what} is {value!r}, not a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise ExprError(f"{what} is {value}, not a finite number")
    return value


def _describe(node: ast.AST) -> str:
    return ast.unparse(node).replace(_PREFIX, "$")


def evaluate(tree: ast.Expression, lookup: Callable[[str], Any]) -> Any:
    """Evaluate a tree from `compile_expression`; `lookup(name)` gives a `$name`'s value."""

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return lookup(node.id[len(_PREFIX):])
        if isinstance(node, ast.UnaryOp):
            value = _number(ev(node.operand), _describe(node.operand))
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.Call):
            args = [_number(ev(a), _describe(a)) for a in node.args]
            return FUNCTIONS[node.func.id](*args)  # type: ignore[union-attr]
        if isinstance(node, ast.Subscript):
            container = ev(node.value)
            index = ev(node.slice)
            if not isinstance(container, (list, tuple)):
                raise ExprError(f"{_describe(node.value)} is {container!r}, not a list to index")
            if isinstance(index, bool) or not isinstance(index, int):
                raise ExprError(f"index {index!r} is not a whole number")
            if not -len(container) <= index < len(container):
                raise ExprError(f"{_describe(node.value)} = {list(container)} has no item {index}")
            return container[index]
        assert isinstance(node, ast.BinOp)
        a = _number(ev(node.left), _describe(node.left))
        b = _number(ev(node.right), _describe(node.right))
        op = type(node.op)
        if op in (ast.Div, ast.FloorDiv, ast.Mod) and b == 0:
            raise ExprError("division by zero")
        if op is ast.Pow:
            if abs(b) > MAX_EXPONENT:
                raise ExprError(f"the exponent {b} is too large (at most {MAX_EXPONENT})")
            if abs(a) > 2**32 and b > 1:
                raise ExprError(f"{a} ** {b} is too large")
            if a < 0 and isinstance(b, float) and not b.is_integer():
                raise ExprError(f"{a} ** {b} is not a real number")
            if a == 0 and b < 0:
                raise ExprError("division by zero")
        try:
            result = {ast.Add: lambda: a + b, ast.Sub: lambda: a - b, ast.Mult: lambda: a * b, ast.Div: lambda: a / b,
                      ast.FloorDiv: lambda: a // b, ast.Mod: lambda: a % b, ast.Pow: lambda: a ** b}[op]()
        except OverflowError:
            raise ExprError(f"{_describe(node)} is too large") from None
        if isinstance(result, complex) or (isinstance(result, float) and not math.isfinite(result)):
            raise ExprError(f"{_describe(node)} is not a finite real number")
        if abs(result) > MAX_MAGNITUDE:
            raise ExprError(f"{_describe(node)} is too large (limit {MAX_MAGNITUDE:.0e})")
        return result

    value = ev(tree)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)  # 96 / 4 = 24 is a channel count, not 24.0
    return value
