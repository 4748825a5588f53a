"""Weight initialisation from the spec's `init` field.

Forms:  init: xavier_uniform                       weights of conv/linear layers (biases keep PyTorch's default)
        init: {normal: {std: 0.01}}                the same, with arguments
        init: {conv2d: kaiming_normal, linear: {normal: {std: 0.01}}, gru: xavier_uniform, default: xavier_uniform}
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from models.registry import Op, Registry, UnknownName

DEFAULT_KINDS = ("conv1d", "conv2d", "conv_transpose2d", "linear")  # what a bare `init: name` applies to


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NormalArgs(_Args):
    mean: float = 0.0
    std: float = Field(default=0.01, gt=0)


class UniformArgs(_Args):
    low: float = -0.07
    high: float = 0.07


class GainArgs(_Args):
    gain: float = Field(default=1.0, gt=0)


class KaimingArgs(_Args):
    mode: str = Field(default="fan_in", pattern="^(fan_in|fan_out)$")
    nonlinearity: str = Field(default="relu", pattern="^(relu|leaky_relu|tanh|sigmoid|linear)$")


Initializer = Callable[[torch.Tensor, Any], None]

INITIALIZERS: Registry[Op[Initializer]] = Registry("initializer")  # apply(weight, args), in place


def _initializer(name: str, args: type[_Args], apply: Initializer) -> None:
    INITIALIZERS.add(name, Op(name, args, apply))


_initializer("default", _Args, lambda w, a: None)
_initializer("normal", NormalArgs, lambda w, a: nn.init.normal_(w, a.mean, a.std))
_initializer("uniform", UniformArgs, lambda w, a: nn.init.uniform_(w, a.low, a.high))
_initializer("xavier_uniform", GainArgs, lambda w, a: nn.init.xavier_uniform_(w, a.gain))
_initializer("xavier_normal", GainArgs, lambda w, a: nn.init.xavier_normal_(w, a.gain))
_initializer("kaiming_uniform", KaimingArgs, lambda w, a: nn.init.kaiming_uniform_(w, mode=a.mode, nonlinearity=a.nonlinearity))
_initializer("kaiming_normal", KaimingArgs, lambda w, a: nn.init.kaiming_normal_(w, mode=a.mode, nonlinearity=a.nonlinearity))
_initializer("zeros", _Args, lambda w, a: nn.init.zeros_(w))


def _one(value: Any) -> tuple[Initializer, Any]:
    if isinstance(value, str):
        name, raw = value, {}
    elif isinstance(value, dict) and len(value) == 1:
        name, raw = next(iter(value.items()))
        raw = raw or {}
    else:
        raise ValueError(f"an initializer is a name or {{name: {{args}}}}, got {value!r:.60}")
    try:
        found = INITIALIZERS.get(name)
        args_model, fn = found.args, found.apply
    except UnknownName as err:
        raise ValueError(str(err)) from None
    try:
        return fn, args_model.model_validate(raw)
    except ValidationError as err:
        raise ValueError(f"{name}: {err.errors(include_url=False)[0]['msg']}") from None


def parse_init(value: Any) -> dict[str, tuple[Initializer, Any]]:
    """Layer kind → (initializer, args). Raises ValueError with a readable message."""
    if isinstance(value, str) or (isinstance(value, dict) and len(value) == 1 and next(iter(value)) in INITIALIZERS):
        init = _one(value)
        return {kind: init for kind in DEFAULT_KINDS}
    if not isinstance(value, dict):
        raise ValueError(f"init is a name, {{name: {{args}}}} or a mapping of layer kind to initializer; got {value!r:.60}")
    from models.layers.builtin import LAYERS  # late: layers imports nothing from here, but keep import order simple

    table: dict[str, tuple[Initializer, Any]] = {}
    default = value.get("default")
    if default is not None:
        table.update({kind: _one(default) for kind in DEFAULT_KINDS})
    for kind, init in value.items():
        if kind == "default":
            continue
        if kind not in LAYERS:
            raise ValueError(str(UnknownName("layer", kind, LAYERS.names())))
        table[kind] = _one(init)
    return table


def apply_init(net: nn.Module, value: Any) -> None:
    """Initialise weight matrices of every module the builder tagged with its layer kind."""
    table = parse_init(value)
    for module in net.modules():
        kind = getattr(module, "spec_kind", None)
        if kind not in table or getattr(module, "keeps_own_init", False):
            continue
        fn, args = table[kind]
        with torch.no_grad():
            for name, param in module.named_parameters():
                if name.endswith("weight") or name.startswith("rnn.weight"):
                    if param.dim() >= 2:
                        fn(param, args)
