"""A tiny impression -> click -> conversion table for the funnel architectures (ESMM, AITM),
and their parts built as the model builds them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from polytask.model import build_heads
from polytask.nn.executor import PlanNetwork
from polytask.nn.towers import Towers
from tests.arch.helpers import plan_of


def make_funnel(n: int = 160, seed: int = 0) -> pd.DataFrame:
    """Rows are impressions; ``converted`` is the joint event (1 only on clicked rows)."""
    rng = np.random.default_rng(seed)
    color = rng.choice(["red", "green", "blue"], size=n)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    clicked = (x1 + 0.3 * (color == "red") + 0.5 * rng.normal(size=n) > -0.2).astype(float)
    converted = clicked * (x2 + 0.5 * rng.normal(size=n) > 0.0)
    return pd.DataFrame(
        {"color": color, "x1": x1, "x2": x2, "clicked": clicked, "converted": converted}
    )


def funnel_spec(train_path: Path, arch: str, **options: Any) -> dict[str, Any]:
    """Click then conversion, both binary, on a tiny model trained for two epochs."""
    return {
        "data": {"train": str(train_path), "split": {"valid": 0.2, "test": 0.2, "seed": 0}},
        "tasks": [
            {"name": "click", "kind": "binary", "target": "clicked"},
            {"name": "conversion", "kind": "binary", "target": "converted"},
        ],
        "model": {
            "arch": arch,
            "embedding_dim": 3,
            "hidden": [8],
            "tower_hidden": [4],
            "options": options,
        },
        "train": {"epochs": 2, "batch_size": 64, "lr": 0.01, "early_stopping": {"patience": None}},
    }


def write_funnel(folder: Path) -> Path:
    path = folder / "funnel.csv"
    make_funnel().to_csv(path, index=False)
    return path


def funnel_parts(
    arch: str,
    num_tasks: int,
    out_dims: list[int] | None = None,
    tower_hidden: list[int] | None = None,
    **options: Any,
) -> tuple[PlanNetwork, Towers, nn.Module]:
    """The bottoms' network (encoder width 5, ``hidden`` [6]), the towers and the funnel's
    head, for ``num_tasks`` tasks with ``out_dims`` outputs (default: binary)."""
    tower_hidden = [4] if tower_hidden is None else tower_hidden
    out_dims = out_dims or [1] * num_tasks
    plan = plan_of(arch, num_tasks, hidden=[6], tower_hidden=tower_hidden, options=options)
    net = PlanNetwork(plan, 5)
    towers = Towers(net.out_dim, tower_hidden, out_dims)
    head = build_heads(plan, tower_hidden, net.out_dim, out_dims)
    assert head is not None
    return net, towers, head
