"""Checkpoints that a kill can never leave half-written, and that load without executing pickled code.

A checkpoint is two files, `<tag>.safetensors` (the weights) and `<tag>.state.pt` (optimizer, scheduler, RNG, epoch,
history — plain tensors and containers, loaded with `weights_only=True`), plus a pointer `<kind>.json` ("last",
"best") naming them with their sha256. Files are written under temporary names and moved into place with
os.replace; the pointer is replaced last, so it always names a complete pair: a kill at any moment leaves the
previous checkpoint readable.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from models.errors import SpecserveError


class CheckpointError(SpecserveError, RuntimeError):
    """A checkpoint that is missing, incomplete or does not match its pointer."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path), fsync it, then move it over `path` in one step."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def _plain_state_dict(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage; clone makes each tensor its own, contiguous and on the CPU
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in net.state_dict().items()}


@dataclass
class Checkpoint:
    weights: dict[str, torch.Tensor]
    state: dict[str, Any]
    pointer: dict[str, Any]


def save_checkpoint(directory: Path, kind: str, tag: str, net: torch.nn.Module, state: dict[str, Any],
                    info: dict[str, Any]) -> None:
    """Write `tag`'s files (if not already there) and point `kind` at them."""
    weights_path, state_path = directory / f"{tag}.safetensors", directory / f"{tag}.state.pt"
    if not (weights_path.exists() and state_path.exists()):
        atomic_write(weights_path, lambda tmp: save_file(_plain_state_dict(net), str(tmp)))
        atomic_write(state_path, lambda tmp: torch.save(state, tmp))
    pointer = {"tag": tag, "weights": weights_path.name, "state": state_path.name,
               "weights_sha256": sha256(weights_path), "state_sha256": sha256(state_path), **info}
    atomic_write_text(directory / f"{kind}.json", json.dumps(pointer, indent=2))
    _prune(directory)


def _prune(directory: Path) -> None:
    """Delete checkpoint files no pointer names any more (older epochs)."""
    named = set()
    for pointer in directory.glob("*.json"):
        try:
            data = json.loads(pointer.read_text())
            named |= {data["weights"], data["state"]}
        except (OSError, ValueError, KeyError):
            continue
    for path in list(directory.glob("*.safetensors")) + list(directory.glob("*.state.pt")):
        if path.name not in named:
            path.unlink(missing_ok=True)


def read_pointer(directory: Path, kind: str) -> dict[str, Any]:
    path = directory / f"{kind}.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no '{kind}' checkpoint in {directory}") from None
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable checkpoint pointer ({err})") from None


def load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None


def load_checkpoint(directory: Path, kind: str = "last", *, with_state: bool = True) -> Checkpoint:
    """Load and verify (sha256) the checkpoint `kind` points at. State is unpickled with weights_only=True."""
    pointer = read_pointer(directory, kind)
    weights_path, state_path = directory / pointer["weights"], directory / pointer["state"]
    for path, key in ((weights_path, "weights_sha256"), (state_path, "state_sha256")):
        if not path.is_file():
            raise CheckpointError(f"{path}: missing (named by {kind}.json)")
        if key == "weights_sha256" or with_state:
            if sha256(path) != pointer[key]:
                raise CheckpointError(f"{path}: sha256 differs from {kind}.json (file changed or corrupted)")
    weights = load_weights_file(weights_path)
    state: dict[str, Any] = {}
    if with_state:
        try:
            state = torch.load(state_path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - torch raises many types for a bad pickle
            raise CheckpointError(f"{state_path}: unreadable training state ({err})") from None
    return Checkpoint(weights, state, pointer)
