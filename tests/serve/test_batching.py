"""The micro-batcher on its own (no model): results go back to the request that sent them,
batches respect their row limit without splitting requests, one bad payload fails only
itself, a full queue refuses at once, and stopping fails waiting requests cleanly."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from polytask.serve.batching import MicroBatcher, Overloaded


def squares(batches: list[list[int]]) -> Sequence[list[int] | BaseException]:
    """Per payload: its squares, or an error if it holds a negative number."""
    return [
        ValueError(f"negative in {payload}") if min(payload) < 0 else [v * v for v in payload]
        for payload in batches
    ]


def run(coroutine):  # a fresh loop per test; every test is bounded by wait_for below
    return asyncio.run(asyncio.wait_for(coroutine, timeout=10))


def test_concurrent_submits_each_get_their_own_results_in_few_batches():
    seen: list[int] = []

    def process(payloads: list[list[int]]):
        seen.append(sum(len(p) for p in payloads))
        return squares(payloads)

    async def main():
        batcher = MicroBatcher(process, size=len, window_ms=50, max_batch_rows=1000)
        await batcher.start()
        payloads = [[i, i + 100, i + 200][: 1 + i % 3] for i in range(20)]
        results = await asyncio.gather(*(batcher.submit(p) for p in payloads))
        stats = batcher.stats.as_dict()
        await batcher.stop()
        return payloads, results, stats

    payloads, results, stats = run(main())
    for payload, result in zip(payloads, results, strict=True):
        assert result == [v * v for v in payload]
    assert stats["requests"] == 20
    assert stats["rows"] == sum(len(p) for p in payloads)
    assert stats["batches"] == len(seen) < 20  # submitted together: batched together
    assert stats["pending_rows"] == 0


def test_batches_respect_max_rows_and_never_split_a_request():
    sizes: list[list[int]] = []

    def process(payloads: list[list[int]]):
        sizes.append([len(p) for p in payloads])
        return squares(payloads)

    async def main():
        batcher = MicroBatcher(process, size=len, window_ms=50, max_batch_rows=5)
        await batcher.start()
        payloads = [[1, 2]] * 7 + [[1] * 9]  # the last one alone exceeds the batch limit
        results = await asyncio.gather(*(batcher.submit(p) for p in payloads))
        await batcher.stop()
        return payloads, results

    payloads, results = run(main())
    assert results == [[v * v for v in p] for p in payloads]
    assert sorted(s for batch in sizes for s in batch) == sorted(len(p) for p in payloads)
    for batch in sizes:
        assert sum(batch) <= 5 or batch == [9]


def test_a_bad_payload_fails_only_itself_and_a_crash_fails_only_its_batch():
    calls = {"n": 0}

    def process(payloads: list[list[int]]):
        calls["n"] += 1
        if any(p == [13] for p in payloads):
            raise RuntimeError("bug")
        return squares(payloads)

    async def main():
        batcher = MicroBatcher(process, size=len, window_ms=30)
        await batcher.start()
        results = await asyncio.gather(
            batcher.submit([2]),
            batcher.submit([-1]),
            batcher.submit([3]),
            return_exceptions=True,
        )
        crashed = await asyncio.gather(batcher.submit([13]), return_exceptions=True)
        after = await batcher.submit([4])  # still serving
        await batcher.stop()
        return results, crashed, after

    results, crashed, after = run(main())
    assert results[0] == [4] and results[2] == [9]
    assert isinstance(results[1], ValueError)
    assert isinstance(crashed[0], RuntimeError)
    assert after == [16]


def test_full_queue_refuses_at_once_then_recovers():
    release = threading.Event()

    def slow(payloads: list[list[int]]):
        release.wait(timeout=5)
        return squares(payloads)

    async def main():
        batcher = MicroBatcher(slow, size=len, window_ms=0, max_batch_rows=2, max_pending_rows=4)
        await batcher.start()
        first = asyncio.ensure_future(batcher.submit([1, 1]))
        await asyncio.sleep(0.05)  # the worker holds the first batch
        waiting = [asyncio.ensure_future(batcher.submit([2, 2])) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="limit 4"):
            await batcher.submit([3])
        rejected = batcher.stats.rejected
        release.set()
        results = await asyncio.gather(first, *waiting)
        await batcher.stop()
        return rejected, results

    rejected, results = run(main())
    assert rejected == 1
    assert results == [[1, 1], [4, 4], [4, 4]]


def test_stop_fails_waiting_requests_and_later_submits():
    release = threading.Event()

    def slow(payloads: list[list[int]]):
        release.wait(timeout=5)
        return squares(payloads)

    async def main():
        batcher = MicroBatcher(slow, size=len, window_ms=0, max_batch_rows=1)
        await batcher.start()
        first = asyncio.ensure_future(batcher.submit([1]))
        await asyncio.sleep(0.05)
        queued = asyncio.ensure_future(batcher.submit([2]))
        await asyncio.sleep(0)
        release.set()
        await batcher.stop()
        outcomes = await asyncio.gather(first, queued, return_exceptions=True)
        with pytest.raises(Overloaded, match="not running"):
            await batcher.submit([3])
        return outcomes, batcher.running

    outcomes, running = run(main())
    assert not running
    assert all(isinstance(o, Overloaded) for o in outcomes[1:])
    assert isinstance(outcomes[0], Overloaded | list)


def test_options_are_checked():
    with pytest.raises(ValueError, match="window_ms"):
        MicroBatcher(squares, size=len, window_ms=-1)
    with pytest.raises(ValueError, match="max_batch_rows"):
        MicroBatcher(squares, size=len, max_batch_rows=0)
