"""The layer registry: name → (argument model, builder), one entry per layer a spec may name.

A builder receives its validated arguments and the per-sample `Signal` arriving at it (shape without the batch
axis, dtype, and for token ids the vocabulary size) and returns an nn.Module. It never receives input channels or
features from the user: those come from the signal. Output shapes are not written here either: the builder runs
each module on a meta tensor, so the formulas live in one place (PyTorch).

Custom layers join from anywhere with `@register("name", MyArgs, ranks=(3,))` on a `build(args, signal)`
function (this module's `register`); the builder never changes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from models.registry import Registry

PosInt = int  # validated with Field(ge=1) at each use so the error says which field


class Args(BaseModel):
    """Base of every layer's argument model: unknown keys are errors, every layer may carry a `name`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str | None = Field(default=None, description="a name other specs can reference (backbone `until`)")


class NoArgs(Args):
    pass


@dataclass(frozen=True)
class Signal:
    """What flows between layers, per sample (no batch axis)."""

    shape: tuple[int, ...]
    dtype: torch.dtype = torch.float32
    vocab: int | None = None  # for integer token ids: how many distinct values they take

    @property
    def is_index(self) -> bool:
        return not self.dtype.is_floating_point


@dataclass(frozen=True)
class LayerType:
    name: str
    args: type[Args]
    build: Callable[[Args, Signal], nn.Module]
    ranks: tuple[int, ...] | None  # accepted per-sample input ranks; None = any
    wants_index: bool = False  # consumes integer ids (embedding, one_hot)
    macs: Callable[[nn.Module, Signal, Signal], int] | None = None
    doc: str = ""


LAYERS: Registry[LayerType] = Registry("layer")


def register(name: str, args: type[Args] = NoArgs, ranks: tuple[int, ...] | None = None, *, wants_index: bool = False,
             macs: Callable[[nn.Module, Signal, Signal], int] | None = None):
    """Decorator registering `build(args, signal) -> nn.Module` under `name`."""

    def decorator(build: Callable[[Args, Signal], nn.Module]):
        LAYERS.add(name, LayerType(name, args, build, ranks, wants_index, macs, (build.__doc__ or "").strip()), origin=build)
        return build

    return decorator


IntOrPair = int | tuple[int, int]


def _positive(value: IntOrPair, field: str) -> IntOrPair:
    values = value if isinstance(value, tuple) else (value,)
    if any(v < 1 for v in values):
        raise ValueError(f"{field} must be ≥ 1, got {value}")
    return value


def _non_negative(value: IntOrPair, field: str) -> IntOrPair:
    values = value if isinstance(value, tuple) else (value,)
    if any(v < 0 for v in values):
        raise ValueError(f"{field} must be ≥ 0, got {value}")
    return value


# ---------------------------------------------------------------- convolutions
class ConvArgs(Args):
    out: int = Field(ge=1, description="output channels")
    kernel: IntOrPair
    stride: IntOrPair = 1
    padding: IntOrPair | Literal["same"] = 0
    dilation: IntOrPair = 1
    groups: int = Field(default=1, ge=1, description="input and output channels split into groups (depthwise: = channels)")
    bias: bool = True

    @field_validator("kernel", "stride", "dilation")
    @classmethod
    def _pos(cls, v, info):
        return _positive(v, info.field_name)

    @field_validator("padding")
    @classmethod
    def _pad(cls, v, info):
        return v if v == "same" else _non_negative(v, info.field_name)


def _conv_macs(module: nn.Module, x: Signal, y: Signal) -> int:
    # every output value costs (in/groups) × kernel area multiply-adds
    per_output = module.weight.shape[1] * math.prod(module.weight.shape[2:])
    return math.prod(y.shape) * per_output


def _check_groups(a: ConvArgs, channels: int) -> None:
    if channels % a.groups or a.out % a.groups:
        raise ValueError(f"groups={a.groups} must divide both the input channels ({channels}) and out ({a.out})")


@register("conv1d", ConvArgs, ranks=(2,), macs=_conv_macs)
def conv1d(a: ConvArgs, x: Signal) -> nn.Module:
    """1-D convolution over (channels, length)."""
    _check_groups(a, x.shape[0])
    return nn.Conv1d(x.shape[0], a.out, a.kernel, a.stride, a.padding, a.dilation, a.groups, a.bias)


