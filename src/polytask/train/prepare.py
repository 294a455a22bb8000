"""From a run specification to tensors: load the splits, fit (or reuse) the preprocessor."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import pandas as pd
import torch

from polytask import __version__
from polytask.config import RunSpec
from polytask.data import cache, progress
from polytask.data.preprocess import Preprocessor
from polytask.data.tabular import load_run_splits
from polytask.data.weights import encode_weights, weight_columns
from polytask.errors import PolytaskWarning
from polytask.features import Features
from polytask.tasks import Task, output_columns
from polytask.train.distributed import World


@dataclass
class SplitTensors:
    features: Features
    labels: dict[str, torch.Tensor]
    # sample weights [N] of the tasks that have them (data.weight)
    weights: dict[str, torch.Tensor] = field(default_factory=dict)

    def take(self, rows: torch.Tensor) -> SplitTensors:
        """The rows ``rows`` of every tensor (a batch)."""
        return SplitTensors(
            self.features.take(rows),
            {name: values[rows] for name, values in self.labels.items()},
            {name: values[rows] for name, values in self.weights.items()},
        )

    def __len__(self) -> int:
        return len(self.features)

    def head(self, rows: int) -> SplitTensors:
        return self.take(torch.arange(min(rows, len(self))))

    def num_batches(self, batch_size: int, seed: int, epoch: int, world: World) -> int:
        return math.ceil(len(self) / batch_size)

    def batches(
        self, batch_size: int, seed: int, epoch: int, world: World
    ) -> Iterator[tuple[SplitTensors, int]]:
        """This rank's part of each global batch of ``epoch`` and how many of its rows count
        (:meth:`World.shard`): the rows in an order drawn from the seed and the epoch."""
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(len(self), generator=generator)
        for start in range(0, len(self), batch_size):
            rows, counted = world.shard(order[start : start + batch_size])
            yield self.take(rows), counted


class TrainRows(Protocol):
    """Where an epoch's training batches come from: tensors in memory (:class:`SplitTensors`)
    or a streamed Parquet table (:class:`polytask.train.stream.StreamedSplit`)."""

    def __len__(self) -> int: ...

    def head(self, rows: int) -> SplitTensors: ...

    def num_batches(self, batch_size: int, seed: int, epoch: int, world: World) -> int: ...

    def batches(
        self, batch_size: int, seed: int, epoch: int, world: World
    ) -> Iterator[tuple[SplitTensors, int]]: ...


@dataclass
class Prepared:
    preprocessor: Preprocessor
    tasks: list[Task]
    # the splits held in memory (every split, unless the training rows are streamed)
    splits: dict[str, SplitTensors]
    streamed: TrainRows | None = None

    def train_rows(self) -> TrainRows:
        return self.streamed if self.streamed is not None else self.splits["train"]


def prepare(
    spec: RunSpec, preprocessor_state: dict[str, Any] | None = None, world: World | None = None
) -> Prepared:
    """Read the data the spec names and turn every split into tensors; from the tensor cache
    (:mod:`polytask.data.cache`) where these files were encoded this way before. With
    ``data.stream`` the training rows are streamed instead (``world``: the processes sharing
    the preprocessor's fit)."""
    if spec.data.stream is not None:
        from polytask.train.stream import prepare_streamed

        return prepare_streamed(spec, preprocessor_state, world or World())
    image = spec.model.encoder.name == "cnn"
    key = cache.cache_key(
        spec.data,
        spec.tasks,
        image=image,
        preprocessor_state=preprocessor_state,
        version=__version__,
    )
    if key is not None:
        with progress.step("reading the encoded tensors from the cache"):
            stored = cache.load(key)
        if stored is not None:
            return _from_cache(spec, *stored)
    with warnings.catch_warnings(record=True) as issued:
        warnings.simplefilter("always")
        prepared = _encode(spec, preprocessor_state, image)
    for warning in issued:  # shown as they would have been, and kept for a cache hit
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    if key is not None:
        tensors, metadata = _to_cache(prepared)
        shown = [str(w.message) for w in issued if issubclass(w.category, PolytaskWarning)]
        metadata["warnings"] = json.dumps(shown)
        cache.store(key, tensors, metadata)
    return prepared


def _encode(spec: RunSpec, preprocessor_state: dict[str, Any] | None, image: bool) -> Prepared:
    """Read, fit (or reuse) the preprocessor and encode every split."""
    frames = load_run_splits(spec)
    if preprocessor_state is None:
        with progress.step(f"fitting the preprocessor on {len(frames.train):,} rows"):
            preprocessor = Preprocessor.fit(frames.train, spec.data, spec.tasks, image=image)
    else:
        preprocessor = Preprocessor(preprocessor_state)
        # tasks the fitted inputs were not made with (adapters for a new task on a trained
        # run): their label encodings are fitted here, the inputs' stay as they are
        new = [task for task in spec.tasks if task.name not in preprocessor.state["tasks"]]
        if new:
            preprocessor = preprocessor.with_tasks(frames.train, new)
    tasks = preprocessor.build_tasks(spec.tasks)
    output_columns(tasks)  # two tasks' prediction columns must not share a name
    splits = {}
    weighted = weight_columns(spec)
    for name, frame in (("train", frames.train), ("valid", frames.valid), ("test", frames.test)):
        if frame is not None and len(frame):
            with progress.step(f"encoding the {name} rows ({len(frame):,})"):
                splits[name] = encode_split(frame, preprocessor, tasks, weighted)
    return Prepared(preprocessor, tasks, splits)


def encode_split(
    frame: pd.DataFrame, preprocessor: Preprocessor, tasks: list[Task], weighted: dict[str, str]
) -> SplitTensors:
    """Rows of a table as tensors: inputs, labels and the weighted tasks' sample weights."""
    labels = preprocessor.encode_labels(frame, tasks)
    weights = encode_weights(frame, weighted, labels)
    return SplitTensors(preprocessor.transform(frame), labels, weights)


def _to_cache(prepared: Prepared) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Flat tensors named ``split.part[.task]`` and the preprocessor state as metadata."""
    tensors: dict[str, torch.Tensor] = {}
    for split, part in prepared.splits.items():
        tensors[f"{split}.categorical"] = part.features.categorical
        tensors[f"{split}.numeric"] = part.features.numeric
        tensors.update({f"{split}.label.{task}": v for task, v in part.labels.items()})
        tensors.update({f"{split}.weight.{task}": v for task, v in part.weights.items()})
    return tensors, {"preprocessor": json.dumps(prepared.preprocessor.state)}


def _from_cache(
    spec: RunSpec, tensors: dict[str, torch.Tensor], metadata: dict[str, str]
) -> Prepared:
    """A cache entry back as what :func:`_encode` returned; its warnings issued again."""
    for message in json.loads(metadata.get("warnings", "[]")):
        warnings.warn(message, PolytaskWarning, stacklevel=3)
    preprocessor = Preprocessor(json.loads(metadata["preprocessor"]))
    tasks = preprocessor.build_tasks(spec.tasks)
    parts: dict[str, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        split, part, *task = name.split(".", 2)
        entry = parts.setdefault(split, {"label": {}, "weight": {}})
        if task:
            entry[part][task[0]] = tensor
        else:
            entry[part] = tensor
    splits = {
        split: SplitTensors(
            Features(entry["categorical"], entry["numeric"]), entry["label"], entry["weight"]
        )
        for split, entry in parts.items()
    }
    ordered = {name: splits[name] for name in ["train", "valid", "test"] if name in splits}
    return Prepared(preprocessor, tasks, ordered)
