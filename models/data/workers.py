"""DataLoader worker processes that decode (or read) whole batches for the file datasets (models.data.files).

A request is (indices, mode); a worker answers with one Fetched batch built in shared memory, so it reaches the
trainer without another copy. The same workers serve every pass (train epochs, evaluation) until `close()`, and
the order of requests is the caller's: workers never draw random numbers, nor touch the trainer's generators.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

LOAD_CHUNK = 64  # samples per worker request when decoding everything (memory path, cache building)
WORKERS_FROM = 256  # fewer files than this are decoded in the main process (starting workers costs more)


def default_workers() -> int:
    """Decoding processes: the CPUs this process may use, shared among the ranks of this machine, less one for the
    training loop itself; at least 1, at most 8."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(8, cpus // local - 1))


def note(message: str, about: str = "data") -> None:
    """A one-line remark on how the data is read, or on what else `about` names (main rank only)."""
    if os.environ.get("RANK", "0") == "0":
        print(f"{about}: {message}", file=sys.stderr, flush=True)


def alloc(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An empty tensor, in shared memory when made in a DataLoader worker (sent to the trainer without a copy,
    as torch's default_collate does)."""
    from torch.utils.data import get_worker_info

    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    proto = torch.empty(0, dtype=dtype)
    storage = proto._typed_storage()._new_shared(math.prod(shape), device=proto.device)
    return proto.new(storage).resize_(*shape)


@dataclass
class Fetched:
    """One request's result: x uint8 (B, C, H, W), y int64 labels (B,) or masks (B, H, W); `bad` (position in the
    batch, message) for files that failed; `crc` (B,) uint32 and `masks` uint8 when building the cache;
    `hist` (B, K) mask class counts; `repaired`: cached samples whose checksum failed, re-decoded from the files."""

    index: np.ndarray
    x: torch.Tensor | None = None
    y: torch.Tensor | None = None
    bad: list[tuple[int, str]] = field(default_factory=list)
    crc: np.ndarray | None = None
    masks: torch.Tensor | None = None
    hist: np.ndarray | None = None
    repaired: int = 0

    def pin_memory(self) -> "Fetched":
        """Page-locked copies of the batch, for non-blocking host→GPU copies (the DataLoader's pin thread calls
        this; it only knows tensors and containers otherwise)."""
        self.x = self.x.pin_memory() if self.x is not None else None
        self.y = self.y.pin_memory() if self.y is not None else None
        return self


class _FetchDataset(torch.utils.data.Dataset):
    """What DataLoader workers index: a request (indices, mode) gives one whole batch."""

    def __init__(self, source):
        self.source = source

    def __getitem__(self, request):
        index, mode = request
        return self.source.fetch(index, mode)


class _PlanSampler(torch.utils.data.Sampler):
    """Yields the requests of the current pass (set before each pass; read by the DataLoader in the trainer)."""

    def __init__(self):
        self.plan: list[tuple[np.ndarray, str]] = []

    def __iter__(self):
        return iter(self.plan)

    def __len__(self) -> int:
        return len(self.plan)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # a worker decodes with PIL; torch threads would only fight the trainer for cores


def _identity(batch):
    return batch


class Pipeline:
    """Worker processes running `source.fetch` on requests, alive from the first pass to `close()` (one set of
    workers for train and test passes alike). workers=0 fetches in the calling process."""

    def __init__(self, source, workers: int, prefetch: int = 2):
        self.source, self.workers, self.prefetch = source, workers, prefetch
        self.pin = False
        self._loader = None
        self._sampler = _PlanSampler()
        self._pass = 0

    def _get_loader(self):
        if self._loader is None or self._loader.pin_memory != self.pin:
            self.close()
            from torch.utils.data import DataLoader

            self._loader = DataLoader(_FetchDataset(self.source), batch_size=None, sampler=self._sampler,
                                      num_workers=self.workers, persistent_workers=True, prefetch_factor=self.prefetch,
                                      pin_memory=self.pin, worker_init_fn=_worker_init, collate_fn=_identity,
                                      generator=torch.Generator().manual_seed(0))  # never the global RNG
        return self._loader

    def run(self, requests: list[tuple[np.ndarray, str]]) -> Iterator[Fetched]:
        """The fetched requests, in order. Starting another pass ends this one."""
        self._pass += 1
        mine = self._pass
        if self.workers == 0 or not requests:
            for index, mode in requests:
                fetched = self.source.fetch(index, mode)
                yield fetched.pin_memory() if self.pin else fetched
            return
        loader = self._get_loader()
        self._sampler.plan = list(requests)
        for fetched in loader:
            if self._pass != mine:
                raise RuntimeError("a pass over streamed data went on after another pass started")
            yield fetched

    def __del__(self):
        # stop the workers while the loader's queues still exist: left to the DataLoader's own __del__ (run in
        # whatever order the garbage collector picks) a worker can miss its stop signal and linger 5 s
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def close(self) -> None:
        """Stop the workers (a later pass starts new ones)."""
        loader, self._loader = self._loader, None
        iterator = getattr(loader, "_iterator", None) if loader is not None else None
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
