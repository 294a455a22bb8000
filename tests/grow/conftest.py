"""Small runs and rows for the grow tests: a base run of one task, new data for another."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from polytask.config import ModelSpec, TaskKind, TaskSpec, load_spec
from polytask.features import Features
from polytask.grow.data import Rows
from polytask.model import build_model
from polytask.tasks import Task
from polytask.train.trainer import fit
from tests.conftest import make_table

BASE_DROP = ["segment", "spend", "tag_a", "tag_b"]
NEW_DROP = ["clicked", "spend", "tag_a", "tag_b"]


@pytest.fixture(scope="session")
def tables(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("grow_tables")
    table = make_table(n=300, seed=4)
    paths = {"base": folder / "base.csv", "new": folder / "new.csv", "all": folder / "all.csv"}
    table.drop(columns=BASE_DROP).to_csv(paths["base"], index=False)
    table.drop(columns=NEW_DROP).to_csv(paths["new"], index=False)
    table.to_csv(paths["all"], index=False)
    return paths


@pytest.fixture(scope="session")
def base_run(tables: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished MMoE run of one binary task (click)."""
    spec = {
        "data": {"train": str(tables["base"]), "split": {"valid": 0.2, "test": 0.2}},
        "tasks": [{"name": "click", "kind": "binary", "target": "clicked"}],
        "model": {"arch": "mmoe", "num_experts": 3, "hidden": [8], "tower_hidden": [4]},
        "train": {"epochs": 2, "batch_size": 64, "figures": False},
    }
    return fit(load_spec(spec), tmp_path_factory.mktemp("grow_base") / "base", progress=False)


def grow_spec(tables: dict[str, Path], strategy: str = "expand", **extra) -> dict:
    return {
        "tasks": [{"name": "segment", "kind": "multiclass", "target": "segment"}],
        "data": {"train": str(tables["new"]), "split": {"valid": 0.2, "test": 0.2}},
        "strategy": {"name": strategy, "options": extra.pop("options", {})},
        "train": {"epochs": 2, "batch_size": 64, "figures": False},
        **extra,
    }


def tiny_model(out_dims: list[int], hidden: list[int] | None = None, seed: int = 0):
    """A numeric-input shared-bottom model over 3 features."""
    torch.manual_seed(seed)
    spec = ModelSpec(
        arch="shared_bottom", hidden=hidden or [4], tower_hidden=[], encoder={"name": "numeric"}
    )
    names = [f"t{i}" for i in range(len(out_dims))]
    return build_model(spec, [], 6, out_dims, names)


def tiny_rows(n: int, labels: dict[str, torch.Tensor], seed: int = 0) -> Rows:
    generator = torch.Generator().manual_seed(seed)
    numeric = torch.cat([torch.randn(n, 3, generator=generator), torch.zeros(n, 3)], 1)
    return Rows(Features(torch.zeros(n, 0, dtype=torch.long), numeric), labels)


def binary_task(name: str) -> Task:
    return Task(TaskSpec(name=name, kind=TaskKind.binary, target=name), 1)


def multiclass_task(name: str, classes: int) -> Task:
    spec = TaskSpec(name=name, kind=TaskKind.multiclass, target=name)
    return Task(spec, classes, classes=list(range(classes)))