@register("conv2d", ConvArgs, ranks=(3,), macs=_conv_macs)
def conv2d(a: ConvArgs, x: Signal) -> nn.Module:
    """2-D convolution over (channels, height, width); `groups` = channels gives a depthwise convolution."""
    _check_groups(a, x.shape[0])
    return nn.Conv2d(x.shape[0], a.out, a.kernel, a.stride, a.padding, a.dilation, a.groups, a.bias)


class ConvTransposeArgs(ConvArgs):
    padding: IntOrPair = 0
    output_padding: IntOrPair = 0
    init: Literal["default", "bilinear"] = Field(default="default", description="bilinear: start as bilinear upsampling (FCN)")


def bilinear_kernel(in_channels: int, out_channels: int, kernel_size: int) -> torch.Tensor:
    """The course's bilinear upsampling kernel (in, out, k, k): channel i maps to channel i only."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = torch.arange(kernel_size, dtype=torch.float32)
    filt_1d = 1 - torch.abs(og - center) / factor  # (k,)
    filt = filt_1d[:, None] * filt_1d[None, :]  # (k, k)
    weight = torch.zeros(in_channels, out_channels, kernel_size, kernel_size)
    for i in range(min(in_channels, out_channels)):
        weight[i, i] = filt
    return weight


class BilinearConvTranspose2d(nn.ConvTranspose2d):
    """A transposed convolution that (re)initialises to bilinear upsampling; spec-wide init leaves it alone."""

    keeps_own_init = True

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self.weight.device.type == "meta":
            return
        kernel = self.kernel_size[0]
        with torch.no_grad():
            self.weight.copy_(bilinear_kernel(self.in_channels, self.out_channels // self.groups, kernel))
            if self.bias is not None:
                self.bias.zero_()


def _conv_transpose_macs(module: nn.Module, x: Signal, y: Signal) -> int:
    # every input value is spread over (out/groups) × kernel area outputs
    return math.prod(x.shape[1:]) * module.in_channels * module.weight.shape[1] * math.prod(module.weight.shape[2:])


@register("conv_transpose2d", ConvTransposeArgs, ranks=(3,), macs=_conv_transpose_macs)
def conv_transpose2d(a: ConvTransposeArgs, x: Signal) -> nn.Module:
    """Transposed 2-D convolution (learned upsampling)."""
    _check_groups(a, x.shape[0])
    if a.init == "bilinear":
        if isinstance(a.kernel, tuple) and a.kernel[0] != a.kernel[1]:
            raise ValueError("init: bilinear needs a square kernel")
        if a.groups != 1:
            raise ValueError("init: bilinear needs groups: 1")
    cls = BilinearConvTranspose2d if a.init == "bilinear" else nn.ConvTranspose2d
    return cls(x.shape[0], a.out, a.kernel, a.stride, a.padding, a.output_padding, a.groups, a.bias, a.dilation)


# ---------------------------------------------------------------- dense
class LinearArgs(Args):
    out: int = Field(ge=1, description="output features")
    bias: bool = True


@register("linear", LinearArgs, ranks=(1, 2), macs=lambda m, x, y: math.prod(y.shape) * m.in_features)
def linear(a: LinearArgs, x: Signal) -> nn.Module:
    """Fully connected layer on (features,) or per step on (steps, features). Put `flatten` before it for images."""
    return nn.Linear(x.shape[-1], a.out, a.bias)


# ---------------------------------------------------------------- pooling
class PoolArgs(Args):
    kernel: IntOrPair
    stride: IntOrPair | None = Field(default=None, description="defaults to the kernel size")
    padding: IntOrPair = 0
    ceil_mode: bool = False

    @field_validator("kernel", "stride")
    @classmethod
    def _pos(cls, v, info):
        return v if v is None else _positive(v, info.field_name)

    @field_validator("padding")
    @classmethod
    def _pad(cls, v, info):
        return _non_negative(v, info.field_name)


def _check_pool_padding(a: PoolArgs) -> None:
    kernels = a.kernel if isinstance(a.kernel, tuple) else (a.kernel,)
    pads = a.padding if isinstance(a.padding, tuple) else (a.padding,)
    if any(2 * p > k for p, k in zip(pads * len(kernels), kernels)):
        raise ValueError(f"padding {a.padding} must be at most half the kernel {a.kernel}")


@register("maxpool1d", PoolArgs, ranks=(2,))
def maxpool1d(a: PoolArgs, x: Signal) -> nn.Module:
    """Max pooling over (channels, length)."""
    _check_pool_padding(a)
    return nn.MaxPool1d(a.kernel, a.stride, a.padding, ceil_mode=a.ceil_mode)


@register("avgpool1d", PoolArgs, ranks=(2,))
def avgpool1d(a: PoolArgs, x: Signal) -> nn.Module:
    """Average pooling over (channels, length)."""
    _check_pool_padding(a)
    return nn.AvgPool1d(a.kernel, a.stride, a.padding, ceil_mode=a.ceil_mode)


@register("maxpool2d", PoolArgs, ranks=(3,))
def maxpool2d(a: PoolArgs, x: Signal) -> nn.Module:
    """Max pooling over (channels, height, width)."""
    _check_pool_padding(a)
    return nn.MaxPool2d(a.kernel, a.stride, a.padding, ceil_mode=a.ceil_mode)


@register("avgpool2d", PoolArgs, ranks=(3,))
def avgpool2d(a: PoolArgs, x: Signal) -> nn.Module:
    """Average pooling over (channels, height, width)."""
    _check_pool_padding(a)
    return nn.AvgPool2d(a.kernel, a.stride, a.padding, ceil_mode=a.ceil_mode)


class AdaptiveArgs(Args):
    size: IntOrPair = 1

    @field_validator("size")
    @classmethod
    def _pos(cls, v, info):
        return _positive(v, info.field_name)


@register("adaptive_avgpool2d", AdaptiveArgs, ranks=(3,))
def adaptive_avgpool2d(a: AdaptiveArgs, x: Signal) -> nn.Module:
    """Average pooling to a fixed output size (channels, size, size)."""
    return nn.AdaptiveAvgPool2d(a.size)


class GlobalAvgPool(nn.Module):
    """Mean over every axis after channels: (B, C, ...) → (B, C). Exports as ReduceMean, no adaptive-pool quirks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=tuple(range(2, x.dim())))


