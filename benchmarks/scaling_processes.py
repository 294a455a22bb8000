"""Data-parallel scaling on this machine: one training process against two (torchrun, gloo).

The same synthetic multi-task table (``--rows`` rows: 8 categorical columns of 100 values,
8 numeric columns; two binary tasks and one regression task, each depending on the
features) trains the same MMoE (8 experts x [64], towers [16], embedding 8) at the same
global batch, ``--epochs`` epochs, in three ways:

* ``1 process x 1 thread``: the baseline a process gets on one core;
* ``1 process x 2 threads``: one process using both cores through torch's intra-op threads;
* ``2 processes x 1 thread``: ``polytask train --nproc 2`` (torchrun, gloo), each rank on its
  half of every global batch.

Throughput is the run's own ``train_rows_per_second`` (summary.json: training rows over the
epochs' wall time, validation excluded), so process start-up and data preparation do not
count. The ways alternate over ``--rounds`` rounds, so that a busy moment of the shared
machine hits all of them alike; the JSON keeps every round, the best and the median.

Each step of two processes also all-reduces: the trainable parameters' gradients (4 bytes
each), the task losses, label counts and row count (2T + 1 floats), and nothing else for a
loss weighting; the JSON states those bytes for this model.

    python benchmarks/scaling_processes.py --rows 200000 --epochs 1 --rounds 3 \
        --json docs/results/scaling_processes.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from _machine import machine_info

WAYS = {
    "1 process x 1 thread": {"threads": 1, "nproc": None},
    "1 process x 2 threads": {"threads": 2, "nproc": None},
    "2 processes x 1 thread": {"threads": 1, "nproc": 2},
}
CATEGORICAL, NUMERIC, CARDINALITY = 8, 8, 100
TASKS = 3


def synthetic_table(rows: int, seed: int = 0) -> pd.DataFrame:
    """Features and three targets that depend on them (so that training has work to do)."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, CARDINALITY, size=(rows, CATEGORICAL))
    numeric = rng.normal(size=(rows, NUMERIC)).astype(np.float32)
    effect = rng.normal(size=(CATEGORICAL, CARDINALITY))
    signal = effect[np.arange(CATEGORICAL), codes].sum(axis=1) / 3 + numeric[:, :4].sum(axis=1)
    frame = pd.DataFrame({f"c{i}": codes[:, i].astype(str) for i in range(CATEGORICAL)})
    for i in range(NUMERIC):
        frame[f"x{i}"] = numeric[:, i]
    frame["click"] = (signal + rng.normal(size=rows) > 0).astype(np.float32)
    frame["buy"] = (signal - numeric[:, 5] + rng.normal(size=rows) > 1).astype(np.float32)
    frame["spend"] = (2.0 * signal + numeric[:, 6] + rng.normal(size=rows)).astype(np.float32)
    return frame


def spec(table: Path, epochs: int, batch: int, threads: int) -> dict[str, Any]:
    return {
        "data": {
            "train": str(table),
            "split": {"valid": 0.02, "test": 0.02, "seed": 0},
            "categorical": [f"c{i}" for i in range(CATEGORICAL)],
            "numeric": [f"x{i}" for i in range(NUMERIC)],
        },
        "tasks": [
            {"name": "click", "kind": "binary", "target": "click"},
            {"name": "buy", "kind": "binary", "target": "buy"},
            {"name": "spend", "kind": "regression", "target": "spend"},
        ],
        "model": {
            "arch": "mmoe",
            "num_experts": 8,
            "hidden": [64],
            "tower_hidden": [16],
            "embedding_dim": 8,
        },
        "train": {
            "epochs": epochs,
            "batch_size": batch,
            "lr": 0.002,
            "seed": 0,
            "threads": threads,
            "device": "cpu",
            "early_stopping": {"patience": None},
        },
    }


def run(folder: Path, name: str, way: dict[str, Any], args: argparse.Namespace) -> dict:
    config = folder / f"{name}.yaml"
    config.write_text(
        yaml.safe_dump(spec(folder / "table.parquet", args.epochs, args.batch, way["threads"]))
    )
    out = folder / "runs" / name
    command = [sys.executable, "-m", "polytask", "train", str(config), "--out", str(out)]
    command += ["--quiet", "--overwrite"]
    if way["nproc"]:
        command += ["--nproc", str(way["nproc"])]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    info = machine_info()
    rounds: dict[str, list[float]] = {name: [] for name in WAYS}
    summary: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        synthetic_table(args.rows).to_parquet(folder / "table.parquet")
        for index in range(args.rounds):
            for name, way in WAYS.items():
                summary = run(
                    folder,
                    f"round{index}-{len(rounds[name])}-{way['threads']}-{way['nproc']}",
                    way,
                    args,
                )
                rounds[name].append(summary["train_rows_per_second"])
                print(f"round {index + 1}: {name}: {rounds[name][-1]:,.0f} rows/s", flush=True)
    parameters = summary["trainable_parameters"]
    result = {
        "command": " ".join(["python", "benchmarks/scaling_processes.py", *sys.argv[1:]]),
        "machine": info,
        "rows": args.rows,
        "train_rows": summary["rows"]["train"],
        "epochs": args.epochs,
        "global_batch": args.batch,
        "trainable_parameters": parameters,
        "all_reduce_bytes_per_step": 4 * (parameters + 2 * TASKS + 1),
        "rows_per_second": {
            name: {
                "rounds": values,
                "best": max(values),
                "median": statistics.median(values),
            }
            for name, values in rounds.items()
        },
    }
    one = result["rows_per_second"]["1 process x 1 thread"]["median"]
    for name in WAYS:
        result["rows_per_second"][name]["speedup_vs_1x1"] = round(
            result["rows_per_second"][name]["median"] / one, 2
        )
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
