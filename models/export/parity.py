"""Proof that an exported ONNX file computes what the PyTorch net computes, on real samples.

The proof: the graph passes ``onnx.checker`` (full check, with shape inference), its card agrees with it, and
onnxruntime matches PyTorch (eval mode, the same graph module the exporter traced) on every output — logits
and recurrent state — within the Tolerance (|onnx − torch| ≤ atol + rtol·|torch| per element, see
models/export/tolerance.py) at batch sizes 1, 7 and 64 over all samples, with identical argmax decisions (top-1
class, per-pixel class, greedy next token). Token models are run as a generator runs them: two calls, the second
fed the state the first returned, so state carry-over is proven too; and at three sequence lengths (1, the
samples' length and 4× it), so a time axis frozen to the example's length cannot pass.

Argmax disagreements are excused only where PyTorch's own top-2 scores are tied (margin ≤ ``tie_tol``), since
either answer is then correct; they are counted separately in the report.
"""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
import onnxruntime as ort
from torch import nn

from models.artifact.card import CardError, ModelCard, TokenInput, Versions, read_card, validate_card
from models.export.onnx_graph import ExportError, graph_feeds, graph_module, run_onnx, run_torch
from models.export.tolerance import Tolerance, relative_error
from models.artifact.runtime import CPU, make_session

BATCH_SIZES = (1, 7, 64)
MIN_SAMPLES = 256


class ParityError(ExportError):
    """Parity failed; `report` holds the full ParityReport (the message is its one-line summary)."""

    def __init__(self, report: "ParityReport"):
        super().__init__(report.summary())
        self.report = report


@dataclass
class OutputCheck:
    """One output at one batch size (and, for token models, one sequence length), over all samples."""

    batch_size: int
    output: str
    max_abs_diff: float = 0.0
    argmax_positions: int = 0  # decisions compared (0 where argmax does not apply)
    argmax_mismatches: int = 0  # decisions that differ although PyTorch's top-2 were not tied
    argmax_ties: int = 0  # decisions that differ where PyTorch's top-2 scores were tied
    max_rel_diff: float = 0.0  # max |onnx − torch| / |torch| over elements with |torch| > atol
    worst_excess: float = -1.0  # max |onnx − torch| / (atol + rtol·|torch|): ≤ 1 passes; -1 = not recorded
    worst_sample: int = -1  # index (into the samples) of the sample holding the worst element
    steps: int = 0  # sequence length of token inputs (0 = not a token model)

    def passed(self, atol: float) -> bool:
        within = self.worst_excess <= 1 if self.worst_excess >= 0 else self.max_abs_diff <= atol  # older reports
        return within and self.argmax_mismatches == 0


@dataclass
class Score:
    """A task metric on labelled samples; `higher_is_better` tells how to read a change."""

    metric: str
    value: float
    higher_is_better: bool


@dataclass
class ParityReport:
    model: str
    sha256: str
    task: str
    exporter: str | None
    opset: int | None
    samples: int
    batch_sizes: list[int]
    atol: float
    providers: list[str]
    checks: list[OutputCheck]
    scores: dict[str, dict] = field(default_factory=dict)  # "torch"/"onnx" → Score, when labels were given
    versions: dict[str, str] = field(default_factory=dict)
    checker: str = "onnx.checker.check_model(full_check=True) passed"
    rtol: float = 0.0  # 0 in reports written before the relative term existed
    range_rtol: float = 0.0  # fp16 graphs (models/export/tolerance.py)
    lengths: list[int] = field(default_factory=list)  # token models: the sequence lengths proven

    @property
    def tolerance(self) -> Tolerance:
        return Tolerance(self.atol, self.rtol, self.range_rtol)

    @property
    def passed(self) -> bool:
        return all(c.passed(self.atol) for c in self.checks)

    def failures(self) -> list[OutputCheck]:
        return [c for c in self.checks if not c.passed(self.atol)]

    def summary(self) -> str:
        """One line: what passed, or every failing (batch size, output) with its max diff and argmax count."""
        lengths = f", lengths {self.lengths}" if self.lengths else ""
        if self.passed:
            worst = max(self.checks, key=lambda c: (c.worst_excess, c.max_abs_diff))
            rel = max(c.max_rel_diff for c in self.checks)
            return (f"parity ok for {self.model} ({self.exporter}, opset {self.opset}): {self.samples} samples at "
                    f"batch sizes {self.batch_sizes}{lengths}, max |onnx - torch| "
                    f"{max(c.max_abs_diff for c in self.checks):.2e}, max relative {rel:.2e}, worst sample "
                    f"{worst.worst_sample} at {max(worst.worst_excess, 0):.2g} of the tolerance ({self.tolerance})")
        parts = [f"batch {c.batch_size}{f' length {c.steps}' if c.steps else ''} output '{c.output}': max |onnx - torch| "
                 f"{c.max_abs_diff:.3g} {'>' if c.worst_excess > 1 else '<='} {self.atol:g} + {self.rtol:g}·|torch| "
                 f"(worst sample {c.worst_sample} at {max(c.worst_excess, 0):.3g}× the tolerance, max relative "
                 f"{c.max_rel_diff:.3g})"
                 + (f", {c.argmax_mismatches}/{c.argmax_positions} argmax disagreements" if c.argmax_positions else "")
                 for c in self.failures()]
        return f"parity FAILED for {self.model} ({self.exporter}, {self.samples} samples): " + "; ".join(parts)

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> "ParityReport":
        d = {k: v for k, v in d.items() if k != "passed"}
        return cls(**{**d, "checks": [OutputCheck(**c) for c in d["checks"]]})


