"""What recording task relations costs: training time with ``train.relations`` against
without, at T = 12 tasks, measured in one process in alternating rounds.

12 regression tasks (``clustered_tasks`` with clusters 4 + 4 + 4, 100 inputs, 20,480
training rows), batch 1024, Adam; per architecture and round, one run of ``--epochs``
epochs without relations and one with ``train.relations: {every: 10}`` (default rows: 32 of
each batch, and once with ``rows: null``, the whole batch); the ratio of the runs'
``train_seconds`` (the epochs' training loops, measurements included, evaluation excluded).
The development machine is shared, so wall time swings with other users' load; the trainer's
epoch clock is read as this process's CPU time (``time.process_time``, one torch thread),
which counts only the work of the run itself.

    python benchmarks/relations_cost.py --rounds 3 --epochs 3 \
        --json docs/results/relations_cost.json
    python benchmarks/relations_cost.py --summarise docs/results/relations_cost.json
"""

from __future__ import annotations

import argparse
import importlib
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from _summary import add_summarise_option, summarised, write_json

from polytask.artifacts import run_dir as rd
from polytask.config import parse_spec
from polytask.train.trainer import fit

ARCHS = {
    "mmoe": {"arch": "mmoe", "hidden": [16], "num_experts": 8, "tower_hidden": [8]},
    "shared_bottom": {"arch": "shared_bottom", "hidden": [256, 128], "tower_hidden": [64]},
}
VARIANTS: dict[str, dict[str, Any] | None] = {
    "off": None,
    "every 10, 32 rows": {"every": 10},
    "every 10, whole batch": {"every": 10, "rows": None},
}


def spec_for(arch: str, relations: dict[str, Any] | None, epochs: int) -> dict[str, Any]:
    train: dict[str, Any] = {
        "epochs": epochs,
        "batch_size": 1024,
        "lr": 1e-3,
        "threads": 1,
        "early_stopping": {"patience": None},
    }
    if relations is not None:
        train["relations"] = relations
    return {
        "data": {
            "dataset": "clustered_tasks",
            "dataset_options": {
                "sizes": [4, 4, 4],
                "rows": 20_480,
                "valid_rows": 512,
                "test_rows": 0,
            },
        },
        "tasks": [{"name": f"y{t}", "kind": "regression", "target": f"y{t}"} for t in range(12)],
        "model": ARCHS[arch],
        "train": train,
    }


def summarise(payload: dict[str, Any]) -> dict[str, Any]:
    """What the docs quote, from each run's seconds: per architecture and variant the median
    seconds, the extra time of each round (its run against the same round's run without
    relations, in percent) and the median of those."""
    summary: dict[str, Any] = {}
    for arch, by_variant in payload["results"].items():
        base = np.array(by_variant["off"]["seconds"])
        summary[arch] = {}
        for variant, cell in by_variant.items():
            extra = 100 * (np.array(cell["seconds"]) / base - 1)
            summary[arch][variant] = {
                "median_seconds": float(np.median(cell["seconds"])),
                "extra_percent_per_round": [float(e) for e in extra],
                "extra_percent": float(np.median(extra)),
            }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    add_summarise_option(parser)
    args = parser.parse_args()
    if summarised(args, summarise):
        return
    torch.set_num_threads(1)
    trainer_module = importlib.import_module("polytask.train.trainer")
    trainer_module.time = SimpleNamespace(perf_counter=time.process_time)  # CPU seconds
    seconds: dict[str, dict[str, list[float]]] = {a: {v: [] for v in VARIANTS} for a in ARCHS}
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(args.rounds):
            for arch in ARCHS:
                for number, (variant, relations) in enumerate(VARIANTS.items()):
                    out = Path(scratch) / f"{arch}-{round_}-{number}"
                    spec = parse_spec(spec_for(arch, relations, args.epochs))
                    run = fit(spec, out, progress=False)
                    value = rd.load_json(run, rd.SUMMARY)["train_seconds"]
                    seconds[arch][variant].append(value)
                    print(f"round {round_} {arch:>14} {variant:>22}: {value:.2f} s", flush=True)
    results = {a: {v: {"seconds": values} for v, values in by.items()} for a, by in seconds.items()}
    summary = summarise({"results": results})
    print(
        "\n| arch | relations | train seconds (median) | extra time (median of per-round ratios) |"
    )
    print("|---|---|---|---|")
    for arch, by_variant in summary.items():
        for variant, cell in by_variant.items():
            print(
                f"| {arch} | {variant} | {cell['median_seconds']:.2f} | "
                f"{cell['extra_percent']:+.1f} % |"
            )
    if args.json:
        from _machine import machine_info

        payload = {
            "command": f"python benchmarks/relations_cost.py --rounds {args.rounds} "
            f"--epochs {args.epochs}",
            "clock": "process CPU time of the training loops (one torch thread)",
            "tasks": 12,
            "batch": 1024,
            "archs": ARCHS,
            "results": results,
            "summary": summary,
            "machine": machine_info(),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        write_json(args.json, payload)


if __name__ == "__main__":
    main()
