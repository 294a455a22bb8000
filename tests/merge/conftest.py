"""A tiny base run and runs fine-tuned from it, trained once per session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from polytask.config import load_spec
from polytask.merge.finetune import finetune
from polytask.train.trainer import fit
from tests.conftest import base_spec, write_splits

TASKS = ["click", "segment", "spend"]


@pytest.fixture(scope="session")
def lineage(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An MMoE base on three tasks (binary, multiclass, regression), trained briefly, and
    ``tune(task, moves)`` -> a run fine-tuned on that task (cached)."""
    folder = tmp_path_factory.mktemp("merge_runs")
    frames, paths = write_splits(folder, train_rows=320)
    spec = base_spec(
        paths["train"],
        data={"valid": str(paths["valid"]), "test": str(paths["test"])},
        train={"epochs": 2},
    )
    spec["tasks"] = [task for task in spec["tasks"] if task["name"] in TASKS]
    base = fit(load_spec(spec), folder / "base", progress=False)
    cache: dict[tuple[str, ...], Path] = {}

    def tune(*tasks: str, moves: str = "all", epochs: int = 2, source: Path | None = None) -> Path:
        origin = source or base
        key = (*tasks, moves, str(epochs), str(origin))
        if key not in cache:
            ft = {
                "tasks": list(tasks),
                "data": {
                    "train": str(paths["train"]),
                    "valid": str(paths["valid"]),
                    "test": str(paths["test"]),
                },
                "moves": moves,
                "train": {"epochs": epochs, "lr": 0.02},
            }
            cache[key] = finetune(origin, ft, folder / f"ft{len(cache)}-{'-'.join(tasks)}")
        return cache[key]

    return {
        "base": base,
        "spec": spec,
        "paths": paths,
        "frames": frames,
        "tune": tune,
        "folder": folder,
    }


Tune = Callable[..., Path]
