"""Census-Income (KDD): one MMoE base, fine-tuned separately on each task, merged back.

The setting of teams that own one label each: a three-task MMoE (income > 50K, never married,
college; the MMoE paper's groups 1 and 2 together) is trained jointly for ``base_epochs``;
each task's owner fine-tunes it on its own label alone (``polytask finetune``, every
parameter moves) for ``finetune_epochs``; the three runs are merged by every method into one
three-task model. The reference is the jointly trained run: the same base trained on all
three labels together for the same ``finetune_epochs`` more (what pooling the labels gives).

Test AUC per task (the paper's protocol: the test file split 1:1 into validation and test),
mean and standard deviation over the fine-tuning seeds, and the merge's wall time.

    nice -n 10 python benchmarks/merge_census.py --seeds 0 1 2

Writes docs/results/merge_census.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info, shared_datasets

import polytask
from polytask.artifacts import run_dir as rd
from polytask.config import load_spec
from polytask.merge.runs import merge
from polytask.train.trainer import fit

ROOT = Path(__file__).resolve().parents[1]
SHARED = shared_datasets(ROOT)
RESULTS = ROOT / "docs" / "results" / "merge_census.json"
TASKS = ["income", "never_married", "college"]
BUDGET = {"base_epochs": 2, "finetune_epochs": 3, "batch_size": 1024, "lr": 0.002, "threads": 1}
MODEL = {"arch": "mmoe", "num_experts": 8, "hidden": [16], "tower_hidden": [8], "embedding_dim": 4}
ROWS = {"split": "valid", "samples": 2048}
METHODS: list[tuple[str, str, dict[str, Any]]] = [
    ("simple averaging", "average", {}),
    ("task arithmetic (λ 0.3)", "task_arithmetic", {"scaling": 0.3}),
    ("task arithmetic (λ 1)", "task_arithmetic", {"scaling": 1.0}),
    ("TIES (top 20 %, mean, λ 1)", "ties", {"keep": 0.2, "scaling": 1.0}),
    ("DARE + task arithmetic (p 0.5, λ 0.3)", "dare_task_arithmetic", {"rate": 0.5}),
    ("DARE + TIES (p 0.5, top 20 %, mean, λ 1)", "dare_ties", {"rate": 0.5, "scaling": 1.0}),
    ("Model Breadcrumbs (keep 10 %, λ 0.3)", "breadcrumbs", {}),
    ("TSV-M (α 1)", "tsv_m", {}),
    ("LiNeS (sum, β 0.5)", "lines", {}),
    ("PCB (ratio 0.1, λ 1)", "pcb", {}),
    ("Fisher merging (1024 rows)", "fisher", {"samples": 1024}),
    ("RegMean (4096 rows, α 0.95)", "regmean", {"samples": 4096}),
    (
        "AdaMerging, task-wise",
        "adamerging",
        {**ROWS, "granularity": "task", "steps": 300, "batch_size": 64},
    ),
    (
        "AdaMerging, layer-wise",
        "adamerging",
        {**ROWS, "granularity": "layer", "steps": 300, "batch_size": 64},
    ),
    ("routed MoE (each task's gate starts on its run's experts)", "routed_moe", {"steps": 0}),
    (
        "routed MoE + 300 entropy steps (lr 1e-3)",
        "routed_moe",
        {**ROWS, "steps": 300, "batch_size": 64, "lr": 1e-3},
    ),
]
SEEDED = ("dare_task_arithmetic", "dare_ties", "adamerging", "routed_moe")


def data() -> dict[str, Any]:
    return {
        "dataset": "census_income",
        "dataset_options": {"path": str(SHARED / "census_income_kdd"), "group": None},
    }


def train(epochs: int, seed: int, **extra: Any) -> dict[str, Any]:
    return {
        "epochs": epochs,
        "batch_size": BUDGET["batch_size"],
        "lr": BUDGET["lr"],
        "seed": seed,
        "threads": BUDGET["threads"],
        "early_stopping": {"patience": None},
        **extra,
    }


def tasks(names: list[str]) -> list[dict[str, Any]]:
    return [{"name": t, "kind": "binary", "target": t} for t in names]


def aucs(run: Path) -> dict[str, float]:
    metrics = rd.load_json(run, rd.FINAL_METRICS)["test"]
    return {task: float(values["auc"]) for task, values in metrics.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "merge_census")
    args = parser.parse_args()
    torch.set_num_threads(BUDGET["threads"])
    started = time.perf_counter()
    base = args.work / "base"
    if not rd.is_complete(base):
        spec = {
            "data": data(),
            "tasks": tasks(TASKS),
            "model": MODEL,
            "train": train(BUDGET["base_epochs"], 0),
        }
        fit(load_spec(spec), base, overwrite=True, progress=False)
    results: dict[str, Any] = {
        "command": "nice -n 10 python benchmarks/merge_census.py --seeds "
        + " ".join(map(str, args.seeds)),
        "machine": machine_info(),
        "budget": BUDGET,
        "model": MODEL,
        "base": aucs(base),
        "methods": {label: {"method": m, "options": o} for label, m, o in METHODS},
        "seeds": {},
    }
    for seed in args.seeds:
        folder = args.work / f"seed{seed}"
        entry: dict[str, Any] = {}
        runs = []
        individual = {}
        for task in TASKS:
            out = folder / f"ft_{task}"
            if not rd.is_complete(out):
                spec = {
                    "tasks": [task],
                    "data": data(),
                    "moves": "all",
                    "train": train(BUDGET["finetune_epochs"], seed),
                }
                polytask.finetune(base, spec, out, overwrite=True)
            individual[task] = aucs(out)[task]
            runs.append(out)
        entry["individual"] = individual
        joint = folder / "joint"
        if not rd.is_complete(joint):
            spec = {
                "data": data(),
                "tasks": tasks(TASKS),
                "model": MODEL,
                "train": train(BUDGET["finetune_epochs"], seed, init=str(base)),
            }
            fit(load_spec(spec), joint, overwrite=True, progress=False)
        entry["joint"] = aucs(joint)
        entry["merged"] = {}
        for label, method, options in METHODS:
            out = folder / "merged" / method
            shutil.rmtree(out, ignore_errors=True)
            options = {**options, "seed": seed} if method in SEEDED else options
            record = merge(runs, base, method, options, out, overwrite=True)
            entry["merged"][label] = {
                "auc": aucs(out),
                "seconds": record["seconds"],
                "reading_seconds": record["reading_seconds"],
            }
            print(seed, label, entry["merged"][label], flush=True)
        results["seeds"][str(seed)] = entry
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    results["summary"] = summary(results)
    results["wall_seconds"] = time.perf_counter() - started
    results["machine"]["load_average_1m_end"] = os.getloadavg()[0]
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """Mean and standard deviation over seeds of each row's AUC per task and their mean."""
    seeds = list(results["seeds"].values())
    rows: dict[str, list[dict[str, float]]] = {
        "individual": [s["individual"] for s in seeds],
        "joint": [s["joint"] for s in seeds],
    }
    for label in results["methods"]:
        rows[label] = [s["merged"][label]["auc"] for s in seeds]
    out = {}
    for label, values in rows.items():
        table = np.array([[v[t] for t in TASKS] + [np.mean([v[t] for t in TASKS])] for v in values])
        out[label] = {
            "mean": dict(zip([*TASKS, "average"], table.mean(0).tolist(), strict=True)),
            "std": dict(zip([*TASKS, "average"], table.std(0).tolist(), strict=True)),
        }
        if label in results["methods"]:
            out[label]["seconds"] = float(np.mean([s["merged"][label]["seconds"] for s in seeds]))
    return out


if __name__ == "__main__":
    main()