def _decision_axis(card: ModelCard) -> int | None:
    """Axis of the first output that holds class/token scores, or None for numeric predictions."""
    if card.task in ("classification", "segmentation"):
        return 1  # (B,K) / (B,K,H,W)
    if isinstance(card.input, TokenInput):
        return -1  # (B,T,V)
    return None


def task_score(card: ModelCard, output: np.ndarray, labels: np.ndarray) -> Score:
    """Accuracy (top-1, per-pixel, next-token) for class outputs; RMSE for numeric ones. Segmentation labels
    outside [0, K) (e.g. 255 = void) are ignored."""
    axis = _decision_axis(card)
    if axis is None:
        rmse = float(np.sqrt(np.mean((output.reshape(len(labels), -1) - labels.reshape(len(labels), -1)) ** 2)))
        return Score("rmse", rmse, higher_is_better=False)
    predicted = output.argmax(axis=axis)  # (B,) / (B,H,W) / (B,T)
    valid = (labels >= 0) & (labels < output.shape[axis])
    name = {"classification": "accuracy", "segmentation": "pixel_accuracy"}.get(card.task, "next_token_accuracy")
    return Score(name, float((predicted[valid] == labels[valid]).mean()), higher_is_better=True)


def _compare(check: OutputCheck, got: np.ndarray, want: np.ndarray, axis: int | None, tie_tol: float,
             tolerance: Tolerance, first_sample: int) -> None:
    if got.size:
        check.max_abs_diff = max(check.max_abs_diff, float(np.max(np.abs(got - want))))
        check.max_rel_diff = max(check.max_rel_diff, relative_error(got, want, tolerance.atol))
        excess = tolerance.excess(got, want)  # (B, ...)
        if float(excess.max()) > check.worst_excess:
            check.worst_excess = float(excess.max())
            check.worst_sample = first_sample + int(np.unravel_index(int(excess.argmax()), excess.shape)[0])
    if axis is None:
        return
    differ = got.argmax(axis=axis) != want.argmax(axis=axis)  # (B,) / (B,H,W) / (B,T)
    top2 = -np.partition(-want, 1, axis=axis)  # two largest first along `axis`
    margin = np.take(top2, 0, axis=axis) - np.take(top2, 1, axis=axis)
    # scores closer than twice the tolerated error can swap in a correct runtime (reduced precision: fp16)
    tied = differ & (margin <= max(tie_tol, 2 * tolerance.range_rtol * float(np.abs(want).max())))
    check.argmax_positions += differ.size
    check.argmax_ties += int(tied.sum())
    check.argmax_mismatches += int((differ & ~tied).sum())