@register("global_avgpool", ranks=(2, 3))
def global_avgpool(a: NoArgs, x: Signal) -> nn.Module:
    """Global average pooling: (channels, ...) → (channels,)."""
    return GlobalAvgPool()


# ---------------------------------------------------------------- normalization and regularization
class NormArgs(Args):
    eps: float = Field(default=1e-5, gt=0)
    momentum: float = Field(default=0.1, gt=0, le=1)


@register("batchnorm1d", NormArgs, ranks=(1, 2), macs=lambda m, x, y: 2 * math.prod(y.shape))
def batchnorm1d(a: NormArgs, x: Signal) -> nn.Module:
    """Batch normalization of (features,) or (channels, length)."""
    return nn.BatchNorm1d(x.shape[0], a.eps, a.momentum)


@register("batchnorm2d", NormArgs, ranks=(3,), macs=lambda m, x, y: 2 * math.prod(y.shape))
def batchnorm2d(a: NormArgs, x: Signal) -> nn.Module:
    """Batch normalization of (channels, height, width)."""
    return nn.BatchNorm2d(x.shape[0], a.eps, a.momentum)


class LayerNormArgs(Args):
    eps: float = Field(default=1e-5, gt=0)
    dims: int = Field(default=1, ge=1, description="how many trailing axes to normalize over")


@register("layernorm", LayerNormArgs, macs=lambda m, x, y: 2 * math.prod(y.shape))
def layernorm(a: LayerNormArgs, x: Signal) -> nn.Module:
    """Layer normalization over the last `dims` axes."""
    if a.dims > len(x.shape):
        raise ValueError(f"dims={a.dims} but the input has only {len(x.shape)} axes")
    return nn.LayerNorm(list(x.shape[-a.dims:]), a.eps)


class DropoutArgs(Args):
    p: float = Field(default=0.5, ge=0, lt=1)


