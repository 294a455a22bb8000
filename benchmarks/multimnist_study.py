"""MultiMNIST / MultiFashion balancing study (Sener & Koltun 2018 data; Kurin et al. 2022
protocol): a LeNet-style shared encoder, two 10-class tasks (left and right item), Adam
lr 1e-2 decayed x0.95 per epoch, batch 256; mean test accuracy over both tasks per method.

Reads the idx files from ``../shared/datasets/mnist`` and ``fashion_mnist``. The published
protocol trains 100 epochs on all 50,000 training pairs; ``--epochs`` and ``--train-rows``
shorten it, and the output says what ran.

    python benchmarks/multimnist_study.py --datasets mnist --epochs 10 --seeds 1
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from polytask.artifacts import run_dir as rd
from polytask.config import parse_spec
from polytask.train.trainer import fit

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
METHODS: dict[str, dict[str, Any]] = {
    "equal": {},
    "uw": {},
    "mgda_ub": {},
    "pcgrad": {},
    "imtl": {},
    "cagrad": {},
    "nash_mtl": {},
    "famo": {},
}
# Kurin et al. (NeurIPS 2022), appendix: average MultiMNIST test accuracy, 100 epochs.
PUBLISHED = {"equal": 0.9476, "imtl": 0.9487, "mgda_ub": 0.9478, "pcgrad": 0.9479}


def spec_for(source: str, method: str, seed: int, epochs: int, train_rows: int | None) -> dict:
    options: dict[str, Any] = {"path": str(SHARED / source), "source": source, "seed": seed}
    if train_rows:
        options["train_rows"] = train_rows
    return {
        "data": {"dataset": "multi_mnist", "dataset_options": options, "scaling": "none"},
        "tasks": [
            {"name": "left", "kind": "multiclass", "target": "left", "metrics": ["accuracy"]},
            {"name": "right", "kind": "multiclass", "target": "right", "metrics": ["accuracy"]},
        ],
        "model": {
            "arch": "shared_bottom",
            "hidden": [50],
            "tower_hidden": [50],
            "encoder": {"name": "cnn", "image_shape": [1, 28, 28]},
        },
        "balance": {"method": method, "options": METHODS[method]},
        "train": {
            "epochs": epochs,
            "batch_size": 256,
            "lr": 1e-2,
            "schedule": {"name": "exponential", "gamma": 0.95},
            "early_stopping": {"patience": None, "monitor": "metric"},
            "seed": seed,
            "threads": 1,
        },
    }


def run_one(source: str, method: str, seed: int, epochs: int, rows: int | None, out: Path) -> dict:
    started = time.perf_counter()
    spec = parse_spec(spec_for(source, method, seed, epochs, rows))
    run = fit(spec, out / f"{source}-{method}-{seed}", overwrite=True, progress=False)
    test = rd.load_json(run, rd.FINAL_METRICS)["test"]
    summary = rd.load_json(run, rd.SUMMARY)
    return {
        "source": source,
        "method": method,
        "seed": seed,
        "accuracy": float(np.mean([test[t]["accuracy"] for t in ("left", "right")])),
        "balance": summary["balance"],
        "train_seconds": summary["train_seconds"],
        "seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["mnist", "fashion_mnist"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--train-rows", type=int)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    cases = [(d, m, s) for d in args.datasets for s in range(args.seeds) for m in args.methods]
    results = []
    with tempfile.TemporaryDirectory() as scratch, ProcessPoolExecutor(args.jobs) as pool:
        jobs = [
            pool.submit(run_one, d, m, s, args.epochs, args.train_rows, Path(scratch))
            for d, m, s in cases
        ]
        for job in jobs:
            result = job.result()
            results.append(result)
            print(
                f"{result['source']:>13} {result['method']:>9} seed {result['seed']}: "
                f"accuracy {result['accuracy']:.4f} ({result['train_seconds']:.0f} s training)",
                flush=True,
            )
    rows = f"{args.train_rows} training pairs" if args.train_rows else "all training pairs"
    print(f"\nMean test accuracy, {args.epochs} epochs, {rows}, {args.seeds} seed(s)\n")
    print("| method | " + " | ".join(args.datasets) + " | published (MultiMNIST, 100 ep) |")
    print("|---|" + "---|" * (len(args.datasets) + 1))
    for method in args.methods:
        cells = []
        for source in args.datasets:
            accs = [
                r["accuracy"] for r in results if r["method"] == method and r["source"] == source
            ]
            cells.append(f"{np.mean(accs):.4f}")
        published = PUBLISHED.get(method)
        print(f"| {method} | " + " | ".join(cells) + f" | {published or '-'} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
