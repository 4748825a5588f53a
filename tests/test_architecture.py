"""The house follows the flow: no import cycles, no arrow up the flow, a serving side without torch, one table.

Imports are read from the source (ast), late imports inside functions included: a circle through a late import is
still a circle in the design.
"""
from __future__ import annotations

import ast
import typing
from pathlib import Path

import pytest

from models.task_table import ENDPOINTS, TASK_KINDS, TASKS
from tests.conftest import ROOT

# The floors of the flow, lowest first: a module may import its own floor and the floors below, never above.
FLOORS = [
    ("models.errors", "models.registry", "models.task_table"),  # shared vocabulary
    ("models.artifact",),  # the contract with serving: card, store, runtime, scaling, sampling (no torch)
    ("models.layers", "models.data"),
    ("models.spec",),
    ("models.build",),
    ("models.train",),
    ("models.export",),
    ("models.pipeline",),
    ("models.cli",),
]
SERVING_MAY_IMPORT = ("service", "models.artifact", "models.errors", "models.task_table")


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _project_modules() -> dict[str, Path]:
    files = [*ROOT.glob("models/**/*.py"), *ROOT.glob("service/*.py")]
    return {_module_name(p): p for p in files if p.name != "__main__.py"}


MODULES = _project_modules()


def _imports(path: Path) -> set[str]:
    """Project modules imported by `path` (a `from a.b import c` counts as a.b.c when that is a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
    return {m for m in found if m in MODULES}


GRAPH = {name: _imports(path) for name, path in MODULES.items()}


def _floor(module: str) -> int:
    for level, prefixes in enumerate(FLOORS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return level
    raise AssertionError(f"{module} is on no floor of FLOORS: add its package there")


def test_no_import_cycles() -> None:
    """Tarjan's strongly connected components of the import graph: every one must be a single module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in GRAPH[v]:
                cycles.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_imports_point_down_the_flow() -> None:
    upward = [f"{a} (floor {_floor(a)}) imports {b} (floor {_floor(b)})"
              for a, targets in GRAPH.items() if a.startswith("models") for b in targets if _floor(b) > _floor(a)]
    assert not upward, "\n".join(upward)


def test_serving_side_imports_only_the_artifact_wing() -> None:
    serving = [m for m in GRAPH if m.startswith("service") or m.startswith("models.artifact")]
    wrong = [f"{a} imports {b}" for a in serving for b in GRAPH[a]
             if not any(b == p or b.startswith(p + ".") for p in SERVING_MAY_IMPORT)]
    assert not wrong, "\n".join(wrong)
    torch_users = [m for m in serving if any(n.split(".")[0] == "torch" for n in _all_imports(MODULES[m]))]
    assert not torch_users, f"serving-side modules importing torch: {torch_users}"


def _all_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_bentofile_packs_no_torch() -> None:
    import yaml

    bento = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    assert not [p for p in bento["python"]["packages"] if p.lower().startswith("torch")]


# ------------------------------------------------------------------ one table of (task, input kind)
def test_every_table_agrees_with_the_task_table() -> None:
    from models.spec.schema import Task
    from models.train.tasks import TASK_CLASSES
    from service.config import Endpoint

    pairs = {(k.task, k.input) for k in TASK_KINDS}
    assert set(TASK_CLASSES) == pairs  # a trainer for every pair, and no trainer for a pair the table refuses
    assert set(typing.get_args(Task)) == set(TASKS)
    assert set(typing.get_args(Endpoint)) == set(ENDPOINTS)
    assert len(set(ENDPOINTS)) == len(ENDPOINTS)  # one endpoint per pair


def test_every_dataset_feeds_a_pair_of_the_table() -> None:
    from models.data import DATASETS

    pairs = {(k.task, k.input) for k in TASK_KINDS}
    assert {(DATASETS.get(n).task, DATASETS.get(n).input) for n in DATASETS.names()} <= pairs


@pytest.mark.parametrize("pair", TASK_KINDS, ids=[f"{k.task}-{k.input}" for k in TASK_KINDS])
def test_every_pair_has_a_dataset_that_trains_it(pair) -> None:
    from models.data import DATASETS

    assert any((DATASETS.get(n).task, DATASETS.get(n).input) == (pair.task, pair.input) for n in DATASETS.names())
