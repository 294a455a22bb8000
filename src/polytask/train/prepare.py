"""From a run specification to tensors: load the splits, fit (or reuse) the preprocessor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from polytask.config import RunSpec
from polytask.data import progress
from polytask.data.preprocess import Preprocessor
from polytask.data.tabular import load_splits
from polytask.features import Features
from polytask.tasks import Task, output_columns


@dataclass
class SplitTensors:
    features: Features
    labels: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return len(self.features)


@dataclass
class Prepared:
    preprocessor: Preprocessor
    tasks: list[Task]
    splits: dict[str, SplitTensors]


def prepare(spec: RunSpec, preprocessor_state: dict[str, Any] | None = None) -> Prepared:
    """Read the data the spec names and turn every split into tensors."""
    frames = load_splits(spec.data)
    if preprocessor_state is None:
        image = spec.model.encoder.name == "cnn"
        with progress.step(f"fitting the preprocessor on {len(frames.train):,} rows"):
            preprocessor = Preprocessor.fit(frames.train, spec.data, spec.tasks, image=image)
    else:
        preprocessor = Preprocessor(preprocessor_state)
    tasks = preprocessor.build_tasks(spec.tasks)
    output_columns(tasks)  # two tasks' prediction columns must not share a name
    splits = {}
    for name, frame in (("train", frames.train), ("valid", frames.valid), ("test", frames.test)):
        if frame is not None and len(frame):
            with progress.step(f"encoding the {name} rows ({len(frame):,})"):
                splits[name] = SplitTensors(
                    preprocessor.transform(frame), preprocessor.encode_labels(frame, tasks)
                )
    return Prepared(preprocessor, tasks, splits)
