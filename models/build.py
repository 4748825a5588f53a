"""build(spec) → nn.Module, with shape inference.

Every layer is first constructed on the meta device and run on a meta tensor of the signal arriving at it: that
gives its output shape (PyTorch's own formulas), its parameter count and multiply-adds, without allocating memory —
so a 10^12-parameter layer or a shape that collapses to zero is refused before anything is allocated. Only then is
the network materialised on the real device and initialised.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from models.errors import Location, SpecError
from models.layers.init import apply_init
from models.layers.builtin import LAYERS, Recurrent, Signal
from models.spec.network import ConcatNode, LayerNode, Node, ResidualNode, SeqNode
from models.spec.schema import Spec

MAX_PARAMETERS = 2_000_000_000  # 8 GB of float32: past this a spec is a typo, not a model for this service
MAX_VALUES_PER_SAMPLE = 2**31  # a single activation larger than this cannot be indexed by int32 kernels


@dataclass(frozen=True)
class LayerInfo:
    path: str
    kind: str
    shape: tuple[int, ...]  # per-sample output shape
    params: int
    macs: int  # multiply-adds per sample
    depth: int


class Residual(nn.Module):
    """body(x) + shortcut(x): the course's residual connection (the ReLU after it is a separate layer)."""

    def __init__(self, body: nn.Sequential, shortcut: nn.Sequential):
        super().__init__()
        self.body, self.shortcut = body, shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class Concat(nn.Module):
    """Concatenate branch outputs along channels (axis 1 of the batch)."""

    def __init__(self, branches: list[nn.Sequential]):
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.branches], dim=1)


class SpecNet(nn.Module):
    """The built network. `forward(x)` for stateless nets; token models also take and return recurrent state.

    State convention (token models): a tuple of (B, layers·directions, hidden) tensors, one per RNN/GRU layer and
    two per LSTM layer, for the recurrent layers at the top level of the network, in order.
    """

    def __init__(self, task: str, backbone: nn.Sequential | None, body: nn.Sequential, stateful: bool,
                 sample_output: tuple[int, ...]):
        super().__init__()
        self.task = task
        self.sample_output = sample_output  # per-sample output shape found by shape inference, e.g. (classes,)
        if backbone is not None:
            self.backbone = backbone
        self.body = body
        self._recurrent = [m for m in self._top_level() if isinstance(m, Recurrent)] if stateful else []
        self.state_size = sum(m.state_count for m in self._recurrent)

    def _top_level(self) -> list[nn.Module]:
        parts = list(self.backbone) if hasattr(self, "backbone") else []
        return parts + list(self.body)

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, ...]:
        states = []
        for layer in self._recurrent:
            states += [torch.zeros(batch_size, *layer.state_shape, device=device)] * layer.state_count
        return tuple(states)

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, ...] | None = None):
        if not self.state_size:
            return self.body(self.backbone(x)) if hasattr(self, "backbone") else self.body(x)
        new_state: list[torch.Tensor] = []
        taken = 0
        for layer in self._top_level():
            if isinstance(layer, Recurrent):
                own = None if state is None else tuple(state[taken: taken + layer.state_count])
                x, out_state = layer.step(x, own)
                new_state += out_state
                taken += layer.state_count
            else:
                x = layer(x)
        return x, tuple(new_state)


