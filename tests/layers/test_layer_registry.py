"""Every registered layer, at every input rank it accepts: build, forward, backward, ONNX export, parity.

The cases come from the registry at collection time (`LAYERS.names()` × each layer's `ranks`; `ranks=None`, "any
rank", is tried at ranks 1 and 3), so a layer registered tomorrow, here or by a user's `@register`, is tested without
touching this file. Each layer is tested on its own, driven straight from the registry the way `models.build` drives
it: arguments validated by the layer's own pydantic model, the module constructed on the meta device from the
per-sample `Signal` arriving at it, probed on a meta tensor (the builder's shape inference), then materialised
(`to_empty` + `reset_parameters`) on the CPU. Going through the registry rather than a spec file means no context
layers are needed: a layer that wants token ids (`wants_index`: embedding, one_hot) simply receives an int64 signal
with a vocabulary, at any rank, which a spec could only feed at rank 1.

Arguments: fields with defaults keep them; required fields get the first small value of their type (2, (2, 2),
[-1], 2.0, the first Literal, ...) with which the layer validates, builds and gives a non-empty output. A layer
needing something else can be given it in ARG_OVERRIDES (or RANK_OVERRIDES, per input rank).

Export mirrors models/export/onnx_graph.py: the exporters are tried in `exporter_order(module)` (dynamo first,
TorchScript first for recurrent layers), batch axis dynamic, and a candidate is accepted when it exports and matches
PyTorch (eval mode) on the example batch and on a fresh random batch of another size. A case passes only if some
exporter is accepted; otherwise it fails naming every exporter's reason. Nothing is skipped.
"""
from __future__ import annotations

import itertools
import math
import types
import typing
import zlib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from pydantic import BaseModel, ValidationError

from models.export.onnx_graph import exporter_order, quiet_exporters
from models.layers.builtin import LAYERS, LayerType, Signal

BATCH = 2  # BatchNorm needs > 1 while training; the exporters must not specialise it (parity also runs batch 3)
SIDE = 6  # length / height / width of float inputs; channels or steps are 2
VOCAB = 5  # token ids for layers that want them
UNSPECIFIED_RANKS = (1, 3)  # what "any rank" (ranks=None) is tried at
OPSET = 18
RTOL, ATOL = 1e-4, 1e-5
MAX_ARG_TRIES = 256

# name → arguments for a layer whose first small valid values (see `_candidates`) do not build
ARG_OVERRIDES: dict[str, dict[str, typing.Any]] = {}
# (name, rank) → arguments, for a layer whose valid arguments depend on the input's rank
RANK_OVERRIDES: dict[tuple[str, int], dict[str, typing.Any]] = {
    ("permute", 2): {"dims": [1, 0]},  # a permutation of the input's axes: as many as it has
    ("permute", 3): {"dims": [1, 2, 0]},
}


# ------------------------------------------------------------------------------------------------ the cases
def _cases() -> list[tuple[str, int]]:
    return [(name, rank) for name in LAYERS.names() for rank in (LAYERS.get(name).ranks or UNSPECIFIED_RANKS)]


def _signal(layer: LayerType, rank: int) -> Signal:
    """Per-sample input: (6,), (2, 6), (2, 6, 6), ...; int64 ids with a vocabulary for layers that want them."""
    shape = (SIDE,) if rank == 1 else (2,) + (SIDE,) * (rank - 1)
    if layer.wants_index:
        return Signal(shape, torch.int64, VOCAB)
    return Signal(shape)


def _sample(signal: Signal, batch: int, generator: torch.Generator) -> torch.Tensor:
    shape = (batch, *signal.shape)
    if signal.is_index:
        return torch.randint(0, signal.vocab, shape, generator=generator, dtype=signal.dtype)
    return torch.randn(shape, generator=generator, dtype=signal.dtype)


