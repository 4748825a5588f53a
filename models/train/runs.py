"""A run directory: everything a training run leaves behind, laid out so later steps need nothing else.

    runs/<name>/spec.yaml           the spec as trained (canonical form; a backbone spec beside it as backbone.yaml)
    runs/<name>/task.json           what export and serving need from the data: labels, vocabulary, scaling
    runs/<name>/metrics.json        per-epoch metrics and the final evaluation
    runs/<name>/curves.png          training curves
    runs/<name>/checkpoints/        last.json / best.json pointers and their safetensors + state files
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from models.train.checkpoint import atomic_write_text
from models.spec.schema import Spec
from models.spec.load import load_spec
from models.errors import SpecserveError


class RunError(SpecserveError, RuntimeError):
    """A run directory that is missing or incomplete."""


def _write_spec(spec: Spec, directory: Path, filename: str) -> None:
    data = spec.to_dict()
    if spec.backbone_spec is not None:
        backbone_file = f"backbone-{filename}" if filename != "spec.yaml" else "backbone.yaml"
        _write_spec(spec.backbone_spec, directory, backbone_file)
        data["backbone"]["spec"] = backbone_file
    import yaml

    atomic_write_text(directory / filename, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


class Run:
    def __init__(self, path: Path | str):
        self.path = Path(path)

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def spec_file(self) -> Path:
        return self.path / "spec.yaml"

    def exists(self) -> bool:
        return (self.checkpoints / "last.json").is_file()

    def write_spec(self, spec: Spec) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        _write_spec(spec, self.path, "spec.yaml")

    def load_spec(self) -> Spec:
        if not self.spec_file.is_file():
            raise RunError(f"{self.path}: not a run directory (no spec.yaml)")
        return load_spec(self.spec_file)

    def write_json(self, name: str, payload: Any) -> None:
        atomic_write_text(self.path / name, json.dumps(payload, indent=2, default=float))

    def read_json(self, name: str) -> Any:
        path = self.path / name
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise RunError(f"{path}: missing (has this run finished an epoch?)") from None
        except ValueError as err:
            raise RunError(f"{path}: not valid JSON ({err})") from None
