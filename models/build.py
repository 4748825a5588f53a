"""build(spec) → nn.Module, with shape inference.

Every layer is first constructed on the meta device and run on a meta tensor of the signal arriving at it: that
gives its output shape (PyTorch's own formulas), its parameter count and multiply-adds, without allocating memory —
so a 10^12-parameter layer or a shape that collapses to zero is refused before anything is allocated. Only then is
the network materialised on the real device and initialised.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
from pydantic import ValidationError
from torch import nn

from models.errors import Location, Problem, SpecError, format_path
from models.layers.init import apply_init
from models.layers.builtin import LAYERS, Args, LayerType, RecurrentArgs, Recurrent, Signal
from models.spec.expressions import Expr, ExprError, needs_shape, resolve
from models.spec.network import (ConcatNode, LayerNode, Node, OperatorNode, Output, Outputs, ResidualNode, SeqNode,
                                 network_outputs)
from models.spec.schema import Spec
from models.spec.validation import validation_problems

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
    inputs: str = ""  # the names in its `from:` (empty: the previous entry)
    training_only: bool = False  # part of an auxiliary head only: computed in training, not exported


class Residual(nn.Module):
    """body(x) + shortcut(x): the course's residual connection (the ReLU after it is a separate layer)."""

    def __init__(self, body: nn.Sequential, shortcut: nn.Sequential):
        super().__init__()
        self.body, self.shortcut = body, shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class Concat(nn.Module):
    """Concatenate branch outputs along channels (axis 1 of the batch), or along `dim`."""

    def __init__(self, branches: list[nn.Module], dim: int = 1):
        super().__init__()
        self.branches = nn.ModuleList(branches)
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.branches], dim=self.dim)


