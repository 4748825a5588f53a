"""Minibatch iterators: the language-model partitions (text_batches) and, re-exported from models.data.order,
the epoch order every image path shares (epoch_order) and batches over in-memory tensors (tensor_batches).

Datasets that sit in memory as tensors batch by indexing: no DataLoader workers, collation or pinned-memory round
trips (file datasets too large for memory stream through models.data.files, in the same order). Randomness comes
only from the `generator` passed in, so runs are reproducible.
"""
from __future__ import annotations

from typing import Iterator, Literal

import torch

from models.data.base import DataError
from models.data.order import _randint, _randperm, batch_bounds, epoch_order, tensor_batches  # noqa: F401 (re-exported)

Partition = Literal["random", "sequential"]


def text_batches(
    tokens: torch.Tensor,
    batch_size: int,
    num_steps: int,
    partition: Partition = "random",
    generator: torch.Generator | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """D2L's language-model minibatches: yields X, Y int64 (batch_size, num_steps) with Y = X shifted by one token.

    random: a random offset in [0, num_steps), then non-overlapping subsequences in random order; neighbouring
      batches are unrelated, so the hidden state is reset per batch.
    sequential: a random offset in [0, num_steps], then the stream is cut into `batch_size` rows read left to
      right, so row b of batch i+1 continues row b of batch i (the hidden state can be carried over).
    """
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be 1-D (L,), got shape {tuple(tokens.shape)}")
    if partition == "random":
        corpus = tokens[_randint(num_steps, generator) :]
        num_subseqs = (len(corpus) - 1) // num_steps
        num_batches = num_subseqs // batch_size
    elif partition == "sequential":
        corpus = tokens[_randint(num_steps + 1, generator) :]
        num_batches = ((len(corpus) - 1) // batch_size) // num_steps
    else:
        raise ValueError(f"partition must be 'random' or 'sequential', got {partition!r}")
    if num_batches < 1:
        raise DataError(
            f"text corpus: {len(tokens)} tokens is too short for one batch of "
            f"batch_size {batch_size} x num_steps {num_steps} (+1 for the shifted targets)"
        )
    steps = torch.arange(num_steps, device=tokens.device)  # (T,)
    if partition == "random":
        starts = _randperm(num_subseqs, generator).to(tokens.device) * num_steps  # (S,) subsequence starts
        for i in range(num_batches):
            idx = starts[i * batch_size : (i + 1) * batch_size, None] + steps  # (B, T)
            yield corpus[idx], corpus[idx + 1]
    else:
        num_tokens = ((len(corpus) - 1) // batch_size) * batch_size
        xs = corpus[:num_tokens].reshape(batch_size, -1)  # (B, L/B)
        ys = corpus[1 : num_tokens + 1].reshape(batch_size, -1)  # (B, L/B)
        for i in range(0, num_batches * num_steps, num_steps):
            yield xs[:, i : i + num_steps], ys[:, i : i + num_steps]
