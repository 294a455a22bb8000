"""A tiny impression -> click -> conversion table for the funnel architectures (ESMM, AITM)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


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
