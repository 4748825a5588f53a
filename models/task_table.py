"""The one table of what specserve can do: each (task, input kind) pair it trains, exports and serves.

Spec validation refuses a pair that is not here (a located SpecError at load), the trainer's task classes and the
datasets register under these pairs, the model card accepts only these pairs, and the service maps each pair to
the one endpoint that answers it. Adding a pair means adding a row here and a task class for it; nothing else
lists pairs. Torch-free: the serving side reads this table too.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskKind:
    task: str  # spec `task`
    input: str  # spec input kind: image | tokens | series | features
    endpoint: str  # the HTTP endpoint that serves such a model
    does: str  # one line for documentation and messages


TASK_KINDS: tuple[TaskKind, ...] = (
    TaskKind("classification", "image", "classify", "images → top-k labels with probabilities"),
    TaskKind("classification", "tokens", "classify_text", "a text → top-k labels with probabilities"),
    TaskKind("segmentation", "image", "segment", "an image → a class per pixel"),
    TaskKind("sequence", "tokens", "generate", "a text prefix → its continuation, one token at a time"),
    TaskKind("sequence", "series", "forecast", "a window of past values → the next values"),
    TaskKind("regression", "features", "predict", "a feature vector → real-valued outputs"),
)
TASKS: tuple[str, ...] = tuple(dict.fromkeys(k.task for k in TASK_KINDS))
ENDPOINTS: tuple[str, ...] = tuple(k.endpoint for k in TASK_KINDS)


def task_kind(task: str, input_kind: str) -> TaskKind | None:
    """The row of (task, input kind), or None when specserve does not do that pair."""
    return next((k for k in TASK_KINDS if (k.task, k.input) == (task, input_kind)), None)


def inputs_of(task: str) -> tuple[str, ...]:
    return tuple(k.input for k in TASK_KINDS if k.task == task)


def for_endpoint(endpoint: str) -> TaskKind:
    return next(k for k in TASK_KINDS if k.endpoint == endpoint)


def refusal(task: str, input_kind: str) -> str:
    """Why (task, input kind) is refused, naming what the task does take."""
    return f"task {task} takes {' or '.join(inputs_of(task))} input, not {input_kind}"
