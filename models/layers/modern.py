"""Layers of post-course architectures (MobileNet, EfficientNet, ConvNeXt, ViT): activations, normalizations,
shape plumbing, stochastic regularizers and transformer parts.

Same contract as models/layers/builtin.py: each builder gets its validated arguments and the per-sample `Signal`,
returns an nn.Module, and every module exports to plain ONNX ops (the registry test proves each one). Modules that
own parameters directly define `reset_parameters`, which `models.build.build` calls after allocating them.
Parameter names follow torchvision's where there is one (in_proj_weight, class_token, pos_embedding), so a
torchvision state_dict maps by order, shape and kind.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from models.layers.builtin import Args, IntOrPair, Signal, _positive, register, register_plain


def _pair(value: IntOrPair) -> tuple[int, int]:
    return value if isinstance(value, tuple) else (value, value)


# ---------------------------------------------------------------- activations
register_plain("relu6", nn.ReLU6, "min(max(x, 0), 6) (MobileNetV2).")
register_plain("hardswish", nn.Hardswish, "x · relu6(x + 3) / 6 (MobileNetV3).")
register_plain("hardsigmoid", nn.Hardsigmoid, "relu6(x + 3) / 6, a cheap sigmoid (MobileNetV3's SE gate).")
register_plain("silu", nn.SiLU, "x · sigmoid(x), also called swish (EfficientNet).")
register_plain("mish", nn.Mish, "x · tanh(softplus(x)).")


class EluArgs(Args):
    alpha: float = Field(default=1.0, gt=0)


@register("elu", EluArgs)
def elu(a: EluArgs, x: Signal) -> nn.Module:
    """x for x > 0, alpha·(exp(x) − 1) otherwise."""
    return nn.ELU(a.alpha)


class PReluArgs(Args):
    per_channel: bool = Field(default=False, description="one learned slope per channel (axis 0) instead of one")
    init: float = Field(default=0.25, ge=0, description="initial slope")


@register("prelu", PReluArgs)
def prelu(a: PReluArgs, x: Signal) -> nn.Module:
    """max(x, 0) + slope·min(x, 0) with a learned slope (one, or one per channel)."""
    return nn.PReLU(x.shape[0] if a.per_channel else 1, a.init)


class SoftplusArgs(Args):
    beta: float = Field(default=1.0, gt=0)
    threshold: float = Field(default=20.0, gt=0, description="above beta·x > threshold, x itself")


@register("softplus", SoftplusArgs)
def softplus(a: SoftplusArgs, x: Signal) -> nn.Module:
    """log(1 + exp(beta·x)) / beta, a smooth relu."""
    return nn.Softplus(a.beta, a.threshold)


# ---------------------------------------------------------------- normalization
class GroupNormArgs(Args):
    groups: int = Field(ge=1, description="channels are normalized in this many groups (must divide them)")
    eps: float = Field(default=1e-5, gt=0)
    affine: bool = True


def _norm_macs(m: nn.Module, x: Signal, y: Signal) -> int:
    return 2 * math.prod(y.shape)


@register("groupnorm", GroupNormArgs, ranks=(2, 3), macs=_norm_macs)
def groupnorm(a: GroupNormArgs, x: Signal) -> nn.Module:
    """Group normalization of (channels, ...): statistics per sample over each group of channels."""
    if x.shape[0] % a.groups:
        raise ValueError(f"groups={a.groups} must divide the input channels ({x.shape[0]})")
    return nn.GroupNorm(a.groups, x.shape[0], a.eps, a.affine)


class InstanceNormArgs(Args):
    eps: float = Field(default=1e-5, gt=0)
    affine: bool = Field(default=False, description="a learned scale and shift per channel")


@register("instancenorm", InstanceNormArgs, ranks=(2, 3), macs=_norm_macs)
def instancenorm(a: InstanceNormArgs, x: Signal) -> nn.Module:
    """Instance normalization of (channels, length) or (channels, height, width): per sample and channel."""
    cls = nn.InstanceNorm1d if len(x.shape) == 2 else nn.InstanceNorm2d
    return cls(x.shape[0], a.eps, affine=a.affine)


class ChannelsLayerNorm(nn.Module):
    """Layer norm over the channel axis at every position of (B, C, ...) (ConvNeXt's LayerNorm2d)."""

    def __init__(self, channels: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(channels))
        self.bias = nn.Parameter(torch.empty(channels))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        view = (1, -1) + (1,) * (x.dim() - 2)
        mean = x.mean(dim=1, keepdim=True)
        var = (x - mean).pow(2).mean(dim=1, keepdim=True)
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight.view(view) + self.bias.view(view)


class EpsArgs(Args):
    eps: float = Field(default=1e-6, gt=0)


@register("channels_layernorm", EpsArgs, ranks=(2, 3), macs=_norm_macs)
def channels_layernorm(a: EpsArgs, x: Signal) -> nn.Module:
    """Layer normalization across channels at each position of (channels, ...), with a scale and shift per channel."""
    return ChannelsLayerNorm(x.shape[0], a.eps)


# ---------------------------------------------------------------- regularization
class DropoutArgs(Args):
    p: float = Field(default=0.5, ge=0, lt=1)


@register("dropout2d", DropoutArgs, ranks=(3,))
def dropout2d(a: DropoutArgs, x: Signal) -> nn.Module:
    """Zeroes whole channels of (channels, height, width) with probability p while training; identity at inference."""
    return nn.Dropout2d(a.p)


class DropPath(nn.Module):
    """Stochastic depth: while training, each sample's input is zeroed with probability p (else scaled by 1/(1-p))."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = 1 - self.p
        mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * mask / keep


class DropPathArgs(Args):
    p: float = Field(default=0.1, ge=0, lt=1, description="probability of dropping a sample's path")


@register("drop_path", DropPathArgs)
def drop_path(a: DropPathArgs, x: Signal) -> nn.Module:
    """Stochastic depth: in a residual body, drops the branch per sample with probability p while training."""
    return DropPath(a.p)


class LayerScale(nn.Module):
    """x · scale, one learned factor per channel or feature (CaiT / ConvNeXt)."""

    def __init__(self, shape: tuple[int, ...], init: float):
        super().__init__()
        self.init = init
        self.scale = nn.Parameter(torch.empty(shape))

    def reset_parameters(self) -> None:
        nn.init.constant_(self.scale, self.init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class LayerScaleArgs(Args):
    init: float = Field(default=1e-6, description="initial factor")
    axis: int | None = Field(default=None, description="per-sample axis scaled; default channels (0) of (C, H, W), "
                                                       "else the last axis (features)")


@register("layer_scale", LayerScaleArgs)
def layer_scale(a: LayerScaleArgs, x: Signal) -> nn.Module:
    """Multiplies by a learned factor per channel (images) or per feature (tokens), started small (init)."""
    rank = len(x.shape)
    axis = a.axis if a.axis is not None else (0 if rank == 3 else -1)
    if not -rank <= axis < rank:
        raise ValueError(f"axis {axis} is out of range for an input of {rank} axes")
    axis %= rank
    return LayerScale((x.shape[axis],) + (1,) * (rank - 1 - axis), a.init)


# ---------------------------------------------------------------- shape plumbing
class PadArgs(Args):
    padding: int | list[int] = Field(description="every side, or PyTorch's order: [left, right, top, bottom]")
    mode: Literal["constant", "reflect", "replicate"] = "constant"
    value: float = Field(default=0.0, description="fill value of constant padding")

    @field_validator("padding")
    @classmethod
    def _pad(cls, v):
        values = v if isinstance(v, list) else [v]
        if any(p < 0 for p in values):
            raise ValueError(f"padding must be ≥ 0, got {v}")
        return v


class Pad(nn.Module):
    def __init__(self, pads: tuple[int, ...], mode: str, value: float):
        super().__init__()
        self.pads, self.mode, self.value = pads, mode, value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "constant":
            return F.pad(x, self.pads, "constant", self.value)
        return F.pad(x, self.pads, self.mode)


@register("pad", PadArgs, ranks=(1, 2, 3))
def pad(a: PadArgs, x: Signal) -> nn.Module:
    """Pads the axes after channels (all of a (features,) vector) with a constant, a reflection or the edge value."""
    axes = len(x.shape) - 1 if len(x.shape) > 1 else 1
    pads = tuple(a.padding) if isinstance(a.padding, list) else (a.padding,) * (2 * axes)
    if len(pads) % 2 or len(pads) > 2 * axes:
        raise ValueError(f"padding {a.padding}: give one number, or a pair per padded axis (at most {2 * axes} numbers)")
    if a.mode == "reflect":
        sizes = list(reversed(x.shape[len(x.shape) - len(pads) // 2:]))
        if any(p >= size for i, size in enumerate(sizes) for p in pads[2 * i: 2 * i + 2]):
            raise ValueError(f"reflect padding {a.padding} must be smaller than the padded axes {tuple(reversed(sizes))}")
    return Pad(pads, a.mode, a.value)


class CenterCrop(nn.Module):
    def __init__(self, starts: tuple[int, ...], sizes: tuple[int, ...]):
        super().__init__()
        self.starts, self.sizes = starts, sizes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, (start, size) in enumerate(zip(self.starts, self.sizes)):
            x = x.narrow(x.dim() - len(self.sizes) + i, start, size)
        return x


class CropArgs(Args):
    size: IntOrPair = Field(description="output (height, width), or length")

    @field_validator("size")
    @classmethod
    def _pos(cls, v, info):
        return _positive(v, info.field_name)


@register("center_crop", CropArgs, ranks=(2, 3))
def center_crop(a: CropArgs, x: Signal) -> nn.Module:
    """Keeps the central size × size (or [h, w]) window of (channels, height, width), or the central length."""
    spatial = x.shape[1:]
    sizes = _pair(a.size) if len(spatial) == 2 else ((a.size,) if isinstance(a.size, int) else tuple(a.size))
    if len(sizes) != len(spatial):
        raise ValueError(f"size {a.size} does not fit an input of {len(x.shape)} axes")
    if any(s > d for s, d in zip(sizes, spatial)):
        raise ValueError(f"cannot crop {spatial} to {sizes}: the crop is larger than the input")
    return CenterCrop(tuple((d - s) // 2 for s, d in zip(sizes, spatial)), sizes)


class ResizeArgs(Args):
    size: IntOrPair = Field(description="output (height, width)")
    mode: Literal["nearest", "bilinear", "bicubic"] = "bilinear"

    @field_validator("size")
    @classmethod
    def _pos(cls, v, info):
        return _positive(v, info.field_name)


class Resize(nn.Module):
    def __init__(self, size: tuple[int, int], mode: str):
        super().__init__()
        self.size, self.mode = size, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        corners = False if self.mode != "nearest" else None
        return F.interpolate(x, size=self.size, mode=self.mode, align_corners=corners)


@register("resize", ResizeArgs, ranks=(3,))
def resize(a: ResizeArgs, x: Signal) -> nn.Module:
    """Resamples (channels, height, width) to a fixed size (e.g. back to the input's size for segmentation)."""
    return Resize(_pair(a.size), a.mode)


class FactorArgs(Args):
    factor: int = Field(ge=1, description="upscaling factor r: (C·r², H, W) → (C, H·r, W·r)")


@register("pixel_shuffle", FactorArgs, ranks=(3,))
def pixel_shuffle(a: FactorArgs, x: Signal) -> nn.Module:
    """Sub-pixel upsampling: moves channel blocks into space, (C·r², H, W) → (C, H·r, W·r)."""
    if x.shape[0] % (a.factor ** 2):
        raise ValueError(f"the input's {x.shape[0]} channels are not a multiple of factor² = {a.factor ** 2}")
    return nn.PixelShuffle(a.factor)


class PermuteArgs(Args):
    dims: list[int] = Field(min_length=1, description="new order of the per-sample axes, e.g. [1, 2, 0]: (C,H,W) → (H,W,C)")


class Permute(nn.Module):
    def __init__(self, dims: list[int]):
        super().__init__()
        self.dims = (0, *(d + 1 for d in dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(self.dims)


@register("permute", PermuteArgs, ranks=(2, 3))
def permute(a: PermuteArgs, x: Signal) -> nn.Module:
    """Reorders the per-sample axes, e.g. (channels, steps) ↔ (steps, channels) with dims [1, 0]."""
    if sorted(a.dims) != list(range(len(x.shape))):
        raise ValueError(f"dims {a.dims} must order the input's axes 0..{len(x.shape) - 1}, each once")
    return Permute(a.dims)


class GroupsArgs(Args):
    groups: int = Field(ge=1, description="channels are split into this many groups and interleaved")


class ChannelShuffle(nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        return x.unflatten(1, (self.groups, c // self.groups)).transpose(1, 2).flatten(1, 2)


@register("channel_shuffle", GroupsArgs, ranks=(3,))
def channel_shuffle(a: GroupsArgs, x: Signal) -> nn.Module:
    """ShuffleNet's channel shuffle: (g·n channels) → interleaved, so grouped convolutions see every group."""
    if x.shape[0] % a.groups:
        raise ValueError(f"groups={a.groups} must divide the input channels ({x.shape[0]})")
    return ChannelShuffle(a.groups)


class SelectArgs(Args):
    axis: int = Field(default=0, description="per-sample axis")
    index: int = Field(default=0, description="position kept on that axis")


class Select(nn.Module):
    def __init__(self, axis: int, index: int):
        super().__init__()
        self.axis, self.index = axis, index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.select(self.axis + 1, self.index)


@register("select", SelectArgs, ranks=(2, 3))
def select(a: SelectArgs, x: Signal) -> nn.Module:
    """Keeps one position of an axis and drops the axis, e.g. the class token of (tokens, dim) → (dim,)."""
    rank = len(x.shape)
    if not -rank <= a.axis < rank:
        raise ValueError(f"axis {a.axis} is out of range for an input of {rank} axes")
    axis = a.axis % rank
    if not -x.shape[axis] <= a.index < x.shape[axis]:
        raise ValueError(f"index {a.index} is out of range for axis {axis} of size {x.shape[axis]}")
    return Select(axis, a.index % x.shape[axis])


# ---------------------------------------------------------------- transformers
class SelfAttention(nn.Module):
    """Multi-head self-attention on (B, T, D), written in plain ops (exports as MatMul/Softmax); parameters as
    nn.MultiheadAttention's (in_proj_weight (3D, D), in_proj_bias, out_proj)."""

    def __init__(self, dim: int, heads: int, dropout: float, bias: bool, causal: bool):
        super().__init__()
        self.heads, self.causal = heads, causal
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim)) if bias else None
        self.out_proj = nn.Linear(dim, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.in_proj_weight)
        if self.in_proj_bias is not None:
            nn.init.zeros_(self.in_proj_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.heads
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (B, T, 3D)
        q, k, v = qkv.reshape(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4)  # each (B, h, T, d/h)
        scores = q @ k.transpose(-2, -1) * (1.0 / math.sqrt(d // h))  # (B, h, T, T)
        if self.causal:
            future = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        weights = self.dropout(torch.softmax(scores, dim=-1))
        out = (weights @ v).transpose(1, 2).reshape(b, t, d)  # (B, T, D)
        return self.out_proj(out)


class AttentionArgs(Args):
    heads: int = Field(ge=1, description="attention heads (must divide the feature size)")
    dropout: float = Field(default=0.0, ge=0, lt=1, description="on the attention weights")
    bias: bool = True
    causal: bool = Field(default=False, description="step t attends only to steps ≤ t (required in next-token models)")


def _attention_macs(m: nn.Module, x: Signal, y: Signal) -> int:
    t, d = x.shape
    return 4 * t * d * d + 2 * t * t * d  # projections in and out, scores and weighted sum


def _check_heads(heads: int, x: Signal) -> None:
    if x.shape[-1] % heads:
        raise ValueError(f"heads={heads} must divide the feature size ({x.shape[-1]})")


@register("attention", AttentionArgs, ranks=(2,), macs=_attention_macs)
def attention(a: AttentionArgs, x: Signal) -> nn.Module:
    """Multi-head self-attention over (steps, features) → (steps, features)."""
    _check_heads(a.heads, x)
    return SelfAttention(x.shape[-1], a.heads, a.dropout, a.bias, a.causal)


class EncoderLayer(nn.Module):
    """A transformer encoder layer: attention and an MLP, each in a residual with layer norm (before each part
    by default, as ViT; after, as the original transformer). Module names as torchvision's ViT EncoderBlock."""

    def __init__(self, dim: int, a: "EncoderArgs"):
        super().__init__()
        self.norm_first = a.norm_first
        self.ln_1 = nn.LayerNorm(dim, a.eps)
        self.self_attention = SelfAttention(dim, a.heads, a.attention_dropout, True, a.causal)
        self.dropout = nn.Dropout(a.dropout)
        self.ln_2 = nn.LayerNorm(dim, a.eps)
        act = nn.GELU() if a.activation == "gelu" else nn.ReLU()
        ff = a.ff or 4 * dim
        self.mlp = nn.Sequential(nn.Linear(dim, ff), act, nn.Dropout(a.dropout), nn.Linear(ff, dim), nn.Dropout(a.dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm_first:
            x = x + self.dropout(self.self_attention(self.ln_1(x)))
            return x + self.mlp(self.ln_2(x))
        x = self.ln_1(x + self.dropout(self.self_attention(x)))
        return self.ln_2(x + self.mlp(x))


class EncoderArgs(Args):
    heads: int = Field(ge=1, description="attention heads (must divide the feature size)")
    ff: int | None = Field(default=None, ge=1, description="hidden size of the MLP (default 4 × features)")
    dropout: float = Field(default=0.0, ge=0, lt=1)
    attention_dropout: float = Field(default=0.0, ge=0, lt=1)
    activation: Literal["gelu", "relu"] = "gelu"
    norm_first: bool = Field(default=True, description="layer norm before attention and MLP (pre-norm, ViT)")
    eps: float = Field(default=1e-6, gt=0, description="layer norm epsilon")
    causal: bool = Field(default=False, description="step t attends only to steps ≤ t (required in next-token models)")


def _encoder_macs(m: nn.Module, x: Signal, y: Signal) -> int:
    t, d = x.shape
    return _attention_macs(m, x, y) + 2 * t * d * m.mlp[0].out_features


@register("transformer_encoder", EncoderArgs, ranks=(2,), macs=_encoder_macs)
def transformer_encoder(a: EncoderArgs, x: Signal) -> nn.Module:
    """One transformer encoder layer over (steps, features): self-attention and an MLP, residual, layer norms."""
    _check_heads(a.heads, x)
    return EncoderLayer(x.shape[-1], a)


class PatchEmbed(nn.Module):
    """(B, C, H, W) → (B, patches [+1], dim): non-overlapping patches projected by a strided convolution, a learned
    class token in front, a learned position embedding added (ViT)."""

    def __init__(self, channels: int, dim: int, patch: tuple[int, int], patches: int, class_token: bool, position: bool):
        super().__init__()
        self.class_token = nn.Parameter(torch.empty(1, 1, dim)) if class_token else None
        self.conv_proj = nn.Conv2d(channels, dim, patch, patch)
        tokens = patches + (1 if class_token else 0)
        self.pos_embedding = nn.Parameter(torch.empty(1, tokens, dim)) if position else None

    def reset_parameters(self) -> None:
        if self.class_token is not None:
            nn.init.zeros_(self.class_token)
        if self.pos_embedding is not None:
            nn.init.normal_(self.pos_embedding, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_proj(x).flatten(2).transpose(1, 2)  # (B, patches, dim)
        if self.class_token is not None:
            x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        if self.pos_embedding is not None:
            x = x + self.pos_embedding
        return x


class PatchArgs(Args):
    dim: int = Field(ge=1, description="embedding size per patch")
    patch: IntOrPair = Field(description="patch size (height and width must be multiples of it)")
    class_token: bool = Field(default=True, description="a learned token in front of the patches (read by select)")
    position: bool = Field(default=True, description="add a learned position embedding")

    @field_validator("patch")
    @classmethod
    def _pos(cls, v, info):
        return _positive(v, info.field_name)


def _patch_macs(m: nn.Module, x: Signal, y: Signal) -> int:
    conv = m.conv_proj
    return conv.out_channels * conv.in_channels * math.prod(conv.kernel_size) * (x.shape[1] // conv.kernel_size[0]) \
        * (x.shape[2] // conv.kernel_size[1])


@register("patch_embed", PatchArgs, ranks=(3,), macs=_patch_macs)
def patch_embed(a: PatchArgs, x: Signal) -> nn.Module:
    """ViT's input: (channels, height, width) → (1 + patches, dim) tokens, with class token and position embedding."""
    ph, pw = _pair(a.patch)
    _, h, w = x.shape
    if h % ph or w % pw:
        raise ValueError(f"the image ({h}, {w}) is not a whole number of {ph}×{pw} patches")
    return PatchEmbed(x.shape[0], a.dim, (ph, pw), (h // ph) * (w // pw), a.class_token, a.position)
