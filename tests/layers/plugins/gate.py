"""A plugin as a user would write one: a layer registered with the public decorator."""
from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from models.layers.builtin import Args, Signal, register


class ScaledTanhArgs(Args):
    scale: float = Field(default=2.0, gt=0)


class ScaledTanh(nn.Module):
    def __init__(self, channels: int, scale: float):
        super().__init__()
        self.scale = scale
        self.weight = nn.Parameter(torch.empty(channels))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x * self.scale) * self.weight.view(1, -1, *([1] * (x.dim() - 2)))


@register("scaled_tanh", ScaledTanhArgs, ranks=(2, 3))
def scaled_tanh(a: ScaledTanhArgs, x: Signal) -> nn.Module:
    """tanh(scale·x) times a learned factor per channel."""
    return ScaledTanh(x.shape[0], a.scale)


@register("broken_layer")
def broken_layer(a: Args, x: Signal) -> nn.Module:
    """A plugin layer whose builder has a bug (raises KeyError)."""
    return {}["missing"]
