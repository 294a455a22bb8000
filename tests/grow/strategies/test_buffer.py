"""Reservoir sampling keeps each of n offered rows with probability k / n, however the rows
arrive (a statistical test with a fixed seed), and the buffer survives a save and load."""

from __future__ import annotations

import torch

from polytask.grow.strategies._buffer import Reservoir, TaskBuffers
from tests.grow.conftest import tiny_rows


def test_each_offered_row_is_kept_with_probability_k_over_n():
    n, k, trials = 50, 10, 4000
    rows = tiny_rows(n, {"t": torch.arange(n, dtype=torch.float32)})
    chunks = [7, 13, 1, 29]  # rows arrive in experiences of different sizes
    generator = torch.Generator().manual_seed(0)
    counts = torch.zeros(n)
    for _ in range(trials):
        buffer = Reservoir("t", k)
        start = 0
        for size in chunks:
            buffer.offer(rows.take(torch.arange(start, start + size)), generator)
            start += size
        assert buffer.rows is not None and len(buffer.rows) == k
        kept = buffer.rows.labels["t"].long()
        assert len(set(kept.tolist())) == k  # no row twice
        counts[kept] += 1
    frequency = counts / trials
    sigma = (k / n * (1 - k / n) / trials) ** 0.5
    assert (frequency - k / n).abs().max() < 4.5 * sigma
    # and the whole distribution is uniform: chi-square over the rows, 49 degrees of freedom
    expected = trials * k / n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 85.0  # the 99.9th percentile of chi-square(49) is about 85.4


def test_unlabelled_rows_are_not_kept_and_state_round_trips():
    labels = torch.tensor([1.0, float("nan"), 0.0, float("nan")])
    buffers = TaskBuffers(3, "buffer.")
    buffers.offer(tiny_rows(4, {"t": labels}), ["t"], torch.Generator().manual_seed(1))
    kept = buffers.buffers["t"]
    assert kept.seen == 2 and kept.rows is not None and len(kept.rows) == 2
    loaded = TaskBuffers(3, "buffer.")
    loaded.load_state(buffers.state())
    assert loaded.buffers["t"].seen == 2
    assert torch.equal(loaded.buffers["t"].rows.features.numeric, kept.rows.features.numeric)
