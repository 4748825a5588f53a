"""Minibatch iterators over in-memory tensors.

Our datasets already sit in memory as tensors, so batching is just indexing: no DataLoader workers, collation or
pinned-memory round trips. Randomness comes only from the `generator` passed in, so runs are reproducible.
"""
from __future__ import annotations

from typing import Iterator, Literal

import torch

from models.data.base import DataError

Partition = Literal["random", "sequential"]


def _randint(high: int, generator: torch.Generator | None) -> int:
    """A random int in [0, high) drawn from `generator` (on whatever device it lives)."""
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(high, (1,), generator=generator, device=device).item())


def _randperm(n: int, generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else "cpu"
    return torch.randperm(n, generator=generator, device=device).cpu()


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


def tensor_batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    shuffle: bool = True,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (x[idx], y[idx]) minibatches over the first dimension.

    For DistributedDataParallel pass `rank`/`world_size` and a generator seeded identically on every rank (e.g.
    seed + epoch): all ranks draw the same permutation, cut to a multiple of world_size, and rank r takes every
    world_size-th index from r on, so the shards are disjoint and equally long (ranks step in lockstep).
    """
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} out of range for world_size {world_size}")
    n = len(x)
    order = _randperm(n, generator) if shuffle else torch.arange(n)  # (N,) CPU
    if world_size > 1:
        order = order[: n - n % world_size][rank::world_size]  # (N // world_size,)
    order = order.to(x.device)
    stop = len(order) - len(order) % batch_size if drop_last else len(order)
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]  # (B,)
        yield x[idx], y[idx if y.device == x.device else idx.to(y.device)]
