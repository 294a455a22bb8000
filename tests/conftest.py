"""Shared fixtures: a small synthetic multi-task table, run specifications and trained runs.

Every test builds its own data; nothing outside the package (no ../shared) is read.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

# Keep the suite fast and repeatable on small CPU machines.
torch.set_num_threads(1)
# No test reads or writes the user's tensor cache (polytask.data.cache); the cache's own tests
# turn it on in a temporary folder.
os.environ["POLYTASK_TENSOR_CACHE"] = "off"

CATEGORICAL = ["color", "city"]
NUMERIC = ["x1", "x2", "count"]
MULTILABEL = ["tag_a", "tag_b"]
TARGETS = ["clicked", "segment", "spend", *MULTILABEL]
SEGMENTS = ["high", "low", "mid"]


def make_table(n: int = 240, seed: int = 0, missing_share: float = 0.15) -> pd.DataFrame:
    """A table with categorical and numeric features and four kinds of target.

    Targets: ``clicked`` (binary 0/1), ``segment`` (multiclass, three names), ``spend``
    (regression, on a scale far from 0/1 so that standardisation matters) and ``tag_a`` /
    ``tag_b`` (multilabel 0/1). Each target has about ``missing_share`` NaN labels. Every
    target depends on the features, so a model can learn something.
    """
    rng = np.random.default_rng(seed)
    color = rng.choice(["red", "green", "blue", "black"], size=n)
    city = rng.choice(["paris", "rome", "oslo"], size=n, p=[0.5, 0.3, 0.2])
    x1 = rng.normal(size=n)
    x2 = rng.normal(loc=3.0, scale=2.0, size=n)
    count = rng.integers(0, 10, size=n)
    signal = x1 + 0.5 * (color == "red") - 0.5 * (city == "oslo") + 0.3 * rng.normal(size=n)
    clicked = (signal + 0.5 * rng.normal(size=n) > 0).astype(float)
    segment = np.where(signal < -0.5, "low", np.where(signal < 0.5, "mid", "high")).astype(object)
    spend = 100.0 + 25.0 * signal + 3.0 * (x2 - 3.0) + rng.normal(size=n)
    tag_a = (x2 + rng.normal(size=n) > 3.0).astype(float)
    tag_b = ((count >= 5) ^ (rng.random(size=n) < 0.1)).astype(float)
    frame = pd.DataFrame(
        {
            "color": color,
            "city": city,
            "x1": x1,
            "x2": x2,
            "count": count,
            "clicked": clicked,
            "segment": segment,
            "spend": spend,
            "tag_a": tag_a,
            "tag_b": tag_b,
        }
    )
    for column in TARGETS:
        missing = rng.random(size=n) < missing_share
        if column == "segment":
            frame.loc[missing, column] = None
        else:
            frame.loc[missing, column] = np.nan
    return frame


def base_spec(train_path: str | Path, /, **sections: dict[str, Any]) -> dict[str, Any]:
    """A run specification with all four task kinds and a tiny MMoE; ``sections`` update
    the top-level sections (shallowly, per key)."""
    spec: dict[str, Any] = {
        "data": {"train": str(train_path), "split": {"valid": 0.2, "test": 0.2, "seed": 0}},
        "tasks": [
            {"name": "click", "kind": "binary", "target": "clicked"},
            {"name": "segment", "kind": "multiclass", "target": "segment"},
            {"name": "spend", "kind": "regression", "target": "spend"},
            {"name": "tags", "kind": "multilabel", "targets": list(MULTILABEL)},
        ],
        "model": {
            "arch": "mmoe",
            "embedding_dim": 3,
            "hidden": [8],
            "num_experts": 3,
            "tower_hidden": [4],
        },
        "train": {
            "epochs": 3,
            "batch_size": 64,
            "lr": 0.01,
            "seed": 0,
            "early_stopping": {"patience": None},
        },
    }
    spec = copy.deepcopy(spec)
    for name, values in sections.items():
        if isinstance(values, dict) and isinstance(spec.get(name), dict):
            spec[name].update(values)
        else:
            spec[name] = values
    return spec


def model_and_batch(arch: str) -> tuple[Any, list[Any], Any, dict[str, torch.Tensor]]:
    """A small model of ``arch`` (seeded) with its tasks and one encoded batch of 64 rows:
    (model, tasks, features, labels)."""
    from polytask.config import parse_spec
    from polytask.data.preprocess import Preprocessor
    from polytask.model import build_model

    frame = make_table(n=64, seed=4)
    spec = parse_spec(base_spec("unused.csv", model={"arch": arch, "hidden": [5]}))
    preprocessor = Preprocessor.fit(frame, spec.data, spec.tasks)
    tasks = preprocessor.build_tasks(spec.tasks)
    torch.manual_seed(0)
    model = build_model(
        spec.model,
        preprocessor.cardinalities,
        preprocessor.numeric_width,
        [t.out_dim for t in tasks],
        [t.name for t in tasks],
    )
    features = preprocessor.transform(frame)
    labels = preprocessor.encode_labels(frame, tasks)
    return model, tasks, features, labels


def write_yaml(path: Path, spec: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def write_splits(folder: Path, train_rows: int) -> tuple[dict[str, pd.DataFrame], dict[str, Path]]:
    """Train, valid and test tables (seeds 1, 2, 3; 120 valid and test rows) written as CSV
    files in ``folder``: the frames and their paths, by split."""
    frames = {
        "train": make_table(n=train_rows, seed=1),
        "valid": make_table(n=120, seed=2),
        "test": make_table(n=120, seed=3),
    }
    paths = {}
    for name, frame in frames.items():
        paths[name] = folder / f"{name}.csv"
        frame.to_csv(paths[name], index=False)
    return frames, paths


@pytest.fixture
def table() -> pd.DataFrame:
    return make_table()


@pytest.fixture
def table_csv(tmp_path: Path, table: pd.DataFrame) -> Path:
    path = tmp_path / "table.csv"
    table.to_csv(path, index=False)
    return path


@pytest.fixture
def spec_dict(table_csv: Path) -> dict[str, Any]:
    return base_spec(table_csv)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One finished run (all four task kinds), trained once for the whole session with
    explicit valid / test files so that tests know exactly which rows each split holds."""
    from polytask.train.trainer import fit

    folder = tmp_path_factory.mktemp("trained")
    frames, paths = write_splits(folder, train_rows=300)
    spec = base_spec(
        paths["train"],
        data={"valid": str(paths["valid"]), "test": str(paths["test"])},
        train={"epochs": 6},
    )
    config = write_yaml(folder / "config.yaml", spec)
    from polytask.config import load_spec

    run = fit(load_spec(config), folder / "run", progress=False)
    return {"run": run, "config": config, "frames": frames, "paths": paths, "spec": spec}
