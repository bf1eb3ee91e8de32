"""micro/buffer.py: batches and the FIFO replay ring."""

import dataclasses

import torch

from micro.buffer import Batch, ReplayBuffer

B = 9


def make_batch(seed):
    g = torch.Generator().manual_seed(seed)
    return Batch(*(torch.randn(B, w, generator=g) for w in (5, 2, 5, 1)), torch.zeros(B, 1))


def rows(start, n):
    x = torch.arange(start, start + n, dtype=torch.float32)[:, None]
    return Batch(x.repeat(1, 2), x, x + 0.5, x, x)


def test_fifo_ring_keeps_the_newest_rows():
    buf = ReplayBuffer(5, 2, 1, torch.device("cpu"))
    buf.add(rows(0, 3))
    assert (buf.size, buf.ptr) == (3, 3)
    buf.add(rows(3, 4))  # 0..6 written into 5 slots: 5, 6 overwrite 0, 1
    assert (buf.size, buf.ptr) == (5, 2)
    assert buf.storage.actions[:, 0].tolist() == [5, 6, 2, 3, 4]
    assert buf.storage.next_observations[:, 0].tolist() == [5.5, 6.5, 2.5, 3.5, 4.5]
    buf.add(rows(10, 12))  # more than the capacity: only the newest 5 survive
    assert sorted(buf.all().actions[:, 0].tolist()) == [17, 18, 19, 20, 21]


def test_sample_only_from_filled_rows():
    buf = ReplayBuffer(100, 2, 1, torch.device("cpu"))
    buf.add(rows(0, 7))
    s = buf.sample(500, generator=torch.Generator().manual_seed(0))
    assert set(s.actions[:, 0].tolist()) == set(range(7))
    torch.testing.assert_close(s.next_observations[:, 0], s.actions[:, 0] + 0.5)  # rows stay whole


def test_batch_cat_keeps_order():
    a, b = make_batch(1), make_batch(2)
    c = Batch.cat(a, b)
    assert len(c) == 2 * B
    for f in dataclasses.fields(Batch):
        torch.testing.assert_close(getattr(c, f.name)[B:], getattr(b, f.name))
