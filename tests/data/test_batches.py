"""text_batches (the course's random and sequential partitioning) and tensor_batches (incl. DDP sharding)."""
from __future__ import annotations

import pytest
import torch

from models.data import DataError, tensor_batches, text_batches


@pytest.mark.parametrize("partition", ["random", "sequential"])
def test_y_is_x_shifted_by_one(partition):
    tokens = torch.arange(100)
    batches = list(text_batches(tokens, 3, 5, partition, torch.Generator().manual_seed(0)))
    assert batches
    for x, y in batches:
        assert x.shape == (3, 5) and y.shape == (3, 5) and x.dtype == torch.int64
        assert torch.equal(y, x + 1)  # tokens are positions, so "shifted by one" is "+1"
        assert torch.equal(x[:, 1:], x[:, :-1] + 1)  # contiguous subsequences


def test_random_partition_covers_disjoint_subsequences():
    tokens = torch.arange(1000)
    starts = [x[:, 0] for x, _ in text_batches(tokens, 4, 10, "random", torch.Generator().manual_seed(1))]
    starts = torch.cat(starts)
    assert len(starts.unique()) == len(starts)  # no subsequence twice
    assert len(set((starts % 10).tolist())) == 1  # one offset per epoch
    assert len(starts) == ((1000 - int(starts[0] % 10) - 1) // 10) // 4 * 4


def test_sequential_partition_continues_rows():
    tokens = torch.arange(1000)
    batches = list(text_batches(tokens, 4, 10, "sequential", torch.Generator().manual_seed(2)))
    for (x0, _), (x1, _) in zip(batches, batches[1:]):
        assert torch.equal(x1[:, 0], x0[:, -1] + 1)  # row b of batch i+1 continues row b of batch i


def test_partition_is_seeded():
    tokens = torch.arange(500)
    a = [x for x, _ in text_batches(tokens, 2, 7, "random", torch.Generator().manual_seed(3))]
    b = [x for x, _ in text_batches(tokens, 2, 7, "random", torch.Generator().manual_seed(3))]
    assert all(torch.equal(p, q) for p, q in zip(a, b))


def test_text_too_short():
    with pytest.raises(DataError, match="too short"):
        list(text_batches(torch.arange(20), 4, 10, "random"))


def test_tensor_batches_cover_everything_once():
    x, y = torch.arange(23).view(23, 1).float(), torch.arange(23)
    seen = []
    for xb, yb in tensor_batches(x, y, 5, shuffle=True, generator=torch.Generator().manual_seed(0)):
        assert torch.equal(xb[:, 0].long(), yb)
        seen += yb.tolist()
    assert sorted(seen) == list(range(23)) and seen != list(range(23))
    sizes = [len(yb) for _, yb in tensor_batches(x, y, 5, shuffle=False, drop_last=True)]
    assert sizes == [5, 5, 5, 5]
    assert [yb.tolist() for _, yb in tensor_batches(x, y, 10, shuffle=False)][-1] == [20, 21, 22]


def test_tensor_batches_shard_disjoint_equal():
    x, y = torch.zeros(103, 2), torch.arange(103)
    shards = []
    for rank in range(4):
        g = torch.Generator().manual_seed(9)  # same seed on every rank
        shards.append(torch.cat([yb for _, yb in tensor_batches(x, y, 8, True, g, rank=rank, world_size=4)]))
    assert all(len(s) == 25 for s in shards)
    together = torch.cat(shards)
    assert len(together.unique()) == 100  # disjoint
    with pytest.raises(ValueError, match="rank"):
        next(tensor_batches(x, y, 8, rank=4, world_size=4))
