"""Weights trained elsewhere into a spec's network: a backbone's run or file, `train.init_from`, freezing and
learning-rate scales for what was loaded."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from models.build import SpecNet
from models.errors import SpecserveError
from models.spec.schema import Spec
from models.train.checkpoint import CheckpointError, load_weights_file, read_pointer


class PretrainedError(SpecserveError):
    """Weights that cannot be found or do not fit the network; the message names the file."""


def resolve_weights(source: str | Path) -> Path:
    """A run directory (its best, else last, checkpoint) or a .safetensors file."""
    path = Path(source)
    if path.is_dir():
        directory = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        for kind in ("best", "last"):
            try:
                return directory / read_pointer(directory, kind)["weights"]
            except CheckpointError:
                continue
        raise PretrainedError(f"{path}: no checkpoint found (expected checkpoints/best.json or last.json)")
    if not path.is_file():
        raise PretrainedError(f"{path}: weights not found (give a run directory or a .safetensors file)")
    return path


def load_pretrained(net: nn.Module, source: str | Path, rename: Callable[[str], str | None]) -> set[str]:
    """Copy every tensor whose (renamed) name and shape match into `net`; returns the names loaded."""
    weights = load_weights_file(resolve_weights(source))
    own = net.state_dict()
    loaded: set[str] = set()
    with torch.no_grad():
        for name, tensor in weights.items():
            target = rename(name)
            if target in own and own[target].shape == tensor.shape:
                own[target].copy_(tensor)
                loaded.add(target)
    if not loaded:
        raise PretrainedError(f"{source}: no tensor matches this network by name and shape")
    return loaded


def apply_pretrained(net: SpecNet, spec: Spec) -> dict[str, float]:
    """Load backbone / init_from weights; freeze; return learning-rate scales by parameter name."""
    scales: dict[str, float] = {}
    params = dict(net.named_parameters())
    if spec.backbone is not None:
        depth = len(net.backbone)
        backbone_names = {n for n in params if n.startswith("backbone.")}

        def to_backbone(name: str) -> str | None:
            parts = name.split(".")
            if parts[0] == "body" and parts[1].isdigit() and int(parts[1]) < depth:
                return ".".join(["backbone", *parts[1:]])
            return None

        if spec.backbone.weights:
            load_pretrained(net, spec.backbone.weights, to_backbone)
        for n in backbone_names:
            scales[n] = spec.backbone.lr_scale
            if spec.backbone.freeze:
                params[n].requires_grad_(False)
    init = spec.train.init_from
    if init is not None:
        loaded = load_pretrained(net, init.weights, lambda n: n)
        for n in loaded & set(params):
            scales[n] = init.lr_scale
            if init.freeze:
                params[n].requires_grad_(False)
    if spec.backbone is not None and spec.backbone.freeze:
        for module in net.backbone.modules():  # frozen BatchNorm keeps its statistics too
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval().requires_grad_(False)
                module.track_running_stats = True
                module.momentum = 0.0
    return scales