@register("dropout", DropoutArgs)
def dropout(a: DropoutArgs, x: Signal) -> nn.Module:
    """Zeroes each value with probability p while training (scaled by 1/(1-p)); identity at inference."""
    return nn.Dropout(a.p)


# ---------------------------------------------------------------- activations (all export to plain ONNX ops)
def register_plain(name: str, module: type[nn.Module], doc: str) -> None:
    """A layer without arguments that is just `module()`."""

    def build(a: NoArgs, x: Signal) -> nn.Module:
        return module()

    build.__doc__ = doc
    register(name)(build)


register_plain("relu", nn.ReLU, "max(x, 0).")
register_plain("sigmoid", nn.Sigmoid, "1 / (1 + exp(-x)).")
register_plain("tanh", nn.Tanh, "Hyperbolic tangent.")
register_plain("flatten", nn.Flatten, "(…) → (product,): everything after the batch axis in one vector.")
register_plain("identity", nn.Identity, "Passes its input through unchanged (placeholder, default shortcut).")


class LeakyArgs(Args):
    slope: float = Field(default=0.01, ge=0)


@register("leaky_relu", LeakyArgs)
def leaky_relu(a: LeakyArgs, x: Signal) -> nn.Module:
    """max(x, slope·x)."""
    return nn.LeakyReLU(a.slope)


class GeluArgs(Args):
    approximate: Literal["none", "tanh"] = "none"


@register("gelu", GeluArgs)
def gelu(a: GeluArgs, x: Signal) -> nn.Module:
    """Gaussian error linear unit."""
    return nn.GELU(a.approximate)


class SoftmaxArgs(Args):
    axis: int = Field(default=-1, description="per-sample axis (0 = first axis after the batch)")


class Softmax(nn.Module):
    def __init__(self, axis: int):
        super().__init__()
        self.dim = axis + 1 if axis >= 0 else axis  # per-sample axis → batched axis

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x, self.dim)


@register("softmax", SoftmaxArgs)
def softmax(a: SoftmaxArgs, x: Signal) -> nn.Module:
    """Softmax along one axis. Training losses take logits: put it only where probabilities are the output."""
    if not -len(x.shape) <= a.axis < len(x.shape):
        raise ValueError(f"axis {a.axis} out of range for input of {len(x.shape)} axes")
    return Softmax(a.axis)


# ---------------------------------------------------------------- shape plumbing
class ReshapeArgs(Args):
    shape: list[int] = Field(min_length=1, description="per-sample shape; one entry may be -1")


class Reshape(nn.Module):
    def __init__(self, shape: list[int]):
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)


@register("reshape", ReshapeArgs)
def reshape(a: ReshapeArgs, x: Signal) -> nn.Module:
    """Reshape each sample, e.g. a window of numbers (τ,) → (τ, 1) steps for an RNN."""
    if sum(d == -1 for d in a.shape) > 1 or any(d == 0 or d < -1 for d in a.shape):
        raise ValueError(f"shape {a.shape}: sizes must be ≥ 1, with at most one -1")
    known = math.prod(d for d in a.shape if d != -1)
    total = math.prod(x.shape)
    if total % known or (-1 not in a.shape and known != total):
        raise ValueError(f"cannot reshape {x.shape} ({total} values) to {tuple(a.shape)}")
    return Reshape(a.shape)


class UpsampleArgs(Args):
    scale: float = Field(gt=0)
    mode: Literal["nearest", "bilinear"] = "nearest"


@register("upsample", UpsampleArgs, ranks=(3,))
def upsample(a: UpsampleArgs, x: Signal) -> nn.Module:
    """Fixed upsampling of (channels, height, width) by `scale`."""
    return nn.Upsample(scale_factor=a.scale, mode=a.mode, align_corners=False if a.mode == "bilinear" else None)


# ---------------------------------------------------------------- tokens
class EmbeddingArgs(Args):
    dim: int = Field(ge=1)


@register("embedding", EmbeddingArgs, wants_index=True)
def embedding(a: EmbeddingArgs, x: Signal) -> nn.Module:
    """Token ids (steps,) → vectors (steps, dim); the vocabulary size comes from the input."""
    return nn.Embedding(x.vocab, a.dim)