class _Builder:
    def __init__(self, spec: Spec):
        self.spec = spec
        self.rows: list[LayerInfo] = []
        self.params = 0

    def fail(self, node: Node | None, message: str, location: Location | None = None) -> SpecError:
        where = node.where if node else "network"
        return SpecError.one(location or (node.location if node else None), where, message)

    def sequence(self, nodes: list[Node], x: Signal, depth: int) -> tuple[nn.Sequential, Signal]:
        modules = []
        for node in nodes:
            module, x = self.node(node, x, depth)
            modules.append(module)
        return nn.Sequential(*modules), x

    def node(self, node: Node, x: Signal, depth: int) -> tuple[nn.Module, Signal]:
        if isinstance(node, LayerNode):
            return self.layer(node, x, depth)
        row = len(self.rows)
        self.rows.append(None)  # type: ignore[arg-type]  # the combinator's row goes before its children's
        before = self.params
        if isinstance(node, SeqNode):
            module, y = self.sequence(node.layers, x, depth + 1)
        elif isinstance(node, ResidualNode):
            body, y = self.sequence(node.body, x, depth + 1)
            shortcut, y_short = self.sequence(node.shortcut, x, depth + 1)
            if y.shape != y_short.shape:
                raise self.fail(node, f"body gives {y.shape} but shortcut gives {y_short.shape}; they are added, so they "
                                      f"must match (give the shortcut layers that map {x.shape} to {y.shape}, e.g. a 1×1 conv2d with stride)")
            module = Residual(body, shortcut)
        else:
            assert isinstance(node, ConcatNode)
            outs = [self.sequence(branch, x, depth + 1) for branch in node.branches]
            shapes = [s.shape for _, s in outs]
            if any(len(s) != len(shapes[0]) or s[1:] != shapes[0][1:] for s in shapes):
                raise self.fail(node, f"branches give {', '.join(map(str, shapes))}; concat joins channels, so every "
                                      "other axis must match")
            module = Concat([m for m, _ in outs])
            y = Signal((sum(s[0] for s in shapes), *shapes[0][1:]))
        self.rows[row] = LayerInfo(node.where, node.kind, y.shape, self.params - before, 0, depth)
        return module, y

    def layer(self, node: LayerNode, x: Signal, depth: int) -> tuple[nn.Module, Signal]:
        layer_type = LAYERS.get(node.kind)
        if layer_type.wants_index and not x.is_index:
            raise self.fail(node, f"takes token ids but receives {x.dtype} values of shape {x.shape}")
        if x.is_index and not layer_type.wants_index:
            raise self.fail(node, f"receives token ids of shape {x.shape}; start the network with one_hot or embedding")
        if layer_type.ranks is not None and len(x.shape) not in layer_type.ranks:
            raise self.fail(node, self._rank_message(node.kind, layer_type.ranks, x.shape))
        try:
            with torch.device("meta"):
                module = layer_type.build(node.args, x)
        except (ValueError, RuntimeError, TypeError) as err:
            raise self.fail(node, f"{err} (input {x.shape})") from None
        module.spec_kind = node.kind
        count = sum(p.numel() for p in module.parameters())
        self.params += count
        if self.params > MAX_PARAMETERS:
            raise self.fail(node, f"this layer has {count:,} parameters ({4 * count / 1e9:,.1f} GB as float32), taking the "
                                  f"network past the limit of {MAX_PARAMETERS:,}")
        try:
            probe = torch.empty((2, *x.shape), dtype=x.dtype, device="meta")  # (B=2, ...): BatchNorm needs B > 1
            out = module.eval()(probe)
        except (RuntimeError, ValueError, IndexError) as err:
            message = str(err).strip().splitlines()[0]
            raise self.fail(node, f"cannot take input of shape {x.shape}: {message}") from None
        y = Signal(tuple(out.shape[1:]), out.dtype)
        if any(d == 0 for d in y.shape):
            raise self.fail(node, f"output shape {y.shape} has a zero-size axis: input {x.shape} is too small for it")
        if math.prod(y.shape) > MAX_VALUES_PER_SAMPLE:
            raise self.fail(node, f"output {y.shape} has {math.prod(y.shape):,} values per sample (limit {MAX_VALUES_PER_SAMPLE:,})")
        macs = layer_type.macs(module, x, y) if layer_type.macs else 0
        self.rows.append(LayerInfo(node.where, node.kind, y.shape, count, macs, depth))
        return module, y

    @staticmethod
    def _rank_message(kind: str, ranks: tuple[int, ...], shape: tuple[int, ...]) -> str:
        forms = {1: "(features,)", 2: "(channels, length) or (steps, features)", 3: "(channels, height, width)"}
        wanted = " or ".join(forms.get(r, f"{r} axes") for r in ranks)
        hint = ""
        if kind in ("linear", "batchnorm1d") and len(shape) >= 3:
            hint = f"; add flatten before it (→ ({math.prod(shape)},))"
        elif len(shape) == 1 and 3 in ranks:
            hint = "; the input is a flat vector here"
        return f"expects input {wanted} per sample, got {shape}{hint}"


