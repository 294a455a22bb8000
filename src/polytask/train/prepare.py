"""From a run specification to tensors: load the splits, fit (or reuse) the preprocessor."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from polytask.config import RunSpec
from polytask.data import progress
from polytask.data.preprocess import Preprocessor
from polytask.data.tabular import load_run_splits
from polytask.data.weights import encode_weights, weight_columns
from polytask.features import Features
from polytask.tasks import Task, output_columns


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


@dataclass
class Prepared:
    preprocessor: Preprocessor
    tasks: list[Task]
    splits: dict[str, SplitTensors]


def prepare(spec: RunSpec, preprocessor_state: dict[str, Any] | None = None) -> Prepared:
    """Read the data the spec names and turn every split into tensors."""
    frames = load_run_splits(spec)
    if preprocessor_state is None:
        image = spec.model.encoder.name == "cnn"
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
                labels = preprocessor.encode_labels(frame, tasks)
                weights = encode_weights(frame, weighted, labels)
                splits[name] = SplitTensors(preprocessor.transform(frame), labels, weights)
    return Prepared(preprocessor, tasks, splits)
