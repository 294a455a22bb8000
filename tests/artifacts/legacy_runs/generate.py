"""How the format-1 runs beside this file were made: with polytask at commit 63f3945 (the last
version before architectures became plans), not with the current code.

    git worktree add /tmp/old 63f3945
    PYTHONPATH=/tmp/old/src:/tmp/old python tests/artifacts/legacy_runs/generate.py OUT

For each architecture (and each kind of slim run that version wrote: ``slim_moe`` with
softmax, masked, static and DSelect-k gates and HoME's normed experts, ``task_subset``) it
trains a tiny run on a generated table and keeps what loading needs (config, preprocessor,
weights, summary) plus ``expected.csv``: that version's predictions on ``rows.csv``.
tests/artifacts/test_legacy.py loads every run with the current code and compares.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd

import polytask
from polytask.slim import slim
from tests.conftest import base_spec, make_table

KEEP = ("config.yaml", "preprocessor.json", "model.safetensors", "summary.json")
MODEL = {"embedding_dim": 2, "hidden": [5, 4], "num_experts": 4, "tower_hidden": [3]}
ARCHS = {
    "shared_bottom": {},
    "omoe": {},
    "mmoe": {},
    "cgc": {"task_experts": 2},
    "ple": {"levels": 2},
    "home": {"task_groups": [[0, 2], [1, 3]], "task_experts": 2},
    "dselect_k": {},
    "dselect_k_rows": {"per_example": True},
    "task_moe": {"top_k": 2},
    "task_moe_rows": {"routing": "row", "top_k": 2},
    "cross_stitch": {},
    "single": {},
    "task_bottom": {},
}
SLIMS = {  # slim run name: (source run, kept tasks, threshold)
    "slim_mmoe": ("mmoe", ["segment"], 0.2),
    "slim_ple": ("ple", ["click", "spend"], 0.0),
    "slim_home": ("home", ["tags"], 0.05),
    "slim_dselect_k": ("dselect_k", ["click"], 0.0),
    "slim_dselect_k_rows": ("dselect_k_rows", ["spend"], 0.0),
    "slim_cross_stitch": ("cross_stitch", ["segment", "tags"], 0.0),
    "slim_task_moe": ("task_moe", ["click", "tags"], 0.0),
}


def funnel_table(n: int = 160, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    color = rng.choice(["red", "green", "blue"], size=n)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    clicked = (x1 + 0.3 * (color == "red") + 0.5 * rng.normal(size=n) > -0.2).astype(float)
    converted = clicked * (x2 + 0.5 * rng.normal(size=n) > 0.0)
    return pd.DataFrame(
        {"color": color, "x1": x1, "x2": x2, "clicked": clicked, "converted": converted}
    )


def keep_only(run: Path, out: Path, rows: pd.DataFrame) -> None:
    out.mkdir(parents=True)
    for name in KEEP:
        shutil.copyfile(run / name, out / name)
    polytask.load(run).predict(rows).to_csv(out / "expected.csv", index=False)


def main(out: Path) -> None:
    work = out / "_work"
    work.mkdir(parents=True)
    table, funnel = work / "table.csv", work / "funnel.csv"
    make_table(n=200, seed=3).to_csv(table, index=False)
    funnel_table().to_csv(funnel, index=False)
    rows = make_table(n=25, seed=9)
    rows.to_csv(out / "rows.csv", index=False)
    funnel_rows = funnel_table(n=20, seed=4)
    funnel_rows.to_csv(out / "funnel_rows.csv", index=False)
    train = {"epochs": 2, "batch_size": 64, "lr": 0.01, "early_stopping": {"patience": None}}
    for name, options in ARCHS.items():
        arch = name.removesuffix("_rows")
        spec = base_spec(table, model={**MODEL, "arch": arch, "options": options}, train=train)
        polytask.train(spec, work / name)
        keep_only(work / name, out / name, rows)
    for arch in ("esmm", "aitm"):
        spec = base_spec(
            funnel,
            tasks=[
                {"name": "click", "kind": "binary", "target": "clicked"},
                {"name": "conversion", "kind": "binary", "target": "converted"},
            ],
            model={**MODEL, "arch": arch},
            train=train,
        )
        polytask.train(spec, work / arch)
        keep_only(work / arch, out / arch, funnel_rows)
    for name, (source, tasks, threshold) in SLIMS.items():
        slim(work / source, tasks, work / name, threshold=threshold, latency_repeats=1)
        keep_only(work / name, out / name, rows)
    shutil.rmtree(work)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
