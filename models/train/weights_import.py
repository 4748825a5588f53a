"""Weights trained elsewhere, mapped onto a spec's network by name and shape.

A weights file is a safetensors file or a torch state_dict (`.pt`/`.pth`/`.bin`, unpickled with weights_only=True,
so it can hold tensors only, never code). Tensors are matched to the network's state_dict in two passes:

1. by exact name and shape (a file written by specserve itself);
2. the rest in order: walking both lists, a file tensor goes to the next unmatched network tensor with the same
   shape and the same kind (the last name part: weight, bias, running_mean, ...). A spec written in the layout of
   another library — torchvision's ResNet (conv1, bn1, layer1.0.conv1, ..., fc) as conv/batchnorm/residual
   entries in the same order — thus imports its state_dict, whatever the names. Only a torch state_dict keeps
   its module order: a safetensors file returns its names sorted, so it must use the network's names.

The convolutions that read the network's input (`adapt`) may also take a kernel on another number of input
channels, adapted 1 → N or N → 1 (models/train/input_conv.py): a gray backbone on colour images, or the reverse.

The report lists every tensor matched (file name → network name), adapted (network name → what was done), missing
(network tensors no file tensor fed) and unexpected (file tensors left over), so a partial import is never silent.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from models.errors import SpecserveError
from models.train.input_conv import ChannelsRefused, adapt_input_conv, differs_in_channels

TORCH_SUFFIXES = (".pt", ".pth", ".bin")


class WeightsError(SpecserveError):
    """A weights file that cannot be read or does not fit the network; the message names the file."""


class InputChannelsError(WeightsError):
    """An input convolution whose channels no adaptation maps (e.g. 3 in the file, 4 in the spec)."""


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file or a torch state_dict (weights_only=True), by name, in file order."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    if path.suffix in TORCH_SUFFIXES:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - a refused or broken pickle raises many types
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise WeightsError(f"{path}: not a torch state_dict of tensors ({first})") from None
        if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
            loaded = loaded["state_dict"]  # checkpoints that wrap the state_dict (Lightning, timm training)
        if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
            raise WeightsError(f"{path}: expected a mapping of names to tensors (a state_dict)")
        return {str(k): v for k, v in loaded.items()}
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise WeightsError(f"{path}: not a readable safetensors file ({err}); torch files end in "
                           f"{', '.join(TORCH_SUFFIXES)}") from None


@dataclass
class ImportReport:
    source: str
    matched: dict[str, str] = field(default_factory=dict)  # file name → network name
    adapted: dict[str, str] = field(default_factory=dict)  # network name → how its input channels were adapted
    missing: list[str] = field(default_factory=list)  # network tensors left as they were
    unexpected: list[str] = field(default_factory=list)  # file tensors not used

    @property
    def complete(self) -> bool:
        return not self.missing and not self.unexpected

    def summary(self) -> str:
        renamed = sum(1 for a, b in self.matched.items() if a != b)
        line = f"{self.source}: {len(self.matched)} tensors loaded ({renamed} by order and shape)"
        for name, how in self.adapted.items():
            line += f"; {name}: {how}"
        if self.missing:
            line += f", {len(self.missing)} missing ({', '.join(self.missing[:4])}{', ...' if len(self.missing) > 4 else ''})"
        if self.unexpected:
            line += (f", {len(self.unexpected)} unexpected ({', '.join(self.unexpected[:4])}"
                     f"{', ...' if len(self.unexpected) > 4 else ''})")
        return line

    def to_dict(self) -> dict:
        return {"source": self.source, "complete": self.complete, "matched": self.matched, "adapted": self.adapted,
                "missing": self.missing, "unexpected": self.unexpected}


def _kind(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def map_weights(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor],
                adapt: frozenset[str] | set[str] = frozenset()) -> dict[str, str]:
    """file name → target name: exact name and shape first, then in order by shape and kind (module docstring).
    A target in `adapt` (an input convolution) also takes a tensor that differs only in its input channels."""
    def fits(name: str, tensor: torch.Tensor) -> bool:
        shape = target[name].shape
        return shape == tensor.shape or (name in adapt and differs_in_channels(tensor.shape, shape))

    mapping = {name: name for name, t in source.items() if name in target and fits(name, t)}
    taken = set(mapping.values())
    pending = [n for n in target if n not in taken]  # network order
    cursor = 0
    for name, tensor in source.items():
        if name in mapping:
            continue
        for i in range(cursor, len(pending)):
            candidate = pending[i]
            if fits(candidate, tensor) and _kind(candidate) == _kind(name):
                mapping[name] = candidate
                cursor = i + 1  # order is kept: later file tensors map to later network tensors
                break
    return mapping


def adapted_tensor(tensor: torch.Tensor, target: torch.Tensor, path: str | Path) -> tuple[torch.Tensor, str | None]:
    """(the file's tensor in the target's shape, how it was adapted or None); refused channel counts are an
    InputChannelsError naming the file."""
    if tensor.shape == target.shape:
        return tensor, None
    try:
        return adapt_input_conv(tensor, target.shape[1])
    except ChannelsRefused as err:
        raise InputChannelsError(f"{path}: {err}") from None


def import_weights(net: nn.Module, path: str | Path, *, prefix: str = "", strict: bool = False,
                   adapt: frozenset[str] | set[str] = frozenset()) -> ImportReport:
    """Copy the file's tensors into `net` (only under `prefix`, e.g. "backbone." — names in the file are then
    relative to it). strict: every tensor of that part of the network must be fed and every file tensor used.
    adapt: full names of the input convolutions whose input channels may be adapted (models/train/input_conv.py)."""
    return import_tensors(net, read_weights(path), path, prefix=prefix, strict=strict, adapt=adapt)


def import_tensors(net: nn.Module, weights: dict[str, torch.Tensor], path: str | Path, *, prefix: str = "",
                   strict: bool = False, adapt: frozenset[str] | set[str] = frozenset()) -> ImportReport:
    """import_weights for tensors already read from `path` (a caller that tried the names first reads once)."""
    own = {n: t for n, t in net.state_dict().items() if n.startswith(prefix)}
    relative = {n[len(prefix):]: t for n, t in own.items()}
    mapping = map_weights(weights, relative, {n[len(prefix):] for n in adapt if n.startswith(prefix)})
    report = ImportReport(str(path), matched={k: prefix + v for k, v in mapping.items()},
                          missing=[prefix + n for n in relative if n not in set(mapping.values())],
                          unexpected=[n for n in weights if n not in mapping])
    if not mapping:
        raise WeightsError(f"{path}: no tensor fits this network by name or by order and shape")
    by_order = [name for name, target in mapping.items() if name != target]
    if by_order and Path(path).suffix not in TORCH_SUFFIXES:
        # safetensors keeps no tensor order (names come back sorted: layer1.10 before layer1.2, bn1 before conv1),
        # so pairing by order would swap same-shaped tensors (bn1 and bn2) without any error
        raise WeightsError(f"{path}: {len(by_order)} tensors ({', '.join(by_order[:3])}, ...) are not named as this "
                           f"network's and a safetensors file keeps no order to pair them by; give a torch "
                           f"state_dict ({', '.join(TORCH_SUFFIXES)}), which keeps its module order, or the "
                           f"network's own names")
    if strict and not report.complete:
        raise WeightsError(report.summary())
    loaded = {}
    for name, target in mapping.items():  # every tensor adapted (or refused) before any is copied
        loaded[target], how = adapted_tensor(weights[name], own[prefix + target], path)
        if how is not None:
            report.adapted[prefix + target] = how
    with torch.no_grad():
        for target, tensor in loaded.items():
            own[prefix + target].copy_(tensor)
    return report