def _outputs(session: ort.InferenceSession, module: nn.Module, card: ModelCard,
             chunk: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(onnx outputs, torch outputs) for one chunk. Token models run in two calls, each side carrying its
    own returned state into the second call; logits of both calls are concatenated along time."""
    if not (isinstance(card.input, TokenInput) and card.io and card.io.state_in and chunk.shape[1] >= 2):
        feeds = graph_feeds(session, card, chunk)
        return run_onnx(session, card, feeds), run_torch(module, feeds)
    split = chunk.shape[1] // 2
    first = graph_feeds(session, card, chunk[:, :split])
    o1, t1 = run_onnx(session, card, first), run_torch(module, first)
    o2 = run_onnx(session, card, graph_feeds(session, card, chunk[:, split:], state=o1[1:]))
    t2 = run_torch(module, graph_feeds(session, card, chunk[:, split:], state=t1[1:]))
    return _joined(o1, o2), _joined(t1, t2)


def _joined(first: list[np.ndarray], second: list[np.ndarray]) -> list[np.ndarray]:
    """Logits of both calls along time (B,T,V), and the state after the second call."""
    return [np.concatenate([first[0], second[0]], axis=1), *second[1:]]


def token_lengths(samples: np.ndarray) -> dict[int, np.ndarray]:
    """The samples at three sequence lengths: 1 (the first token), their own T, and 4T (four consecutive samples
    joined along time); a graph whose steps axis was frozen to the example's length fails at least two."""
    n, steps = samples.shape[:2]
    joined = samples[: n // 4 * 4].reshape(n // 4, 4 * steps)  # (N/4, 4T)
    return {1: samples[:, :1], steps: samples, 4 * steps: joined}


def check_parity(onnx_path: str | Path, net: nn.Module, samples: np.ndarray, *, labels: np.ndarray | None = None,
                 batch_sizes: Sequence[int] = BATCH_SIZES, tolerance: Tolerance = Tolerance(), tie_tol: float = 1e-6,
                 min_samples: int = MIN_SAMPLES, threads: int | None = None,
                 providers: tuple[str, ...] = (CPU,)) -> ParityReport:
    """Prove `onnx_path` computes what `net` computes on `samples` (client-side form: uint8 (N,H,W,C) pixels,
    int64 (N,T) tokens, float (N,τ)/(N,F)); raise ParityError (an ExportError) with a one-line report if not.

    labels (optional): class ids (N,), masks (N,H,W), next tokens (N,T) or targets (N,1); the report then
    holds the task metric from both runtimes. Providers default to CPU: the proof is about the graph, and
    GPU kernels (TF32, different reductions) have their own tolerances. threads defaults to 1: PyTorch runs
    in the same process, and onnxruntime's spinning worker threads would starve it.
    """
    onnx_path = Path(onnx_path)
    model = onnx.load(str(onnx_path))
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"{onnx_path.name}: onnx.checker rejected the graph: {str(e).splitlines()[0]}") from None
    try:
        card = read_card(model)
        validate_card(card, model)
    except CardError as e:
        raise ExportError(f"{onnx_path.name}: {e}") from None
    samples = np.asarray(samples)
    if len(samples) < min_samples:
        raise ExportError(f"{onnx_path.name}: parity needs at least {min_samples} real samples, got {len(samples)}")

    session = make_session(onnx_path, threads or 1, providers=providers)
    module = graph_module(copy.deepcopy(net).cpu(), card)
    axis = _decision_axis(card)
    assert card.io is not None
    checks: list[OutputCheck] = []
    scores: dict[str, dict] = {}
    tokens = isinstance(card.input, TokenInput)
    by_length = token_lengths(samples) if tokens else {0: samples}
    for steps, proven in by_length.items():
        for bs in batch_sizes:
            per_output = {name: OutputCheck(bs, name, steps=steps) for name in card.io.graph_outputs}
            firsts: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
            for start in range(0, len(proven), bs):
                got, want = _outputs(session, module, card, proven[start:start + bs])
                for i, (name, g, w) in enumerate(zip(card.io.graph_outputs, got, want)):
                    _compare(per_output[name], g, w, axis if i == 0 else None, tie_tol, tolerance, start)
                firsts[0].append(got[0])
                firsts[1].append(want[0])
            checks.extend(per_output.values())
            if labels is not None and bs == max(batch_sizes) and proven is samples:
                for side, outs in zip(("onnx", "torch"), firsts):
                    scores[side] = asdict(task_score(card, np.concatenate(outs), np.asarray(labels)))

    with open(onnx_path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()  # the proof is about exactly these bytes
    report = ParityReport(model=onnx_path.name, sha256=digest, task=card.task,
                          exporter=card.exporter, opset=card.opset, samples=len(samples),
                          batch_sizes=list(batch_sizes), atol=tolerance.atol, rtol=tolerance.rtol,
                          range_rtol=tolerance.range_rtol,
                          providers=list(session.get_providers()), checks=checks, scores=scores,
                          versions=Versions.current().model_dump(), lengths=sorted(by_length) if tokens else [])
    if not report.passed:
        raise ParityError(report)
    return report