# ------------------------------------------------------------------------------------------------ arguments
def _candidates(annotation) -> list:
    """Small plausible values of a field's type, most likely to be valid first."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return list(args)
    if origin in (typing.Union, types.UnionType):
        values = []
        for a in args:
            values += [v for v in _candidates(a) if v not in values]
        return values
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return [(v,) for v in _candidates(args[0])[:2]]
        return [tuple(_candidates(a)[0] for a in args)]
    if origin is list:
        firsts = [v for v in _candidates(args[0] if args else int)[:3]]
        return ([[-1]] if args and args[0] is int else []) + [[v] for v in firsts]
    if annotation is type(None):
        return [None]
    if annotation is bool:
        return [True, False]
    if annotation is int:
        return [2, 1, 3]
    if annotation is float:
        return [2.0, 0.5, 1.0]
    if annotation is str:
        return ["a"]
    return [None]


def _field_candidates(field) -> list:
    """`_candidates` of the field's type, plus its lower bound (Field(ge=…) / gt=…) when small values are refused."""
    values = _candidates(field.annotation)
    for bound in field.metadata:
        low = getattr(bound, "ge", None)
        if low is None and getattr(bound, "gt", None) is not None:
            low = bound.gt + (1 if isinstance(bound.gt, int) else 0.5)
        if isinstance(low, (int, float)) and not isinstance(low, bool):
            values += [v for v in (low, 2 * low) if v not in values]
    return values


def _why(err: Exception) -> str:
    if isinstance(err, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def _meta_build(layer: LayerType, args: BaseModel, signal: Signal) -> tuple[torch.nn.Module, torch.Size]:
    """What models.build._Builder.layer does: construct on meta, probe a (B, ...) meta tensor in eval mode."""
    with torch.device("meta"):
        module = layer.build(args, signal)
    probe = torch.empty((BATCH, *signal.shape), dtype=signal.dtype, device="meta")
    out = module.eval()(probe)
    return module, out.shape


def _minimal_args(layer: LayerType, signal: Signal) -> BaseModel:
    fields = {k: f for k, f in layer.args.model_fields.items() if k != "name"}
    required = [k for k, f in fields.items() if f.is_required()]
    fixed = {**ARG_OVERRIDES.get(layer.name, {}), **RANK_OVERRIDES.get((layer.name, len(signal.shape)), {})}
    free = [k for k in required if k not in fixed]
    problems: list[str] = []
    for values in itertools.islice(itertools.product(*(_field_candidates(fields[k]) for k in free)), MAX_ARG_TRIES):
        raw = {**fixed, **dict(zip(free, values))}
        try:
            args = layer.args.model_validate(raw)
            _, shape = _meta_build(layer, args, signal)
        except (ValidationError, ValueError, RuntimeError, TypeError, IndexError) as err:
            problems.append(f"{raw}: {_why(err)}")
            continue
        if shape and any(d == 0 for d in shape):
            problems.append(f"{raw}: output {tuple(shape)} has a zero-size axis")
            continue
        return args
    tried = "; ".join(problems[:4]) or "no candidate values"
    pytest.fail(f"layer {layer.name!r}: found no valid arguments for input {signal.shape} ({signal.dtype}): {tried}. "
                f"Give it some in ARG_OVERRIDES if the layer itself is right.", pytrace=False)


def _materialise(module: torch.nn.Module) -> torch.nn.Module:
    """What models.build.build does after inference: allocate on the CPU, then every module's default init."""
    module = module.to_empty(device="cpu")
    for m in module.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return module


# ------------------------------------------------------------------------------------------------ export
def _outputs(out) -> list[torch.Tensor]:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _export(exporter: str, module: torch.nn.Module, x: torch.Tensor, n_outputs: int, path: Path) -> None:
    outputs = ["output"] if n_outputs == 1 else [f"output_{i}" for i in range(n_outputs)]
    with quiet_exporters():  # the exporters' own deprecation chatter
        if exporter == "torchscript":
            torch.onnx.export(module, (x,), str(path), dynamo=False, input_names=["input"], output_names=outputs,
                              dynamic_axes={name: {0: "batch"} for name in ["input", *outputs]}, opset_version=OPSET)
            return
        program = torch.onnx.export(module, (x,), dynamo=True, input_names=["input"], output_names=outputs,
                                    dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=OPSET,
                                    verbose=False)
        assert program is not None, "torch.onnx.export(dynamo=True) returned no program"
        program.save(str(path), external_data=False)


def _parity(path: Path, module: torch.nn.Module, inputs: list[torch.Tensor]) -> None:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for x in inputs:
        with torch.no_grad():
            want = [t.numpy() for t in _outputs(module(x))]
        got = session.run(None, {name: x.numpy()})
        assert len(got) == len(want), f"ONNX gives {len(got)} outputs, PyTorch {len(want)}"
        for i, (g, w) in enumerate(zip(got, want)):
            assert g.shape == w.shape, f"batch {x.shape[0]}, output {i}: ONNX shape {g.shape} != PyTorch {w.shape}"
            np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL,
                                       err_msg=f"batch {x.shape[0]}, output {i}: ONNX differs from PyTorch")


