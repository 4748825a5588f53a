"""PyTorch net → ONNX file that serving can run as-is: client-facing inputs, the card inside, portable graph.

What the graph computes (the *graph module*) is decided here once, and the parity check (models/export/parity.py)
compares the ONNX file against exactly that module (models/export/parity.py):

* images: the graph input is raw ``pixels`` uint8 (B,H,W,C); the graph scales by 1/255, normalizes with the
  card's mean/std and transposes to NCHW itself, so clients send pixels and normalization can never drift
  from training. ``pixel_input=False`` keeps the bare float (B,C,H,W) input instead.
* token models: the *step form* ``(tokens (B,T) int64, state_in_0..) -> (logits (B,T,V), state_out_0..)``.
  A generator feeds one token per call and carries the state, so producing n tokens costs n steps; a
  stateless graph would have to re-read the whole prefix on every call (O(n²)). The steps axis stays
  dynamic, so a prompt can be consumed in one call too.
* everything else: the net's own input, with only the batch axis dynamic.

Exporter choice: the dynamo exporter (torch.export) is the default, but for recurrent nets it unrolls
``nn.RNN`` over the example's time steps (the steps axis becomes static) and annotates LSTM logits with the
example's length, and GRU has been reported wrong (linear_before_reset); the TorchScript exporter emits
native ONNX RNN/GRU/LSTM ops with a dynamic steps axis. So recurrent nets try TorchScript first, others try
dynamo first, and a candidate is accepted only if its graph matches the card (names, dtypes, dynamic axes)
and agrees numerically with PyTorch on the example inputs at two batch sizes. ``check_parity`` then proves
the chosen file on ≥256 real samples.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Literal, Sequence

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from models.artifact.card import (CARD_KEY, SPEC_HASH_KEY, TASK_KEY, CardError, ImageInput, ModelCard, TensorIO,
                         TokenInput, validate_card)
from models.artifact.runtime import CPU, make_session, session_options
from models.errors import SpecserveError
from models.export.tolerance import Tolerance

Exporter = Literal["dynamo", "torchscript"]
EXPORTERS: tuple[Exporter, ...] = ("dynamo", "torchscript")


class ExportError(SpecserveError, RuntimeError):
    """The export failed or could not be proven to compute what PyTorch computes; one readable line."""


# ----------------------------------------------------------------------------------------------------------
# What the graph computes
# ----------------------------------------------------------------------------------------------------------

def normalize_pixels(pixels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (B,H,W,C) pixels → normalized float (B,C,H,W), as the training data pipeline does."""
    x = pixels.permute(0, 3, 1, 2).to(torch.float32) / 255.0  # (B,C,H,W) in [0,1]
    return (x - mean) / std  # mean/std (1,C,1,1)


