"""`load_spec(path) -> Spec`: the one door into the system.

Whatever the bytes, loading returns a Spec or raises SpecError, whose every problem carries file:line:column and a
dotted path. It validates the typed sections (models.spec.schema), loads a backbone spec, parses the network against
the layer registry (models.spec.network) and checks the data section (models.spec.data_section), then binds the
source and the parsed network to the Spec. This module imports those; none of them imports it.
"""
from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from models.errors import Location, Problem, SpecError
from models.spec.data_section import check_data_section
from models.spec.located_yaml import parse_yaml
from models.spec.network import parse_network
from models.spec.schema import Loaded, Spec
from models.spec.validation import validation_problems

MAX_BACKBONE_DEPTH = 8


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise SpecError.one(Location(str(path), 1, 1), "", "file not found") from None
    except IsADirectoryError:
        raise SpecError.one(Location(str(path), 1, 1), "", "is a directory, not a spec file") from None
    except OSError as err:
        raise SpecError.one(Location(str(path), 1, 1), "", f"cannot read: {err.strerror or err}") from None


def load_spec_text(raw: bytes | str, file: str = "<spec>", *, base_dir: Path | None = None,
                   _loading: tuple[Path, ...] = ()) -> Spec:
    """Parse and validate spec text; `file` is used in messages, `base_dir` resolves backbone paths."""
    located = parse_yaml(raw, file)
    if not isinstance(located.data, dict):
        kind = type(located.data).__name__ if located.data is not None else "nothing"
        raise SpecError.one(located.locate(()), "", f"a spec is a mapping of sections (name, task, input, network, ...), not a {kind}")
    try:
        spec = Spec.model_validate(located.data)
    except ValidationError as err:
        raise SpecError(validation_problems(err, located, model=Spec)) from None
    backbone = _load_backbone(spec, located.locate(("backbone", "spec")), base_dir or Path("."), _loading) \
        if spec.backbone is not None else None
    nodes, backbone_nodes = parse_network(spec, located, backbone)  # unknown layers, bad arguments, bad block uses
    spec.bind(Loaded(located, Path(file) if file != "<spec>" else None, backbone, tuple(nodes), tuple(backbone_nodes)))
    check_data_section(spec)  # dataset name, options and augmentation steps (reads no file)
    return spec


def _load_backbone(spec: Spec, where: Location, base_dir: Path, loading: tuple[Path, ...]) -> Spec:
    assert spec.backbone is not None
    target = (base_dir / spec.backbone.spec).resolve()
    if target in loading:
        chain = " → ".join(p.name for p in (*loading, target))
        raise SpecError.one(where, "backbone.spec", f"backbone specs form a cycle: {chain}")
    if len(loading) > MAX_BACKBONE_DEPTH:
        raise SpecError.one(where, "backbone.spec", f"backbone specs nest more than {MAX_BACKBONE_DEPTH} deep")
    try:
        return load_spec(target, _loading=(*loading, target))
    except SpecError as err:
        problems = [Problem(where, "backbone.spec", f"backbone {spec.backbone.spec} does not load:")] + err.problems
        raise SpecError(problems) from None


def load_spec(path: str | Path, *, _loading: tuple[Path, ...] = ()) -> Spec:
    """Load and validate a spec file. Raises SpecError (only) for anything wrong with it."""
    path = Path(path)
    return load_spec_text(_read(path), str(path), base_dir=path.parent, _loading=_loading or (path.resolve(),))