# ------------------------------------------------------------------------------------------------ the test
@pytest.mark.parametrize(("name", "rank"), _cases(), ids=[f"{n}-rank{r}" for n, r in _cases()])
def test_layer_builds_trains_and_exports_with_parity(name: str, rank: int, tmp_path: Path):
    layer = LAYERS.get(name)
    signal = _signal(layer, rank)
    generator = torch.Generator().manual_seed(zlib.crc32(f"{name}-{rank}".encode()))
    torch.manual_seed(zlib.crc32(f"{name}-{rank}".encode()))

    args = _minimal_args(layer, signal)
    meta_module, meta_shape = _meta_build(layer, args, signal)
    module = _materialise(meta_module).train()

    # forward and backward (training mode): the real output has the shape inference's shape, and a gradient
    # reaches every trainable parameter
    x = _sample(signal, BATCH, generator)
    outs = _outputs(module(x))
    assert tuple(outs[0].shape) == tuple(meta_shape), \
        f"{name} with {args!r}: real output {tuple(outs[0].shape)} != meta-device inference {tuple(meta_shape)}"
    assert all(torch.isfinite(o.float()).all() for o in outs), f"{name}: non-finite output"
    trainable = {n: p for n, p in module.named_parameters() if p.requires_grad}
    if trainable:
        # weights drawn at random, so no parameter's gradient cancels by symmetry (d sum(BatchNorm)/dγ = 0)
        loss = sum((o.float() * torch.randn(o.shape, generator=generator)).sum()
                   for o in outs if o.requires_grad)
        assert isinstance(loss, torch.Tensor), f"{name}: has parameters {sorted(trainable)} but no output depends on them"
        loss.backward()
        no_grad = [n for n, p in trainable.items() if p.grad is None or not torch.any(p.grad != 0)]
        assert not no_grad, f"{name} with {args!r}: no gradient reaches {no_grad}"
        bad = [n for n, p in trainable.items() if not torch.isfinite(p.grad).all()]
        assert not bad, f"{name}: non-finite gradient in {bad}"

    # ONNX export in eval mode, with the batch axis dynamic; parity on the example batch and on a fresh batch of 3
    module.eval()
    with torch.no_grad():
        n_outputs = len(_outputs(module(x)))
    inputs = [x, _sample(signal, BATCH + 1, generator)]
    rejected: dict[str, str] = {}
    for exporter in exporter_order(module):
        path = tmp_path / f"{exporter}.onnx"
        try:
            _export(exporter, module, x, n_outputs, path)
        except Exception as err:  # the exporter itself failed: keep the first line
            rejected[exporter] = f"export raised {type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}"
            continue
        try:
            _parity(path, module, inputs)
        except (AssertionError, ort.capi.onnxruntime_pybind11_state.Fail,
                ort.capi.onnxruntime_pybind11_state.InvalidArgument, RuntimeError) as err:
            rejected[exporter] = f"parity: {' '.join(str(err).split())[:600]}"
            continue
        return
    reasons = "\n".join(f"  {k}: {v}" for k, v in rejected.items())
    pytest.fail(f"{name}-rank{rank} (input {signal.shape} {signal.dtype}, args {args.model_dump(exclude_none=True)}): "
                f"no exporter gives an ONNX graph that matches PyTorch:\n{reasons}", pytrace=False)


def test_every_registered_layer_has_a_case():
    """The parametrization above is the registry: each layer appears, at each rank it declares."""
    names = {n for n, _ in _cases()}
    assert names == set(LAYERS.names())
    for n in LAYERS.names():
        ranks = LAYERS.get(n).ranks
        assert {r for m, r in _cases() if m == n} == set(ranks or UNSPECIFIED_RANKS)
