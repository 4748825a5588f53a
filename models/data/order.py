"""Epoch order and batches by indexing over in-memory tensors: pure tensor code (no dataset types), shared by
models.data.base (in-memory Samples), models.data.batches and the streamed file datasets (models.data.files).
"""
from __future__ import annotations

from typing import Iterator

import torch


def _randint(high: int, generator: torch.Generator | None) -> int:
    """A random int in [0, high) drawn from `generator` (on whatever device it lives)."""
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(high, (1,), generator=generator, device=device).item())


def _randperm(n: int, generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else "cpu"
    return torch.randperm(n, generator=generator, device=device).cpu()


def epoch_order(n: int, shuffle: bool = True, generator: torch.Generator | None = None, rank: int = 0,
                world_size: int = 1) -> torch.Tensor:
    """The positions one rank visits in one epoch, in order: int64 (N // world_size,) on the CPU.

    All ranks draw the same permutation from identically seeded generators (seed x epoch), cut it to a multiple of
    world_size and rank r takes every world_size-th position from r on: DistributedSampler(drop_last=True)
    semantics, so the shards are disjoint, equally long (ranks step in lockstep) and together cover every sample
    exactly once when world_size divides N (else the < world_size positions past the cut wait for another epoch,
    a different few each epoch). Every path that batches (tensors in memory, streamed files, the decode cache)
    draws its order here, so they agree batch for batch.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} out of range for world_size {world_size}")
    order = _randperm(n, generator) if shuffle else torch.arange(n)  # (N,) CPU
    if world_size > 1:
        order = order[: n - n % world_size][rank::world_size]  # (N // world_size,)
    return order


def batch_bounds(n: int, batch_size: int, drop_last: bool = False) -> range:
    """Start offsets of the batches cut from n positions."""
    stop = n - n % batch_size if drop_last else n
    return range(0, stop, batch_size)


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
    order = epoch_order(len(x), shuffle, generator, rank, world_size).to(x.device)
    for start in batch_bounds(len(order), batch_size, drop_last):
        idx = order[start : start + batch_size]  # (B,)
        yield x[idx], y[idx if y.device == x.device else idx.to(y.device)]