class Graph(nn.Module):
    """A list of entries wired by name (`from:`): entry i takes the values at `wires[i]`, where slot 0 is the
    list's input and slot j + 1 entry j's output; the last entry's output is the result. Its children are named
    0, 1, 2, ... like an nn.Sequential's, so parameter names do not depend on the wiring."""

    def __init__(self, modules: list[nn.Module], wires: list[tuple[int, ...]]):
        super().__init__()
        for i, module in enumerate(modules):
            self.add_module(str(i), module)
        self.wires = [tuple(w) for w in wires]
        last_use = {s: i for i, w in enumerate(self.wires) for s in w}
        self._free = [tuple(s for s in set(w) if last_use[s] == i) for i, w in enumerate(self.wires)]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, index: int) -> nn.Module:
        return list(self._modules.values())[index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values: list[torch.Tensor | None] = [x]
        for module, slots, free in zip(self._modules.values(), self.wires, self._free):
            out = module(*[values[s] for s in slots])
            for s in free:  # no later entry reads it: let it go
                values[s] = None
            values.append(out)
        return values[-1]  # type: ignore[return-value]


class Add(nn.Module):
    """Element-wise sum of its inputs (equal shapes)."""

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


class Multiply(nn.Module):
    """Element-wise product of its inputs, broadcasting axes of size 1 (an SE gate (B,C,1,1) × features (B,C,H,W))."""

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = out * x
        return out


class Join(nn.Module):
    """Concatenation of its inputs along `dim` (a batch axis: per-sample axis + 1)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, dim=self.dim)


class SpecNet(nn.Module):
    """The built network. `forward(x)` for stateless nets; token models also take and return recurrent state.

    State convention (token models): a tuple of (B, layers·directions, hidden) tensors, one per RNN/GRU layer and
    two per LSTM layer, for the recurrent layers at the top level of the network, in order.
    """

    def __init__(self, task: str, backbone: nn.Sequential | None, body: nn.Sequential, stateful: bool,
                 sample_output: tuple[int, ...], wires: list[tuple[int, ...]] | None, main: int,
                 aux_slots: dict[str, int], aux_weights: dict[str, float]):
        super().__init__()
        self.task = task
        self.sample_output = sample_output  # per-sample output shape found by shape inference, e.g. (classes,)
        if backbone is not None:
            self.backbone = backbone
        self.body = body
        # top-level wiring over backbone + body entries, as in Graph (None: each takes the previous one's output)
        self.wires = wires
        self._recurrent = [m for m in self._top_level() if isinstance(m, Recurrent)] if stateful else []
        self.state_size = sum(m.state_count for m in self._recurrent)
        # outputs (spec `outputs`): slot of the main output (0 = the input, j + 1 = entry j, so `main` + 1) and,
        # per auxiliary output, its slot and loss weight. forward computes only what the main output needs, so in
        # evaluation and in the exported graph the auxiliary heads do not exist; forward_with_aux computes them too.
        self.main_slot = main + 1
        self.aux_slots, self.aux_weights = aux_slots, aux_weights
        assert wires is not None or (self.main_slot == len(self._top_level()) and not aux_slots), \
            "outputs need the wiring"
        self._for_main = self._needed((self.main_slot,))
        self._for_all = self._needed((self.main_slot, *self.aux_slots.values()))

    @property
    def training_only(self) -> tuple[int, ...]:
        """Top-level entries (backbone first) that only auxiliary outputs need: computed in training only."""
        return tuple(i for i in range(len(self._top_level())) if i + 1 not in self._for_main)

    def _needed(self, slots: tuple[int, ...]) -> frozenset[int]:
        """The slots these outputs are computed from (themselves included)."""
        if self.wires is None:
            return frozenset(range(len(self._top_level()) + 1))
        seen, stack = set(slots), list(slots)
        while stack:
            slot = stack.pop()
            for source in self.wires[slot - 1] if slot else ():
                if source not in seen:
                    seen.add(source)
                    stack.append(source)
        return frozenset(seen)

    def _top_level(self) -> list[nn.Module]:
        parts = list(self.backbone) if hasattr(self, "backbone") else []
        return parts + list(self.body)

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, ...]:
        states = []
        for layer in self._recurrent:
            states += [torch.zeros(batch_size, *layer.state_shape, device=device)] * layer.state_count
        return tuple(states)

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, ...] | None = None):
        """The main output (and state): what evaluation, export and serving compute."""
        if self.wires is not None:
            return self._forward_wired(x, state, self._for_main)[0]
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

    def forward_with_aux(self, x: torch.Tensor, state: tuple[torch.Tensor, ...] | None = None):
        """(what forward gives, {auxiliary output name: its value}): the training step's view of the network."""
        if not self.aux_slots:
            return self(x, state), {}
        out, values = self._forward_wired(x, state, self._for_all)
        return out, {name: values[slot] for name, slot in self.aux_slots.items()}

    def _forward_wired(self, x: torch.Tensor, state: tuple[torch.Tensor, ...] | None, needed: frozenset[int]):
        """(output, every slot's value): entries outside `needed` are not run (their slots stay None). A token model
        has no auxiliary outputs and no unused entries (both refused at load), so no recurrent layer is skipped."""
        assert self.wires is not None
        values: list[torch.Tensor | None] = [x]
        new_state: list[torch.Tensor] = []
        taken = 0
        for i, (layer, slots) in enumerate(zip(self._top_level(), self.wires)):
            if i + 1 not in needed:
                values.append(None)
                continue
            inputs = [values[s] for s in slots]
            if self.state_size and isinstance(layer, Recurrent):
                own = None if state is None else tuple(state[taken: taken + layer.state_count])
                y, out_state = layer.step(inputs[0], own)
                new_state += out_state
                taken += layer.state_count
            else:
                y = layer(*inputs)
            values.append(y)
        main = values[self.main_slot]
        return ((main, tuple(new_state)) if self.state_size else main), values


# (layer kind, its arguments, input signal) → output signal: a built-in layer's output shape depends on nothing else,
# and deep nets repeat the same layers (MobileNet's ~50 batch norms), so each is probed once per process
_PROBED: dict[tuple[str, str, Signal], Signal] = {}
_PROBE_CACHE = 65_536


class _Builder:
    def __init__(self, spec: Spec):
        self.spec = spec
        self.rows: list[LayerInfo] = []
        self.params = 0
        self.signals_at: dict[int, Signal] = {}  # node anchor → the signal arriving at it (for `$in_channels`)
        self.next_token = spec.task == "sequence" and spec.input.kind == "tokens"

    def fail(self, node: Node | None, message: str, location: Location | None = None) -> SpecError:
        where = node.where if node else "network"
        return SpecError.one(location or (node.location if node else None), where, message)

    def wired(self, nodes: list[Node], x: Signal, depth: int,
              starts: list[int] | None = None) -> tuple[list[nn.Module], list[tuple[int, ...]], list[Signal]]:
        """Build a list of entries: their modules, the slots each reads (0 = the list's input) and every slot's
        signal (the input, then each entry's output). `starts` collects each entry's first row in self.rows."""
        modules: list[nn.Module] = []
        wires: list[tuple[int, ...]] = []
        values = [x]
        for i, node in enumerate(nodes):
            if starts is not None:
                starts.append(len(self.rows))
            sources = node.sources if node.sources is not None else (i - 1,)
            slots = tuple(s + 1 for s in sources)
            labels = [self._label(nodes, s) for s in sources]
            module, y = self.node(node, [values[s] for s in slots], labels, depth)
            modules.append(module)
            wires.append(slots)
            values.append(y)
        return modules, wires, values

    def sequence(self, nodes: list[Node], x: Signal, depth: int) -> tuple[nn.Module, Signal]:
        modules, wires, values = self.wired(nodes, x, depth)
        if all(w == (i,) for i, w in enumerate(wires)):
            return nn.Sequential(*modules), values[-1]
        return Graph(modules, wires), values[-1]

    @staticmethod
    def _label(nodes: list[Node], source: int) -> str:
        if source < 0:
            return "the input of this list"
        n = nodes[source]
        return f"'{n.name}' ({n.where}, {n.location})" if n.name else f"{n.where} ({n.location})"

    def node(self, node: Node, xs: list[Signal], labels: list[str], depth: int) -> tuple[nn.Module, Signal]:
        x = xs[0]
        self.signals_at[node.anchor] = x
        if isinstance(node, OperatorNode):
            return self.operator(node, xs, labels, depth)
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
            rank = len(shapes[0])
            if not -rank <= node.axis < rank:
                raise self.fail(node, f"axis {node.axis} is out of range for branches of {rank} axes {shapes[0]}")
            axis = node.axis % rank
            if any(len(s) != rank or s[:axis] + s[axis + 1:] != shapes[0][:axis] + shapes[0][axis + 1:] for s in shapes):
                what = "channels" if axis == 0 else f"axis {axis}"
                raise self.fail(node, f"branches give {', '.join(map(str, shapes))}; concat joins {what}, so every "
                                      "other axis must match")
            module = Concat([m for m, _ in outs], axis + 1)
            y = Signal((*shapes[0][:axis], sum(s[axis] for s in shapes), *shapes[0][axis + 1:]))
        self.rows[row] = LayerInfo(node.where, node.kind, y.shape, self.params - before, 0, depth, self._inputs(node))
        return module, y

    @staticmethod
    def _inputs(node: Node) -> str:
        return ", ".join(r.name for r in node.refs)

    def operator(self, node: OperatorNode, xs: list[Signal], labels: list[str], depth: int) -> tuple[nn.Module, Signal]:
        for s, label in zip(xs, labels):
            if s.is_index:
                raise self.fail(node, f"receives token ids from {label}; {node.kind} combines float values")
        shapes = [s.shape for s in xs]
        described = "; ".join(f"{label} gives {shape}" for label, shape in zip(labels, shapes))
        if node.kind == "add":
            if any(shape != shapes[0] for shape in shapes):
                raise self.fail(node, f"cannot add: {described}; add needs equal shapes")
            y, module = shapes[0], Add()
        elif node.kind == "multiply":
            if any(len(shape) != len(shapes[0]) for shape in shapes):
                raise self.fail(node, f"cannot multiply: {described}; the inputs need the same number of axes (make a "
                                      "gate (C, 1, 1), e.g. adaptive_avgpool2d: {size: 1} rather than global_avgpool)")
            out = []
            for axis, sizes in enumerate(zip(*shapes)):
                big = {d for d in sizes if d != 1}
                if len(big) > 1:
                    raise self.fail(node, f"cannot multiply: {described}; axis {axis} differs ({' vs '.join(map(str, sizes))}) "
                                          "and only axes of size 1 broadcast")
                out.append(max(sizes))
            y, module = tuple(out), Multiply()
        else:
            rank = len(shapes[0])
            if not -rank <= node.axis < rank:
                raise self.fail(node, f"axis {node.axis} is out of range for inputs of {rank} axes ({described})")
            axis = node.axis % rank
            rest = [shape[:axis] + shape[axis + 1:] for shape in shapes]
            if any(len(shape) != rank for shape in shapes) or any(r != rest[0] for r in rest):
                raise self.fail(node, f"cannot concatenate along axis {axis}: {described}; every other axis must match")
            y = (*shapes[0][:axis], sum(shape[axis] for shape in shapes), *shapes[0][axis + 1:])
            module = Join(axis + 1)
        y = tuple(y)
        macs = math.prod(y) * (len(xs) - 1) if node.kind != "concat" else 0
        self.rows.append(LayerInfo(node.where, node.kind, y, 0, macs, depth, self._inputs(node)))
        return module, Signal(y)

    def arguments(self, node: LayerNode, layer_type: LayerType, x: Signal) -> Args:
        """The layer's arguments; those written as expressions over the input's shape are evaluated now."""
        if node.args is not None:
            return node.args
        assert node.pending is not None
        try:
            values = resolve(node.pending, lambda anchor: self.signals_at[anchor].shape)
        except ExprError as err:
            expr = err.expr
            assert expr is not None
            shape = self.signals_at[expr.anchor].shape
            raise SpecError.one(expr.location, format_path(expr.path), f"'{expr.text}': {err} (input {shape})") from None
        try:
            return layer_type.args.model_validate(values)
        except ValidationError as err:
            problems = validation_problems(err, node.locator, node.args_at, node.path, layer_type.args)
            noted = []
            for problem, e in zip(problems, err.errors(include_url=False)):
                key = e["loc"][0] if e["loc"] else None
                written = node.pending.get(key) if isinstance(key, str) else None
                if needs_shape(written):
                    shown = f"'{written.text}'" if isinstance(written, Expr) else "expressions"
                    problem = Problem(problem.location, problem.path,
                                      f"{problem.message}: {key} = {values[key]!r} from {shown} with input {x.shape}")
                noted.append(problem)
            raise SpecError(noted) from None

    def _refuse_future(self, node: LayerNode, args: Args) -> None:
        """A next-token model must not read the steps it predicts."""
        if not self.next_token:
            return
        def at(key: str) -> Location:  # the argument where it is written, else the layer
            return node.locator.locate(node.args_at + (key,)) if node.locator.written(node.args_at + (key,)) \
                else node.location

        if isinstance(args, RecurrentArgs) and args.bidirectional:
            raise self.fail(node, f"a bidirectional {node.kind} also reads the sequence backwards, so in a next-token "
                                  "model (task sequence on tokens) step t would see the token it is trained to predict; "
                                  "set bidirectional: false", at("bidirectional"))
        if getattr(args, "causal", None) is False:
            raise self.fail(node, f"{node.kind} attends to every step, so in a next-token model (task sequence on "
                                  "tokens) step t would see the token it is trained to predict; set causal: true",
                            at("causal"))

    def layer(self, node: LayerNode, x: Signal, depth: int) -> tuple[nn.Module, Signal]:
        layer_type = LAYERS.get(node.kind)
        origin = str(getattr(layer_type.build, "__module__", "") or "?")
        plugin = not origin.startswith("models.layers.")  # a layer from elsewhere: any exception is its problem
        caught: tuple[type[BaseException], ...] = (Exception,) if plugin else (ValueError, RuntimeError, TypeError)
        probe_caught: tuple[type[BaseException], ...] = (Exception,) if plugin else (RuntimeError, ValueError, IndexError)
        from_plugin = f" (layer from {origin})" if plugin else ""
        if layer_type.wants_index and not x.is_index:
            raise self.fail(node, f"takes token ids but receives {x.dtype} values of shape {x.shape}")
        if x.is_index and not layer_type.wants_index:
            raise self.fail(node, f"receives token ids of shape {x.shape}; start the network with one_hot or embedding")
        if layer_type.ranks is not None and len(x.shape) not in layer_type.ranks:
            raise self.fail(node, self._rank_message(node.kind, layer_type.ranks, x.shape))
        args = self.arguments(node, layer_type, x)
        self._refuse_future(node, args)
        try:
            with torch.device("meta"):
                module = layer_type.build(args, x)
        except caught as err:
            shown = f"{type(err).__name__}: {err}" if plugin else str(err)
            raise self.fail(node, f"{shown} (input {x.shape}){from_plugin}") from None
        if not isinstance(module, nn.Module):
            raise self.fail(node, f"its builder returned {type(module).__name__}, not a torch module{from_plugin}")
        module.spec_kind = node.kind
        count = sum(p.numel() for p in module.parameters())
        self.params += count
        if self.params > MAX_PARAMETERS:
            raise self.fail(node, f"this layer has {count:,} parameters ({4 * count / 1e9:,.1f} GB as float32), taking the "
                                  f"network past the limit of {MAX_PARAMETERS:,}")
        key = None if plugin else (node.kind, args.model_dump_json(), x)
        y = _PROBED.get(key) if key else None
        if y is None:
            y = self._probe(node, module, x, probe_caught, from_plugin)
            if key is not None and len(_PROBED) < _PROBE_CACHE:
                _PROBED[key] = y
        if any(d == 0 for d in y.shape):
            raise self.fail(node, f"output shape {y.shape} has a zero-size axis: input {x.shape} is too small for it")
        if math.prod(y.shape) > MAX_VALUES_PER_SAMPLE:
            raise self.fail(node, f"output {y.shape} has {math.prod(y.shape):,} values per sample (limit {MAX_VALUES_PER_SAMPLE:,})")
        macs = layer_type.macs(module, x, y) if layer_type.macs else 0
        self.rows.append(LayerInfo(node.where, node.kind, y.shape, count, macs, depth, self._inputs(node)))
        return module, y

    def _probe(self, node: LayerNode, module: nn.Module, x: Signal, caught: tuple[type[BaseException], ...],
               from_plugin: str) -> Signal:
        """The output signal of `module` on a meta tensor of `x` (PyTorch's own shape formulas)."""
        try:
            probe = torch.empty((2, *x.shape), dtype=x.dtype, device="meta")  # (B=2, ...): BatchNorm needs B > 1
            out = module.eval()(probe)
        except caught as err:
            message = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise self.fail(node, f"cannot take input of shape {x.shape}: {message}{from_plugin}") from None
        if not isinstance(out, torch.Tensor) or out.dim() < 2:
            shown = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else type(out).__name__
            raise self.fail(node, f"gives {shown} per sample; a layer gives a tensor with at least one axis per sample"
                                  f"{from_plugin}")
        return Signal(tuple(out.shape[1:]), out.dtype)

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
    output: tuple[int, ...]  # the main output's per-sample shape
    aux: dict[str, tuple[int, ...]] = field(default_factory=dict)  # auxiliary output name → its shape
    outputs: Outputs | None = None

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


def _check_output(spec: Spec, y: Signal, main: Output) -> None:
    where = spec.locate(main.at)
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
        raise SpecError.one(where, format_path(main.at), problem)


def _check_aux(spec: Spec, main: Output, y: Signal, aux: Output, a: Signal) -> None:
    """An auxiliary output is trained with the task's loss on the main output's targets: it must have its shape."""
    if a.shape == y.shape and a.dtype == y.dtype:
        return
    hint = ""
    if len(a.shape) == len(y.shape) and a.shape[1:] == y.shape[1:] and spec.task in ("classification", "segmentation"):
        hint = f"; give its last layer out: {y.shape[0]}"
    elif spec.task == "segmentation" and len(a.shape) == 3 and a.shape[0] == y.shape[0]:
        hint = f"; resize it to the input's size, e.g. resize: {{size: [{y.shape[1]}, {y.shape[2]}]}}"
    raise SpecError.one(spec.locate(aux.at), format_path(aux.at),
                        f"auxiliary output {aux.shown} gives {a.shape} per sample but the main output {main.shown} "
                        f"gives {y.shape}: an auxiliary output is trained with the task's loss on the same targets, so "
                        f"it must have the main output's shape{hint}")


def infer(spec: Spec) -> Inferred:
    """Shape inference on the meta device: raises SpecError for any shape problem, allocates nothing."""
    builder = _Builder(spec)
    x = _input_signal(spec)
    nodes = [*spec.backbone_nodes, *spec.nodes]  # one list: the network may take from the backbone's named layers
    starts: list[int] = []
    modules, wires, values = builder.wired(nodes, x, 0, starts)
    outputs = network_outputs(spec)
    y = values[outputs.main.index + 1]
    _check_output(spec, y, outputs.main)
    for aux in outputs.aux:
        _check_aux(spec, outputs.main, y, aux, values[aux.index + 1])
    k = len(spec.backbone_nodes)
    backbone = nn.Sequential(*modules[:k]) if k else None
    body = nn.Sequential(*modules[k:])
    plain = outputs.main.index == len(nodes) - 1 and not outputs.aux
    chain = plain and all(w == (i,) for i, w in enumerate(wires))
    stateful = spec.task == "sequence" and spec.input.kind == "tokens"
    net = SpecNet(spec.task, backbone, body, stateful, y.shape, None if chain else wires, outputs.main.index,
                  {a.name: a.index + 1 for a in outputs.aux}, {a.name: a.weight for a in outputs.aux})
    rows = builder.rows
    ends = starts[1:] + [len(rows)]
    for i in net.training_only:  # an entry only auxiliary heads need, and its nested rows: not in the export
        rows[starts[i]:ends[i]] = [replace(r, training_only=True) for r in rows[starts[i]:ends[i]]]
    shapes = {a.name: values[a.index + 1].shape for a in outputs.aux}
    return Inferred(net, rows, y.shape, shapes, outputs)


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
        kind = f"{r.kind} (training only)" if r.training_only else r.kind
        lines.append(("  " * r.depth + r.path + (f" ← {r.inputs}" if r.inputs else ""), kind, str(r.shape), f"{r.params:,}", f"{r.macs:,}" if r.macs else ""))
    total = ("total", "", str(inferred.output), f"{inferred.params:,}", f"{inferred.macs:,}")
    widths = [max(len(row[i]) for row in [header, *lines, total]) for i in range(5)]

    def fmt(row: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    rule = "-" * len(fmt(header))
    return "\n".join([f"{spec.name} ({spec.task})", fmt(header), rule, *map(fmt, lines), rule, fmt(total),
                      *_outputs_lines(inferred)])


def _outputs_lines(inferred: Inferred) -> list[str]:
    """Below the table, when the spec has auxiliary outputs: which output is exported, which train only."""
    outputs = inferred.outputs
    if outputs is None or not outputs.aux:
        return []
    rows = [r for r in inferred.rows if r.training_only and r.depth == 0]
    extra = sum(r.params for r in rows)
    macs = sum(r.macs for r in inferred.rows if r.training_only)
    lines = [f"main output {outputs.main.name} {inferred.output}: exported and served"]
    lines += [f"auxiliary output {a.name} {inferred.aux[a.name]}: loss weight {a.weight:g}, training only"
              for a in outputs.aux]
    lines.append(f"training only: {len(rows)} entries, {extra:,} parameters, {macs:,} mult-adds (not in the export)")
    return lines
