"""Slim each task of trained Census-Income runs and compare size, latency and AUC with the full
model (issue: the slim single-task model >= 3x faster at batch 1 and 1024, AUC within 0.002).

For every run and task this calls :func:`polytask.slim.slim` (the code behind ``polytask slim``)
at each ``--thresholds`` value, keeps the largest cut whose validation AUC stays within
``--max-drop`` of the full model's (chosen on validation rows, reported on test rows), and
prints one row per (run, task): parameters, weight bytes, median latency at batch 1 and 1024 of
the full model as trained (eager), the full model as served (its lean form) and the slim model
as served, and test AUC. All timings run in one process, interleaved, with one torch thread
(the server's default), on the run's validation rows.

Needs trained runs (``benchmarks/census_paper.py --runs DIR`` writes them, or ``polytask train``
with the census configs); the data is read from ``../shared/datasets/census_income_kdd``.

    python benchmarks/slim_census.py --runs /tmp/census_runs/group1/task_moe-0 \
        /tmp/census_runs/group1/mmoe-0 --json docs/results/slim_census.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from _machine import machine_info

from polytask.artifacts import run_dir as rd
from polytask.slim import slim


def slim_task(
    run: Path, task: str, thresholds: list[float], max_drop: float, out: Path, repeats: int
) -> dict[str, Any]:
    """The largest cut within ``max_drop`` validation AUC of the full model."""
    chosen: dict[str, Any] | None = None
    for threshold in sorted(thresholds):
        folder = out / f"{run.name}-{task}-{threshold}"
        report = slim(
            run, [task], folder, threshold=threshold, overwrite=True, latency_repeats=repeats
        )
        drop = report["full"]["metrics"][task]["auc"] - report["slim"]["metrics"][task]["auc"]
        if chosen is not None and drop > max_drop:
            break
        chosen = {"report": report, "folder": folder, "validation_drop": drop}
    assert chosen is not None
    report = chosen["report"]
    test = rd.load_json(chosen["folder"], rd.FINAL_METRICS)["test"][task]["auc"]
    full_test = rd.load_json(run, rd.FINAL_METRICS)["test"][task]["auc"]
    full, small = report["full"], report["slim"]
    row = {
        "run": str(run),
        "arch": report["arch"]["full"],
        "task": task,
        "threshold": report["threshold"],
        "exact": report["exact"],
        "kept_experts": [level["kept"] for level in report["experts"] or []],
        "parameters": [full["parameters"], small["parameters"]],
        "weights_bytes": [full["weights_bytes"], small["weights_bytes"]],
        "validation_auc": [full["metrics"][task]["auc"], small["metrics"][task]["auc"]],
        "test_auc": [full_test, test],
    }
    for batch in ("batch_1", "batch_1024"):
        row[batch] = {
            "full_eager_ms": full["latency_ms_eager"][batch],
            "full_served_ms": full["latency_ms"][batch],
            "slim_served_ms": small["latency_ms"][batch],
            "slim_eager_ms": small["latency_ms_eager"][batch],
        }
    return row


def with_speedups(row: dict[str, Any]) -> dict[str, Any]:
    """The row with the speed-ups docs/benchmarks.md quotes: full model as trained (eager)
    and as served, each over the slim model as served, per batch size."""
    speedups = {}
    for batch in ("batch_1", "batch_1024"):
        t = row[batch]
        speedups[batch] = {
            "full_eager_over_slim_served": t["full_eager_ms"] / t["slim_served_ms"],
            "full_served_over_slim_served": t["full_served_ms"] / t["slim_served_ms"],
        }
    return {**row, "speedups": speedups}


def print_rows(rows: list[dict[str, Any]]) -> None:
    print(
        "| run | task | threshold | experts kept | parameters | weights (bytes) | "
        "batch 1 ms: full eager / full served / slim served (x vs eager, x vs served) | "
        "batch 1024 ms: same | test AUC full / slim |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        cells = []
        for batch in ("batch_1", "batch_1024"):
            t = row[batch]
            cells.append(
                f"{t['full_eager_ms']:.3f} / {t['full_served_ms']:.3f} / {t['slim_served_ms']:.3f} "
                f"({t['full_eager_ms'] / t['slim_served_ms']:.2f}x, "
                f"{t['full_served_ms'] / t['slim_served_ms']:.2f}x)"
            )
        kept = "; ".join(str(len(k)) for k in row["kept_experts"]) or "-"
        print(
            f"| {Path(row['run']).name} ({row['arch']}) | {row['task']} | {row['threshold']:g} | "
            f"{kept} | {row['parameters'][0]:,} -> {row['parameters'][1]:,} | "
            f"{row['weights_bytes'][0]:,} -> {row['weights_bytes'][1]:,} | {cells[0]} | "
            f"{cells[1]} | {row['test_auc'][0]:.4f} / {row['test_auc'][1]:.4f} "
            f"({row['test_auc'][1] - row['test_auc'][0]:+.4f}) |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, nargs="+")
    parser.add_argument("--tasks", nargs="+", default=["income", "never_married"])
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.01, 0.05, 0.1, 0.15, 0.2])
    parser.add_argument("--max-drop", type=float, default=0.002)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--summarise", type=Path, help="add the speed-ups to this results JSON")
    args = parser.parse_args()
    if args.summarise is not None:
        payload = json.loads(args.summarise.read_text())
        payload["rows"] = [with_speedups(row) for row in payload["rows"]]
        args.summarise.write_text(json.dumps(payload, indent=2) + "\n")
        return
    if not args.runs:
        parser.error("--runs is required (unless --summarise)")
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for run in args.runs:
            for task in args.tasks:
                rows.append(
                    slim_task(
                        run, task, args.thresholds, args.max_drop, Path(scratch), args.repeats
                    )
                )
    print(f"machine: {machine_info()}; torch threads {args.threads}\n")
    print_rows(rows)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "machine": machine_info(),
            "threads": args.threads,
            "rows": [with_speedups(row) for row in rows],
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