class PixelInput(nn.Module):
    """Wraps an image net so that the graph takes raw uint8 NHWC pixels and normalizes inside."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))  # (1,C,1,1)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))  # (1,C,1,1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:  # (B,H,W,C) uint8
        return self.net(normalize_pixels(pixels, self.mean, self.std))


class TokenStep(nn.Module):
    """Step form of a token model: state is an explicit graph input and output (flat, batch-first)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.state_size = int(getattr(net, "state_size", 0))

    def forward(self, tokens: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.state_size == 0:
            return (self.net(tokens),)  # logits (B,T,V)
        logits, new_state = self.net(tokens, tuple(state))  # (B,T,V), each (B, layers*dirs, hidden)
        return (logits, *new_state)


def tensor_names(card: ModelCard, net: nn.Module, pixel_input: bool) -> TensorIO:
    """Graph tensor names for this card/net (the contract serving relies on)."""
    if isinstance(card.input, TokenInput):
        n = int(getattr(net, "state_size", 0))
        return TensorIO(inputs=["tokens"], outputs=["logits"],
                        state_in=[f"state_in_{i}" for i in range(n)], state_out=[f"state_out_{i}" for i in range(n)])
    if isinstance(card.input, ImageInput):
        return TensorIO(inputs=["pixels" if pixel_input else "input"], outputs=["logits"], pixel_input=pixel_input)
    return TensorIO(inputs=["input"], outputs=["prediction"])


def graph_module(net: nn.Module, card: ModelCard) -> nn.Module:
    """The PyTorch module whose forward is exactly what the exported graph computes (eval mode)."""
    assert card.io is not None, "card.io is set by export_net"
    if isinstance(card.input, ImageInput) and card.io.pixel_input:
        module: nn.Module = PixelInput(net, card.input.mean, card.input.std)
    elif isinstance(card.input, TokenInput):
        module = TokenStep(net)
    else:
        module = net
    return module.eval()


def _dynamic_axes(card: ModelCard) -> dict[str, dict[int, str]]:
    """name → {axis: label}: batch everywhere, plus steps on token inputs/logits."""
    assert card.io is not None
    seq = {1: "steps"} if isinstance(card.input, TokenInput) else {}
    per_step = seq if card.task == "sequence" else {}  # a text classifier's scores (B, K) have no steps axis
    axes = {card.io.inputs[0]: {0: "batch", **seq}, card.io.outputs[0]: {0: "batch", **per_step}}
    axes.update({name: {0: "batch"} for name in card.io.state_in + card.io.state_out})
    return axes


# ----------------------------------------------------------------------------------------------------------
# Feeding the graph (shared by the export smoke test, the parity proof and quantization)
# ----------------------------------------------------------------------------------------------------------

def graph_feeds(session: ort.InferenceSession, card: ModelCard, data: np.ndarray,
                state: Sequence[np.ndarray] | None = None) -> list[np.ndarray]:
    """Client data → the graph's inputs in order. Images come as uint8 pixels (B,H,W,C) and are normalized
    here only for float-input graphs; token graphs get zero state unless `state` carries one over."""
    assert card.io is not None
    io = card.io
    if isinstance(card.input, ImageInput) and not io.pixel_input:
        mean = torch.tensor(card.input.mean).view(1, -1, 1, 1)
        std = torch.tensor(card.input.std).view(1, -1, 1, 1)
        data = normalize_pixels(torch.from_numpy(np.ascontiguousarray(data)), mean, std).numpy()  # (B,C,H,W)
    if not io.state_in:
        return [data]
    if state is None:
        shapes = {i.name: i.shape for i in session.get_inputs()}  # state: ['batch', L*D, H]
        state = [np.zeros([data.shape[0], *shapes[n][1:]], dtype=np.float32) for n in io.state_in]
    return [data, *state]


def run_onnx(session: ort.InferenceSession, card: ModelCard, feeds: Sequence[np.ndarray]) -> list[np.ndarray]:
    assert card.io is not None
    return session.run(card.io.graph_outputs, dict(zip(card.io.graph_inputs, feeds)))


def run_torch(module: nn.Module, feeds: Sequence[np.ndarray]) -> list[np.ndarray]:
    with torch.inference_mode():
        out = module(*(torch.from_numpy(np.ascontiguousarray(f)) for f in feeds))
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


# ----------------------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------------------

@dataclass
class ExportResult:
    """Where the graph went and how it was made; `rejected` says why other exporters were not used."""

    path: Path
    card: ModelCard
    exporter: str
    opset: int
    seconds: float
    rejected: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(path=str(self.path), card=self.card.model_dump(mode="json"))
        return d


def exporter_order(net: nn.Module) -> tuple[Exporter, ...]:
    """Exporters to try, best first (see the module docstring for why recurrent nets prefer TorchScript)."""
    if any(isinstance(m, nn.RNNBase) for m in net.modules()):
        return ("torchscript", "dynamo")
    return ("dynamo", "torchscript")


@contextlib.contextmanager
def quiet_exporters() -> Iterator[None]:
    """The exporters warn about their own internals (deprecations, torchvision ops); keep logs readable."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _export_args(net: nn.Module, card: ModelCard, data: torch.Tensor) -> tuple[torch.Tensor, ...]:
    assert card.io is not None
    if isinstance(card.input, ImageInput) and not card.io.pixel_input:
        data = normalize_pixels(data, torch.tensor(card.input.mean).view(1, -1, 1, 1),
                                torch.tensor(card.input.std).view(1, -1, 1, 1))  # (B,C,H,W)
    if card.io.state_in:
        return (data, *net.initial_state(data.shape[0]))  # tokens (B,T), state each (B, L*D, H)
    return (data,)


def _run_exporter(exporter: Exporter, module: nn.Module, args: tuple[torch.Tensor, ...], card: ModelCard,
                  path: Path, opset: int) -> None:
    assert card.io is not None
    io, axes = card.io, _dynamic_axes(card)
    with quiet_exporters():
        if exporter == "torchscript":
            torch.onnx.export(module, args, str(path), dynamo=False, input_names=io.graph_inputs,
                              output_names=io.graph_outputs, dynamic_axes=axes, opset_version=opset)
            return
        dims = {label: torch.export.Dim(label) for label in ("batch", "steps")}
        spec = [{axis: dims[label] for axis, label in axes[name].items()} for name in io.graph_inputs]
        # TokenStep.forward(tokens, *state): torch.export wants the varargs' shapes as one nested tuple.
        shapes = (spec[0], tuple(spec[1:])) if isinstance(module, TokenStep) and spec[1:] else tuple(spec)
        program = torch.onnx.export(module, args, dynamo=True, input_names=io.graph_inputs,
                                    output_names=io.graph_outputs, dynamic_shapes=shapes,
                                    opset_version=opset, verbose=False)
        assert program is not None
        program.save(str(path), external_data=False)


def _grown(args: tuple[torch.Tensor, ...], tokens: bool) -> tuple[torch.Tensor, ...]:
    """The same inputs with one more batch row (and one more time step for tokens), to catch shapes that
    the exporter silently specialized to the example."""
    grown = tuple(torch.cat([a, a[:1]]) for a in args)  # (B+1, ...)
    if tokens:
        grown = (torch.cat([grown[0], grown[0][:, :1]], dim=1), *grown[1:])  # tokens (B+1, T+1)
    return grown


def _smoke_check(path: Path, module: nn.Module, card: ModelCard, args: tuple[torch.Tensor, ...],
                 tolerance: Tolerance) -> None:
    """Raise CardError/ExportError unless the graph matches the card and agrees with `module` on `args`
    within `tolerance` (the same one the parity proof applies)."""
    validate_card(card, onnx.load(str(path)))
    session = make_session(path, threads=1, providers=(CPU,))
    for feed in (args, _grown(args, isinstance(card.input, TokenInput))):
        arrays = [a.numpy() for a in feed]
        for name, got, want in zip(card.io.graph_outputs, run_onnx(session, card, arrays), run_torch(module, arrays)):
            excess = tolerance.excess(got, want)
            if excess.size and float(excess.max()) > 1:
                worst = np.unravel_index(int(excess.argmax()), excess.shape)
                raise ExportError(f"batch {arrays[0].shape[0]} output '{name}': |onnx - torch| "
                                  f"{abs(float(got[worst]) - float(want[worst])):.3g} at torch value "
                                  f"{float(want[worst]):.4g} exceeds {tolerance}")


def _write_metadata(path: Path, card: ModelCard) -> None:
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {CARD_KEY: card.to_json(), TASK_KEY: card.task, SPEC_HASH_KEY: card.spec_hash})
    onnx.save(model, str(path))


def _prune_opset_imports(model: onnx.ModelProto) -> None:
    """onnxruntime's saved graphs import every domain it knows; keep only the ones nodes use."""
    used = {n.domain for n in model.graph.node} | {""}
    keep = [o for o in model.opset_import if o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(keep)


def optimize_offline(src: Path, dst: Path) -> None:
    """Save onnxruntime's BASIC graph optimizations (constant folding, redundant-node removal, Conv+BN/Add/Mul
    fusions) into `dst`. BASIC only: those rewrites run before graph partitioning and emit standard ONNX ops,
    so the file stays valid for every provider; EXTENDED/ALL add CPU/CUDA-specific fused ops (e.g.
    com.microsoft FusedConv, NCHWc layouts) that would tie the file to the machine that optimized it. The
    serving session still applies the remaining levels online for its own provider."""
    so = session_options(level=ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)
    so.optimized_model_filepath = str(dst)
    make_session(src, options=so, providers=(CPU,))
    model = onnx.load(str(dst))
    _prune_opset_imports(model)
    onnx.save(model, str(dst))


PRECISION_KEY = "specserve.precision"


def to_fp16(src: Path, dst: Path) -> None:
    """An fp16 copy of a float32 graph for GPUs: weights and float math in fp16, the graph's inputs and outputs
    as they were (uint8 pixels / int64 tokens in, float32 scores out), the card kept. onnxruntime's converter keeps
    the ops it knows to be unsafe in fp16 (e.g. Resize on some providers) in float32 behind casts."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    props = {p.key: p.value for p in model.metadata_props}
    half = convert_float_to_float16(model, keep_io_types=True)
    onnx.helper.set_model_props(half, {**props, PRECISION_KEY: "fp16"})
    onnx.save(half, str(dst))


def export_net(net: nn.Module, card: ModelCard, out_dir: str | Path, *, example_inputs: torch.Tensor | np.ndarray,
               opset: int = 18, pixel_input: bool = True, exporter: Exporter | Literal["auto"] = "auto",
               optimize: bool = True, filename: str = "model.onnx",
               tolerance: Tolerance = Tolerance()) -> ExportResult:
    """Export `net` to `out_dir/filename` with the card (plus io names, opset, exporter) in its metadata.

    example_inputs: a few real client-side samples (uint8 (B,H,W,C) pixels for images, int64 (B,T) tokens,
    float (B,τ) windows or (B,F) features); B ≥ 2 and T ≥ 2 so no axis is specialized to 1.
    exporter: "auto" tries `exporter_order(net)`; naming one tries only that one.
    Raises ExportError naming each exporter tried and why it was rejected.
    """
    started = time.perf_counter()
    net = copy.deepcopy(net).cpu().eval()  # never change the caller's module (device, train mode)
    data = torch.as_tensor(example_inputs)
    if data.shape[0] < 2 or (isinstance(card.input, TokenInput) and data.shape[1] < 2):
        raise ExportError(f"example_inputs {tuple(data.shape)}: need batch >= 2 (and steps >= 2 for tokens) "
                          f"so the exporter cannot specialize those axes")
    io = tensor_names(card, net, pixel_input)
    candidates = exporter_order(net) if exporter == "auto" else (exporter,)
    cards = {name: card.with_export(io, opset=opset, exporter=name) for name in candidates}
    module = graph_module(net, cards[candidates[0]])  # the same module whichever exporter traces it
    args = _export_args(net, cards[candidates[0]], data)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rejected: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out_dir) as tmp:
        for name in candidates:
            raw = Path(tmp) / f"{name}.onnx"
            try:
                _run_exporter(name, module, args, cards[name], raw, opset)
                _smoke_check(raw, module, cards[name], args, tolerance)
            except (CardError, ExportError) as e:
                rejected[name] = str(e)
                continue
            except Exception as e:  # the exporter itself failed: keep the first line of its message
                first_line = (str(e).strip().splitlines() or [""])[0]
                rejected[name] = f"{type(e).__name__}: {first_line}"
                continue
            _write_metadata(raw, cards[name])
            ready = Path(tmp) / filename
            if optimize:
                optimize_offline(raw, ready)
            else:
                raw.replace(ready)
            try:
                validate_card(cards[name], onnx.load(str(ready)))
            except CardError as e:
                raise ExportError(f"{filename}: card disagrees with the optimized graph: {e}") from None
            final = ready.replace(out_dir / filename)  # same filesystem: readers never see a partial file
            return ExportResult(final, cards[name], name, opset, time.perf_counter() - started, rejected)
    reasons = "; ".join(f"{k}: {v}" for k, v in rejected.items())
    raise ExportError(f"could not export {card.name} ({card.task}): {reasons}")
