"""Tiny trained runs for the slim and export tests, trained once per session and per setup."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from polytask.config import load_spec
from polytask.train.trainer import fit
from tests.conftest import base_spec, make_table

TrainRun = Callable[..., Path]


@pytest.fixture(scope="session")
def train_run(tmp_path_factory: pytest.TempPathFactory) -> TrainRun:
    """``train_run(arch, **options)``: a finished run of the four-task table (two epochs, four
    experts), cached so that each setup trains once however many tests use it."""
    folder = tmp_path_factory.mktemp("slim_runs")
    table = folder / "table.csv"
    make_table(n=240, seed=1).to_csv(table, index=False)
    cache: dict[str, Path] = {}

    def train(arch: str, num_experts: int = 4, **options: Any) -> Path:
        key = json.dumps([arch, num_experts, options], sort_keys=True)
        if key not in cache:
            model = {"arch": arch, "num_experts": num_experts, "options": options}
            spec = base_spec(table, model=model, train={"epochs": 2})
            cache[key] = fit(load_spec(spec), folder / f"run{len(cache)}-{arch}", progress=False)
        return cache[key]

    return train
