"""Training rows streamed from a Parquet table (``data.stream``), shuffled in a bounded buffer.

Each epoch the table's row groups are dealt out to the ranks from the seed and the epoch
(:func:`polytask.data.stream.deal`); a rank reads its own row groups in record batches,
encodes each batch with the fitted preprocessor and adds it to a shuffle buffer of
``data.stream.buffer_rows`` rows. When the buffer is full it is permuted (from the seed, the
epoch and the rank), its first part goes out as batches and the rest (half a buffer) stays
to be mixed with the next rows; at the end of its rows the buffer is emptied the same way.
So a rank holds at most about a buffer and a few record batches of rows (one being read,
:data:`PREFETCH` read ahead by a background thread while the model trains, and the one
added), whatever the table's size, and every row is trained on exactly once per epoch.

A rank's batch is its part of the global batch (``train.batch_size`` split across the ranks
as the in-memory path splits it). Ranks with fewer rows left run the remaining steps on a
row that counts for nothing, so that every rank takes part in every step's collectives.

Validation and test rows are not streamed: ``data.valid`` / ``data.test`` are read in memory
(and none are carved out of the streamed table).
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator
from queue import Empty, Full, Queue
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import torch

from polytask.config import RunSpec, StreamSpec
from polytask.data.preprocess import Preprocessor
from polytask.data.stream import ParquetSource, RowGroup, deal
from polytask.data.stream_fit import fit_streamed
from polytask.data.tabular import read_labelled
from polytask.data.weights import weight_columns
from polytask.errors import ConfigError, DataError
from polytask.features import Features
from polytask.tasks import Task, output_columns
from polytask.train.distributed import World
from polytask.train.prepare import Prepared, SplitTensors, encode_split

T = TypeVar("T")


# Record batches read and encoded ahead of the training step, by a thread of their own.
PREFETCH = 2
_DONE = object()


def prefetched(items: Iterator[T], depth: int = PREFETCH) -> Iterator[T]:
    """``items`` in order, produced by a background thread at most ``depth`` ahead: reading
    Parquet and encoding rows (pyarrow, numpy and torch release the GIL for their work)
    overlaps with the training step. An error in the thread is raised here; closing this
    generator early stops the thread."""
    queue: Queue[Any] = Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        queue.put(item, timeout=0.1)
                        break
                    except Full:
                        continue
                if stop.is_set():
                    return
            queue.put(_DONE)
        except BaseException as error:  # handed to the consumer, which raises it
            queue.put(error)

    thread = threading.Thread(target=produce, name="polytask-stream", daemon=True)
    thread.start()
    try:
        while True:
            item = queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            with contextlib.suppress(Empty):
                queue.get(timeout=0.1)
        thread.join()


def local_batch(batch_size: int, world: World) -> int:
    """This rank's part of a global batch (the sizes :meth:`World.shard` gives)."""
    return batch_size // world.size + (1 if world.rank < batch_size % world.size else 0)


def concat(parts: list[SplitTensors]) -> SplitTensors:
    if len(parts) == 1:
        return parts[0]
    return SplitTensors(
        Features(
            torch.cat([p.features.categorical for p in parts]),
            torch.cat([p.features.numeric for p in parts]),
        ),
        {name: torch.cat([p.labels[name] for p in parts]) for name in parts[0].labels},
        {name: torch.cat([p.weights[name] for p in parts]) for name in parts[0].weights},
    )


