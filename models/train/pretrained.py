"""Weights trained elsewhere into a spec's network: a backbone's run or file, `train.init_from`, freezing and
learning-rate scales for what was loaded.

A relative `weights` path is read from the spec file's folder (as `backbone.spec` is), not from wherever the
trainer happens to run. A first convolution trained on another number of input channels (a gray backbone on colour
images, or the reverse) is adapted on loading, 1 → N or N → 1 (models/train/input_conv.py), with one line on stderr
saying what was done; any other pair is refused at the spec's weights field.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from models.build import SpecNet
from models.data import workers
from models.errors import SpecError, SpecserveError
from models.spec.schema import NotLoaded, Spec
from models.train.checkpoint import CheckpointError, read_pointer
from models.train.input_conv import differs_in_channels, input_convs
from models.train.weights_import import InputChannelsError, adapted_tensor, import_tensors, read_weights


class PretrainedError(SpecserveError):
    """Weights that cannot be found or do not fit the network; the message names the file."""


def spec_folder(spec: Spec) -> Path:
    """Where a spec's relative paths start: its file's folder (the current directory for text without a file)."""
    try:
        return spec.file.parent if spec.file is not None else Path(".")
    except NotLoaded:
        return Path(".")


def resolve_weights(source: str | Path, base: Path = Path(".")) -> Path:
    """A run directory (its best, else last, checkpoint), or a weights file (safetensors or torch state_dict);
    a relative `source` starts at `base` (the spec's folder)."""
    path = base / source  # an absolute source stays itself
    if path.is_dir():
        directory = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        for kind in ("best", "last"):
            try:
                return directory / read_pointer(directory, kind)["weights"]
            except CheckpointError:
                continue
        raise PretrainedError(f"{path}: no checkpoint found (expected checkpoints/best.json or last.json)")
    if not path.is_file():
        where = f", relative to the spec's folder {base}" if not Path(source).is_absolute() else ""
        raise PretrainedError(f"{path}: weights not found{where} (give a run directory, a .safetensors file or a "
                              f"torch state_dict)")
    return path


def note(message: str) -> None:
    """A one-line remark on what loading did to the weights (main rank only), beside the data's notes."""
    workers.note(message, about="weights")


def load_pretrained(net: nn.Module, path: Path, rename: Callable[[str], str | None], prefix: str = "",
                    adapt: frozenset[str] | set[str] = frozenset()) -> tuple[set[str], dict[str, str]]:
    """Copy weights into `net`: (the names loaded, {input conv: how its channels were adapted}). A specserve
    checkpoint matches by (renamed) name and shape; a file from elsewhere (e.g. a torchvision state_dict) is mapped
    by order and shape under `prefix` (models/train/weights_import.py). The convolutions named in `adapt` may take
    a kernel on another number of input channels (models/train/input_conv.py); refused counts raise
    InputChannelsError."""
    weights = read_weights(path)
    own = net.state_dict()
    exact: dict[str, torch.Tensor] = {}
    adapted: dict[str, str] = {}
    for name, tensor in weights.items():
        target = rename(name)
        if target in own and (own[target].shape == tensor.shape
                              or (target in adapt and differs_in_channels(tensor.shape, own[target].shape))):
            exact[target], how = adapted_tensor(tensor, own[target], path)
            if how is not None:
                adapted[target] = how
    if exact:
        with torch.no_grad():
            for target, tensor in exact.items():
                own[target].copy_(tensor)
        return set(exact), adapted
    report = import_tensors(net, weights, path, prefix=prefix, adapt=adapt)
    return set(report.matched.values()), report.adapted


def _load_field(net: SpecNet, spec: Spec, field: tuple[str, ...], source: str, rename: Callable[[str], str | None],
                prefix: str = "") -> set[str]:
    """load_pretrained for the spec's weights field `field` (a run or file, relative to the spec's folder): input
    convolutions adapted with a note, refused channel counts a SpecError at that field."""
    path = resolve_weights(source, spec_folder(spec))
    image = spec.input.kind == "image"
    adapt = input_convs(net, spec.input.channels, tuple(spec.input.size)) if image else set()
    try:
        loaded, adapted = load_pretrained(net, path, rename, prefix, adapt)
    except InputChannelsError as err:  # the spec's input.channels and these weights disagree: located at the field
        raise SpecError.one(spec.locate(field), ".".join(field), str(err)) from None
    for name, how in adapted.items():
        note(f"{'.'.join(field)} {path.resolve()}: {name}: {how}")
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
            _load_field(net, spec, ("backbone", "weights"), spec.backbone.weights, to_backbone, prefix="backbone.")
        for n in backbone_names:
            scales[n] = spec.backbone.lr_scale
            if spec.backbone.freeze:
                params[n].requires_grad_(False)
    init = spec.train.init_from
    if init is not None:
        loaded = _load_field(net, spec, ("train", "init_from", "weights"), init.weights, lambda n: n)
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