@dataclass
class Inferred:
    """The result of shape inference: the (meta) network, its table of layers and its output signal."""

    net: SpecNet
    rows: list[LayerInfo]
    output: tuple[int, ...]

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    @property
    def macs(self) -> int:
        return sum(r.macs for r in self.rows)


def _input_signal(spec: Spec) -> Signal:
    shape = spec.input.sample_shape()
    if spec.input.kind == "tokens":
        return Signal(shape, torch.int64, spec.input.vocab)
    return Signal(shape)


def _check_output(spec: Spec, y: Signal) -> None:
    where = spec.locate(("network",))
    task, kind = spec.task, spec.input.kind
    n_labels = len(spec.labels) if spec.labels else None
    problem = None
    if task == "classification":
        if len(y.shape) != 1:
            problem = f"a classifier must end in (classes,) per sample, but the network ends in {y.shape}"
        elif n_labels is not None and y.shape[0] != n_labels:
            problem = f"the network ends in {y.shape[0]} outputs but there are {n_labels} labels"
    elif task == "segmentation":
        size = tuple(spec.input.size or ())
        if len(y.shape) != 3 or y.shape[1:] != size:
            problem = f"a segmentation network must end in (classes, {size[0]}, {size[1]}) per sample, got {y.shape}"
        elif n_labels is not None and y.shape[0] != n_labels:
            problem = f"the network ends in {y.shape[0]} classes but there are {n_labels} labels"
    elif kind == "tokens":
        if y.shape != (spec.input.sample_shape()[0], spec.input.vocab):
            problem = (f"a token model must end in (steps, vocab) = ({spec.input.sample_shape()[0]}, {spec.input.vocab}) "
                       f"per sample, got {y.shape}")
    elif y.shape != (1,):
        problem = f"a {'forecaster' if kind == 'series' else 'regression model'} must end in (1,) per sample, got {y.shape}"
    if problem:
        raise SpecError.one(where, "network", problem)


def infer(spec: Spec) -> Inferred:
    """Shape inference on the meta device: raises SpecError for any shape problem, allocates nothing."""
    builder = _Builder(spec)
    x = _input_signal(spec)
    backbone = None
    if spec.backbone_nodes:
        backbone, x = builder.sequence(spec.backbone_nodes, x, 0)
    body, y = builder.sequence(spec.nodes, x, 0)
    _check_output(spec, y)
    stateful = spec.task == "sequence" and spec.input.kind == "tokens"
    return Inferred(SpecNet(spec.task, backbone, body, stateful, y.shape), builder.rows, y.shape)


def build(spec: Spec, device: torch.device | str = "cpu", seed: int | None = None) -> SpecNet:
    """The real network: shapes inferred, parameters allocated on `device`, initialised per the spec (seeded)."""
    net = infer(spec).net
    if seed is not None:
        torch.manual_seed(seed)
    net = net.to_empty(device=device)
    for module in net.modules():  # to_empty leaves memory uninitialised: give every module its default init
        if hasattr(module, "reset_parameters") and module is not net:
            module.reset_parameters()
    apply_init(net, spec.init)
    return net.train()


def summary_table(spec: Spec, inferred: Inferred | None = None) -> str:
    """The layer table `specserve summary` prints: path, type, output shape, parameters, multiply-adds, totals."""
    inferred = inferred or infer(spec)
    header = ("layer", "type", "output", "params", "mult-adds")
    lines = [(f"input", spec.input.kind, str(spec.input.sample_shape()), "", "")]
    for r in inferred.rows:
        lines.append(("  " * r.depth + r.path, r.kind, str(r.shape), f"{r.params:,}", f"{r.macs:,}" if r.macs else ""))
    total = ("total", "", str(inferred.output), f"{inferred.params:,}", f"{inferred.macs:,}")
    widths = [max(len(row[i]) for row in [header, *lines, total]) for i in range(5)]

    def fmt(row: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    rule = "-" * len(fmt(header))
    return "\n".join([f"{spec.name} ({spec.task})", fmt(header), rule, *map(fmt, lines), rule, fmt(total)])