class StreamedSplit:
    """The training rows of a Parquet table, read and encoded batch by batch each epoch."""

    def __init__(
        self,
        source: ParquetSource,
        preprocessor: Preprocessor,
        tasks: list[Task],
        weighted: dict[str, str],
        stream: StreamSpec,
    ) -> None:
        self.source, self.preprocessor, self.tasks = source, preprocessor, tasks
        self.weighted, self.stream = weighted, stream
        needed = set(preprocessor.input_columns) | set(weighted.values())
        needed |= {column for task in tasks for column in task.spec.columns}
        self.columns = [column for column in source.columns if column in needed]

    def __len__(self) -> int:
        return len(self.source)

    def _encoded(self, groups: list[RowGroup]) -> Iterator[SplitTensors]:
        frames = self.source.frames(groups, self.stream.batch_rows, self.columns)
        for frame, group in frames:
            try:
                yield encode_split(frame, self.preprocessor, self.tasks, self.weighted)
            except DataError as error:
                raise DataError(f"{group.path}: {error}") from None

    def head(self, rows: int) -> SplitTensors:
        """The table's first ``rows`` rows (or fewer), encoded."""
        parts, held = [], 0
        for part in self._encoded(self.source.row_groups):
            parts.append(part)
            held += len(part)
            if held >= rows:
                break
        return concat(parts).head(rows)

    def num_batches(self, batch_size: int, seed: int, epoch: int, world: World) -> int:
        """Steps of ``epoch``: the most any rank needs for its share of the row groups."""
        return self._steps(deal(self.source.row_groups, world.size, seed, epoch), batch_size, world)

    def _steps(self, shares: list[list[RowGroup]], batch_size: int, world: World) -> int:
        if batch_size < world.size:  # a rank would read no row of any batch
            raise ConfigError(
                f"train.batch_size ({batch_size}) must be at least the number of processes "
                f"({world.size}) to stream a table"
            )
        steps = 0
        for rank, share in enumerate(shares):
            size = local_batch(batch_size, World(rank=rank, size=world.size))
            steps = max(steps, math.ceil(sum(g.rows for g in share) / size))
        return steps

    def batches(
        self, batch_size: int, seed: int, epoch: int, world: World
    ) -> Iterator[tuple[SplitTensors, int]]:
        """This rank's batches of ``epoch`` and how many of each one's rows count; as many
        steps on every rank."""
        shares = deal(self.source.row_groups, world.size, seed, epoch)
        steps = self._steps(shares, batch_size, world)
        size = local_batch(batch_size, world)
        state = np.random.SeedSequence([seed, epoch, world.rank]).generate_state(2)
        generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        done = 0
        filler: SplitTensors | None = None
        for batch in self._shuffled(shares[world.rank], size, generator):
            filler = batch
            done += 1
            yield batch, len(batch)
        assert filler is not None  # every rank is dealt a row group with rows
        empty = filler.head(1)
        for _ in range(steps - done):
            yield empty, 0

    def _shuffled(
        self, groups: list[RowGroup], size: int, generator: torch.Generator
    ) -> Iterator[SplitTensors]:
        """Batches of ``size`` rows of ``groups``, shuffled within the buffer."""
        capacity = self.stream.buffer_rows
        parts: list[SplitTensors] = []
        held = 0
        for part in prefetched(self._encoded(groups)):
            parts.append(part)
            held += len(part)
            if held < capacity:
                continue
            buffer = concat(parts)
            order = torch.randperm(len(buffer), generator=generator)
            out = (len(buffer) - capacity // 2) // size * size
            for start in range(0, out, size):
                yield buffer.take(order[start : start + size])
            parts = [buffer.take(order[out:])]
            held = len(buffer) - out
        if held:
            buffer = concat(parts)
            order = torch.randperm(len(buffer), generator=generator)
            for start in range(0, len(buffer), size):
                yield buffer.take(order[start : start + size])


def prepare_streamed(
    spec: RunSpec, preprocessor_state: dict[str, Any] | None, world: World
) -> Prepared:
    """The streamed training rows, the fitted (or given) preprocessor, and the valid and
    test files in memory. The preprocessor is fitted by rank 0 alone and shared."""
    assert spec.data.train is not None and spec.data.stream is not None
    stream = spec.data.stream
    source = ParquetSource(spec.data.train)
    if preprocessor_state is None:

        def fit() -> dict[str, Any]:
            image = spec.model.encoder.name == "cnn"
            fitted = fit_streamed(
                source,
                spec.data,
                spec.tasks,
                image=image,
                batch_rows=stream.batch_rows,
                sample_rows=stream.sample_rows,
                seed=spec.train.seed,
            )
            return fitted.state

        preprocessor_state = world.from_main_object(fit)
    preprocessor = Preprocessor(preprocessor_state)
    new = [task.name for task in spec.tasks if task.name not in preprocessor.state["tasks"]]
    if new:  # label encodings are fitted in the streaming pass, with the inputs
        raise ConfigError(
            f"data.stream: task '{new[0]}' is new to the inputs this run starts from (its "
            "backbone or train.init); a streamed table fits label encodings only together "
            "with the inputs: train these tasks from a table in memory"
        )
    tasks = preprocessor.build_tasks(spec.tasks)
    output_columns(tasks)
    weighted = weight_columns(spec)
    splits = {}
    for name, path in (("valid", spec.data.valid), ("test", spec.data.test)):
        if path is not None:
            frame: pd.DataFrame = read_labelled(path, spec.data, spec.target_columns)
            splits[name] = encode_split(frame, preprocessor, tasks, weighted)
    streamed = StreamedSplit(source, preprocessor, tasks, weighted, stream)
    return Prepared(preprocessor, tasks, splits, streamed)
