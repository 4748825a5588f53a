"""Parse YAML into plain Python values while remembering where every value came from.

PyYAML's composer keeps marks on nodes; we walk the node graph ourselves so that every later error (pydantic,
layer arguments, shapes) can be reported at file:line:column. The walk is also where hostile input is bounded:
alias bombs expand past a node budget, deep nesting past a depth limit, and both become SpecErrors.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from models.errors import Location, SpecError, format_path

MAX_NODES = 100_000  # a real spec has a few thousand at most; an alias bomb has billions
MAX_DEPTH = 64
MAX_BYTES = 4 * 1024 * 1024

Path = tuple[str | int, ...]
_PLAIN_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq", "tag:yaml.org,2002:omap")


@dataclass
class LocatedYaml:
    data: Any
    file: str
    locations: dict[Path, Location] = field(default_factory=dict)  # where each value starts
    key_locations: dict[Path, Location] = field(default_factory=dict)  # where each mapping key is written

    def locate(self, path: Path, *, key: bool = False) -> Location:
        """The location of the value at `path` (or of its key), or of its closest ancestor that has one."""
        if key and tuple(path) in self.key_locations:
            return self.key_locations[tuple(path)]
        for end in range(len(path), -1, -1):
            found = self.locations.get(tuple(path[:end]))
            if found is not None:
                return found
        return Location(self.file, 1, 1)


def _location(file: str, mark: yaml.Mark | None) -> Location:
    if mark is None:
        return Location(file, 1, 1)
    return Location(file, mark.line + 1, mark.column + 1)


class _Walker:
    def __init__(self, file: str, loader: yaml.SafeLoader):
        self.file = file
        self.loader = loader
        self.nodes = 0
        self.locations: dict[Path, Location] = {}
        self.key_locations: dict[Path, Location] = {}

    def fail(self, node: yaml.Node, path: Path, message: str) -> SpecError:
        return SpecError.one(_location(self.file, node.start_mark), format_path(path), message)

    def walk(self, node: yaml.Node, path: Path) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise self.fail(node, path, f"spec expands to more than {MAX_NODES:,} values (YAML alias bomb?)")
        if len(path) > MAX_DEPTH:
            raise self.fail(node, path, f"nesting deeper than {MAX_DEPTH} levels")
        self.locations.setdefault(path, _location(self.file, node.start_mark))
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.tag not in _PLAIN_TAGS:
            raise self.fail(node, path, f"YAML tag {node.tag} is not allowed in a spec")
        if isinstance(node, yaml.MappingNode):
            self.loader.flatten_mapping(node)  # resolves YAML merge keys (<<) the way SafeLoader would
            result: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    raise self.fail(key_node, path, "mapping keys must be plain names")
                key = self.loader.construct_object(key_node)
                if not isinstance(key, (str, int, float, bool)) and key is not None:
                    raise self.fail(key_node, path, f"mapping key {key!r} is not a name")
                key = str(key) if not isinstance(key, str) else key
                if key in result:
                    raise self.fail(key_node, path + (key,), f"duplicate key '{key}'")
                self.key_locations[path + (key,)] = _location(self.file, key_node.start_mark)
                result[key] = self.walk(value_node, path + (key,))
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self.walk(item, path + (i,)) for i, item in enumerate(node.value)]
        return self.loader.construct_object(node)


def parse_yaml(raw: bytes | str, file: str) -> LocatedYaml:
    """Parse one YAML document; any problem at all becomes a SpecError pointing into `file`."""
    if isinstance(raw, bytes):
        if len(raw) > MAX_BYTES:
            raise SpecError.one(Location(file, 1, 1), "", f"file is {len(raw):,} bytes; a spec is at most {MAX_BYTES:,}")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            line = raw[: err.start].count(b"\n") + 1
            raise SpecError.one(Location(file, line, 1), "", f"not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start})") from None
    else:
        text = raw
    if "\x00" in text:
        raise SpecError.one(Location(file, 1, 1), "", "binary file (contains NUL bytes), not a YAML spec")
    try:
        loader = yaml.SafeLoader(text)
    except yaml.reader.ReaderError as err:  # raised while the constructor reads the first chunk
        line = text[: err.position].count("\n") + 1
        raise SpecError.one(Location(file, line, 1), "", f"not valid YAML: character #x{err.character:04x} is not allowed") from None
    try:
        node = loader.get_single_node()
        if node is None:
            raise SpecError.one(Location(file, 1, 1), "", "empty file: a spec needs at least name, task, input and network")
        walker = _Walker(file, loader)
        data = walker.walk(node, ())
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        what = " ".join(part for part in (err.context, err.problem) if part)
        raise SpecError.one(_location(file, mark), "", f"not valid YAML: {what}") from None
    except yaml.YAMLError as err:
        raise SpecError.one(Location(file, 1, 1), "", f"not valid YAML: {err}") from None
    except (ValueError, TypeError, OverflowError) as err:  # scalar constructors on odd values, e.g. a bad !!timestamp
        raise SpecError.one(Location(file, 1, 1), "", f"not valid YAML: {err}") from None
    except RecursionError:
        raise SpecError.one(Location(file, 1, 1), "", f"nesting too deep to parse (limit {MAX_DEPTH} levels)") from None
    finally:
        loader.dispose()
    return LocatedYaml(data, file, walker.locations, walker.key_locations)
