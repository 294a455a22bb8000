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
import yaml

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
# A gradient method's default is its fast mode; "<method>@exact" runs it on all shared parameters.
EXACT = ("pcgrad", "imtl", "cagrad", "nash_mtl")


def balance_for(variant: str) -> dict[str, Any]:
    """``pcgrad`` -> its default (fast) options; ``pcgrad@exact`` -> exact mode; options after
    commas, as YAML values: ``nash_mtl@exact,normalize_gramian=true``."""
    name, *settings = variant.split(",")
    method, _, mode = name.partition("@")
    options = dict(METHODS[method])
    if mode:
        options["mode"] = mode
    for setting in settings:
        key, _, value = setting.partition("=")
        options[key] = yaml.safe_load(value)
    return {"method": method, "options": options}


# Kurin et al. (NeurIPS 2022), appendix: average MultiMNIST test accuracy, 100 epochs.
PUBLISHED = {"equal": 0.9476, "imtl": 0.9487, "mgda_ub": 0.9478, "pcgrad": 0.9479}


def spec_for(source: str, variant: str, seed: int, epochs: int, train_rows: int | None) -> dict:
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
        "balance": balance_for(variant),
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


def run_one(source: str, variant: str, seed: int, epochs: int, rows: int | None, out: Path) -> dict:
    started = time.perf_counter()
    spec = parse_spec(spec_for(source, variant, seed, epochs, rows))
    run = fit(spec, out / f"{source}-{variant}-{seed}", overwrite=True, progress=False)
    test = rd.load_json(run, rd.FINAL_METRICS)["test"]
    summary = rd.load_json(run, rd.SUMMARY)
    return {
        "source": source,
        "method": variant,
        "epochs": epochs,
        "train_rows": rows,
        "seed": seed,
        "accuracy": float(np.mean([test[t]["accuracy"] for t in ("left", "right")])),
        "balance": summary["balance"],
        "train_seconds": summary["train_seconds"],
        "seconds": time.perf_counter() - started,
    }


def summary(results: list[dict], datasets: list[str], variants: list[str]) -> dict[str, Any]:
    """Per variant and dataset: mean and sample standard deviation of the seeds' mean test
    accuracy, the seeds, and each seed's accuracy; with the published MultiMNIST values."""
    table: dict[str, Any] = {}
    for variant in variants:
        table[variant] = {}
        for source in datasets:
            runs = [r for r in results if (r["method"], r["source"]) == (variant, source)]
            if not runs:
                continue
            accs = [r["accuracy"] for r in runs]
            table[variant][source] = {
                "mean": float(np.mean(accs)),
                "std": float(np.std(accs, ddof=1)) if len(accs) > 1 else None,
                "seeds": [r["seed"] for r in runs],
                "per_seed": accs,
            }
        table[variant]["published_multimnist"] = PUBLISHED.get(
            variant.split(",")[0].partition("@")[0]
        )
    return table


def table(results: list[dict], datasets: list[str], variants: list[str]) -> str:
    """Markdown: mean +- std of the seeds' mean test accuracy per variant and dataset."""
    lines = [
        "| method | " + " | ".join(datasets) + " | published (MultiMNIST, 100 ep) |",
        "|---|" + "---|" * (len(datasets) + 1),
    ]
    for variant, figures in summary(results, datasets, variants).items():
        cells = []
        for source in datasets:
            cell = figures.get(source)
            if cell is None:
                cells.append("-")
                continue
            spread = f" +- {cell['std']:.4f}" if cell["std"] is not None else ""
            cells.append(f"{cell['mean']:.4f}{spread} (n={len(cell['seeds'])})")
        published = figures["published_multimnist"]
        lines.append(f"| {variant} | " + " | ".join(cells) + f" | {published or '-'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["mnist", "fashion_mnist"])
    parser.add_argument(
        "--methods", nargs="+", default=list(METHODS), help="method or method@exact"
    )
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--train-rows", type=int)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--json", type=Path, help="results, one JSON line per run, appended")
    parser.add_argument("--table-only", action="store_true", help="print the table from --json")
    parser.add_argument("--summary", type=Path, help="also write the table's figures here")
    args = parser.parse_args()
    results: list[dict] = []
    if args.json and args.json.exists():
        results = [json.loads(line) for line in args.json.read_text().splitlines() if line]
    if not args.table_only:
        seeds = range(args.first_seed, args.first_seed + args.seeds)
        # Seed-major: an interrupted study still holds every method at the first seeds.
        cases = [(d, m, s) for s in seeds for d in args.datasets for m in args.methods]
        with tempfile.TemporaryDirectory() as scratch, ProcessPoolExecutor(args.jobs) as pool:
            jobs = [
                pool.submit(run_one, d, m, s, args.epochs, args.train_rows, Path(scratch))
                for d, m, s in cases
            ]
            for job in jobs:
                result = job.result()
                results.append(result)
                print(
                    f"{result['source']:>13} {result['method']:>15} seed {result['seed']}: "
                    f"accuracy {result['accuracy']:.4f} ({result['train_seconds']:.0f} s training)",
                    flush=True,
                )
                if args.json:
                    args.json.parent.mkdir(parents=True, exist_ok=True)
                    with args.json.open("a") as handle:
                        handle.write(json.dumps(result) + "\n")
    schedules = sorted({(r["epochs"], r["train_rows"]) for r in results if "epochs" in r}, key=str)
    print(f"\nMean test accuracy over seeds; schedules (epochs, training pairs): {schedules}\n")
    print(table(results, args.datasets, args.methods))
    if args.summary:
        figures = summary(results, args.datasets, args.methods)
        payload = {"results": str(args.json), "schedules": [list(s) for s in schedules]}
        args.summary.write_text(json.dumps({**payload, "table": figures}, indent=2) + "\n")


if __name__ == "__main__":
    main()