class OneHotArgs(Args):
    classes: int | None = Field(default=None, ge=1, description="defaults to the input's vocabulary size")


class OneHot(nn.Module):
    """ids (B, ...) → (B, ..., classes) float. Written as a comparison so it runs on meta tensors and exports as Equal."""

    def __init__(self, classes: int):
        super().__init__()
        self.classes = classes

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        values = torch.arange(self.classes, device=ids.device)  # (classes,)
        return (ids.unsqueeze(-1) == values).to(torch.float32)  # (B, ..., classes)


@register("one_hot", OneHotArgs, wants_index=True)
def one_hot(a: OneHotArgs, x: Signal) -> nn.Module:
    """Token ids (steps,) → one-hot vectors (steps, classes), as the course feeds its char RNNs."""
    classes = a.classes or x.vocab
    if x.vocab is not None and classes < x.vocab:
        raise ValueError(f"classes={classes} is smaller than the input's vocabulary ({x.vocab})")
    return OneHot(classes)


# ---------------------------------------------------------------- recurrent
class RecurrentArgs(Args):
    hidden: int = Field(ge=1)
    layers: int = Field(default=1, ge=1)
    bidirectional: bool = False
    dropout: float = Field(default=0.0, ge=0, lt=1, description="between stacked layers")
    output: Literal["sequence", "last"] = Field(default="sequence", description="every step, or only the last step")


class Recurrent(nn.Module):
    """nn.RNN / nn.GRU / nn.LSTM on (B, T, F), with its state kept batch-first at the interface.

    `forward(x)` starts from zeros and returns only the output, so the layer composes like any other.
    `step(x, state)` takes and returns the state as (B, layers·directions, hidden) tensors (h, or h and c for LSTM):
    batch-first so the batch axis is axis 0 on every tensor a model exchanges, which keeps ONNX dynamic axes uniform.
    """

    kinds = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}

    def __init__(self, kind: str, input_size: int, a: RecurrentArgs):
        super().__init__()
        self.kind = kind
        self.rnn = self.kinds[kind](input_size, a.hidden, a.layers, batch_first=True, dropout=a.dropout,
                                    bidirectional=a.bidirectional)
        self.last_only = a.output == "last"
        self.state_count = 2 if kind == "lstm" else 1
        self.state_shape = (a.layers * (2 if a.bidirectional else 1), a.hidden)

    def step(self, x: torch.Tensor, state: tuple[torch.Tensor, ...] | None) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        hx = None
        if state is not None:
            layer_first = tuple(s.transpose(0, 1).contiguous() for s in state)  # (L·D, B, H)
            hx = layer_first if self.kind == "lstm" else layer_first[0]
        y, h = self.rnn(x, hx)  # y: (B, T, D·H)
        states = h if self.kind == "lstm" else (h,)
        out = y[:, -1] if self.last_only else y  # (B, D·H) or (B, T, D·H)
        return out, tuple(s.transpose(0, 1) for s in states)  # each (B, L·D, H)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.step(x, None)[0]


def _recurrent_macs(module: nn.Module, x: Signal, y: Signal) -> int:
    rnn = module.rnn
    gates = {"rnn": 1, "gru": 3, "lstm": 4}[module.kind]
    directions = 2 if rnn.bidirectional else 1
    steps = x.shape[0]
    first = gates * rnn.hidden_size * (rnn.input_size + rnn.hidden_size)
    rest = gates * rnn.hidden_size * (directions * rnn.hidden_size + rnn.hidden_size)
    return steps * directions * (first + (rnn.num_layers - 1) * rest)


def _register_recurrent(kind: str, doc: str) -> None:
    def build(a: RecurrentArgs, x: Signal) -> nn.Module:
        return Recurrent(kind, x.shape[-1], a)

    build.__doc__ = doc
    register(kind, RecurrentArgs, ranks=(2,), macs=_recurrent_macs)(build)


_register_recurrent("rnn", "Elman RNN (tanh) over (steps, features).")
_register_recurrent("gru", "Gated recurrent unit over (steps, features).")
_register_recurrent("lstm", "Long short-term memory over (steps, features).")
