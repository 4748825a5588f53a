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
from models.train.checkpoint import CheckpointError, read_pointer
from models.train.weights_import import import_weights, read_weights


class PretrainedError(SpecserveError):
    """Weights that cannot be found or do not fit the network; the message names the file."""


def resolve_weights(source: str | Path) -> Path:
    """A run directory (its best, else last, checkpoint), or a weights file (safetensors or torch state_dict)."""
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
        raise PretrainedError(f"{path}: weights not found (give a run directory, a .safetensors file or a torch "
                              f"state_dict)")
    return path


def load_pretrained(net: nn.Module, source: str | Path, rename: Callable[[str], str | None],
                    prefix: str = "") -> set[str]:
    """Copy weights into `net`; returns the names loaded. A specserve checkpoint matches by (renamed) name and
    shape; a file from elsewhere (e.g. a torchvision state_dict) is mapped by order and shape under `prefix`
    (models/train/weights_import.py)."""
    path = resolve_weights(source)
    weights = read_weights(path)
    own = net.state_dict()
    exact = {}
    for name, tensor in weights.items():
        target = rename(name)
        if target in own and own[target].shape == tensor.shape:
            exact[target] = tensor
    if exact:
        with torch.no_grad():
            for target, tensor in exact.items():
                own[target].copy_(tensor)
        return set(exact)
    return set(import_weights(net, path, prefix=prefix).matched.values())


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
            load_pretrained(net, spec.backbone.weights, to_backbone, prefix="backbone.")
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
